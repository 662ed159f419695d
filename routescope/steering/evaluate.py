"""Measuring a steering spec's effect (DESIGN.md §4.5): log-likelihood change on evaluation texts,
against a baseline of the same number of random experts in the same layers, and side-by-side
generations.

Log-likelihood of a text = mean log-probability of its tokens given their prefix (every token but the
first, or only the tokens of its `target` span). Texts are batched with right padding and an
attention mask, so padding never changes a real token's prediction; steered and unsteered runs use
the same batches. Steering goes through `steered` (router forward hooks), i.e. plain HF forwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from transformers import GenerationMixin, PreTrainedTokenizerBase

from routescope.collect.prompts import Prompt, tokenize_prompts
from routescope.core.errors import InvalidParameterError
from routescope.models.loading import LoadedModel
from routescope.steering.interventions import model_shape, steered
from routescope.steering.spec import Edit, SteeringSpec, SteeringSpecError

__all__ = [
    "EvalSet",
    "LoglikChange",
    "RandomBaseline",
    "SideBySide",
    "loglik_change",
    "random_baseline",
    "random_spec",
    "side_by_side",
    "text_logliks",
]

Progress = Callable[[int], None]


@dataclass
class EvalSet:
    """Tokenized evaluation texts with, per text, which token positions are scored.

    ``scored[i][t]`` is True when token t of text i counts (t ≥ 1; within the target span if any).
    ``base`` caches the unsteered per-text log-likelihoods once computed.
    """

    input_ids: list[list[int]]
    scored: list[np.ndarray]
    labels: list[str | None]
    texts: list[str]
    base: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        lm: LoadedModel,
        texts: Sequence[str | Prompt],
        targets: Sequence[tuple[int, int] | str | None] | None = None,
        labels: Sequence[str | None] | None = None,
        max_length: int | None = None,
    ) -> EvalSet:
        """Tokenize ``texts`` (strings or `Prompt`s, e.g. from `read_prompt_set`) with ``lm``'s
        tokenizer; ``targets`` are character spans or substrings whose tokens alone are scored."""
        if lm.tokenizer is None:
            raise InvalidParameterError(
                f"{lm.model_id} has no tokenizer; evaluation needs one to tokenize the texts"
            )
        if not texts:
            raise InvalidParameterError("no evaluation texts: pass at least one")
        prompts: list[Prompt] = []
        for i, t in enumerate(texts):
            if isinstance(t, Prompt):
                prompts.append(t)
                continue
            target = None if targets is None else targets[i]
            label = None if labels is None else labels[i]
            prompts.append(
                Prompt(
                    text=t,
                    prompt_set="eval",
                    id=str(i),
                    label=label,
                    target=target,
                    source=f"text {i}",
                )
            )
        encoded = tokenize_prompts(prompts, lm.tokenizer, max_length=max_length)
        ids, scored = [], []
        for i, enc in enumerate(encoded):
            mask = np.ones(len(enc.input_ids), dtype=bool)
            if enc.prompt.target is not None:
                mask = np.asarray(enc.in_target, dtype=bool).copy()
            mask[0] = False  # the first token has no prefix to be predicted from
            if not mask.any():
                what = "its target span" if enc.prompt.target is not None else "the text"
                raise InvalidParameterError(
                    f"evaluation text {i} has no token to score in {what}: it needs at least two "
                    "tokens (and target tokens after the first)"
                )
            ids.append(enc.input_ids)
            scored.append(mask)
        return cls(
            input_ids=ids,
            scored=scored,
            labels=[p.label for p in prompts],
            texts=[enc.text for enc in encoded],
        )

    def __len__(self) -> int:
        return len(self.input_ids)


@torch.no_grad()
def token_logprobs(
    lm: LoadedModel, input_ids: Sequence[Sequence[int]], batch_size: int = 8
) -> list[np.ndarray]:
    """log p(token t | tokens < t) for t ≥ 1 of each sequence (index t-1), float64 arrays.

    Whatever steering is installed on ``lm.model`` (see `steered`) applies."""
    if batch_size < 1:
        raise InvalidParameterError(f"batch_size must be at least 1, got {batch_size}")
    device = lm.model.device
    pad = lm.pad_token_id
    out: list[np.ndarray] = [np.zeros(0)] * len(input_ids)
    # batch similar lengths together: less padding, same results
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(input_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = input_ids[i]
            ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, : len(seq)] = 1
        logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).double().cpu().numpy()
        for row, i in enumerate(chunk):
            out[i] = picked[row, : len(input_ids[i]) - 1]
    return out


def text_logliks(
    lm: LoadedModel,
    evalset: EvalSet,
    spec: SteeringSpec | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Per-text mean log-likelihood of the scored tokens under ``spec`` (None/empty: unsteered)."""
    with steered(lm, spec):
        lps = token_logprobs(lm, evalset.input_ids, batch_size)
    return np.array([lp[m[1:]].mean() for lp, m in zip(lps, evalset.scored, strict=True)])


def _base(lm: LoadedModel, evalset: EvalSet, batch_size: int) -> np.ndarray:
    if evalset.base is None:
        evalset.base = text_logliks(lm, evalset, None, batch_size)
    return evalset.base


def _as_evalset(
    lm: LoadedModel,
    texts: EvalSet | Sequence[str | Prompt],
    targets: Sequence[tuple[int, int] | str | None] | None,
    labels: Sequence[str | None] | None,
) -> EvalSet:
    return texts if isinstance(texts, EvalSet) else EvalSet.build(lm, texts, targets, labels)


def column_mean(col: pl.Series) -> float:
    """The mean of a numeric column as a float (NaN when it has no values)."""
    value = col.mean()
    return float(value) if isinstance(value, int | float) else math.nan


@dataclass
class LoglikChange:
    """Steered vs unsteered mean token log-likelihood per text (`per_text`) and overall."""

    per_text: pl.DataFrame  # text_id, label, n_scored, base, steered, change
    spec: SteeringSpec

    @property
    def mean_change(self) -> float:
        return column_mean(self.per_text["change"])

    @property
    def mean_base(self) -> float:
        return column_mean(self.per_text["base"])

    @property
    def mean_steered(self) -> float:
        return column_mean(self.per_text["steered"])

    def by_label(self) -> pl.DataFrame:
        """Mean base, steered and change per label (texts weighted equally)."""
        return (
            self.per_text.group_by("label", maintain_order=True)
            .agg(
                pl.len().alias("texts"),
                pl.col("base").mean(),
                pl.col("steered").mean(),
                pl.col("change").mean(),
            )
            .sort("label", nulls_last=True)
        )


def loglik_change(
    lm: LoadedModel,
    spec: SteeringSpec,
    texts: EvalSet | Sequence[str | Prompt],
    targets: Sequence[tuple[int, int] | str | None] | None = None,
    labels: Sequence[str | None] | None = None,
    batch_size: int = 8,
) -> LoglikChange:
    """Mean token log-likelihood per text, steered by ``spec`` minus unsteered (negative = the
    steering made the text less likely). ``targets`` restrict scoring to those spans."""
    spec.validate(model_shape(lm))
    ev = _as_evalset(lm, texts, targets, labels)
    base = _base(lm, ev, batch_size)
    after = text_logliks(lm, ev, spec, batch_size)
    frame = pl.DataFrame(
        {
            "text_id": np.arange(len(ev), dtype=np.int64),
            "label": pl.Series(ev.labels, dtype=pl.String),
            "n_scored": np.array([int(m.sum()) for m in ev.scored], dtype=np.int64),
            "base": base,
            "steered": after,
            "change": after - base,
        }
    )
    return LoglikChange(per_text=frame, spec=spec)


def random_spec(spec: SteeringSpec, num_experts: int, rng: np.random.Generator) -> SteeringSpec:
    """Same layers, same number of edits per layer, same actions, experts drawn uniformly without
    replacement from those of the layer that ``spec`` does not touch."""
    edits: list[Edit] = []
    for layer in spec.layers():
        mine = spec.for_layer(layer)
        taken = {e.expert for e in mine}
        pool = np.array([e for e in range(num_experts) if e not in taken])
        if len(pool) < len(mine):
            raise SteeringSpecError(
                f"layer {layer}: the spec edits {len(taken)} of {num_experts} experts, too few are "
                f"left to draw {len(mine)} random ones; edit fewer experts per layer"
            )
        drawn = rng.choice(pool, size=len(mine), replace=False)
        edits += [Edit(layer, int(x), e.action, e.factor) for x, e in zip(drawn, mine, strict=True)]
    return SteeringSpec(edits=tuple(edits), mode=spec.mode, renormalize=spec.renormalize)


@dataclass
class RandomBaseline:
    """Log-likelihood change of ``draws`` random specs shaped like the tested one."""

    per_draw: pl.DataFrame  # draw, text_id, label, change
    specs: list[SteeringSpec]

    def draw_means(self, label: str | None = None) -> np.ndarray:
        """Mean change per draw, over all texts or over the texts of ``label``."""
        df = self.per_draw if label is None else self.per_draw.filter(pl.col("label") == label)
        return df.group_by("draw").agg(pl.col("change").mean()).sort("draw")["change"].to_numpy()

    def summary(self, label: str | None = None) -> dict[str, float]:
        """Spread across draws of the mean change: mean, std (ddof=1), min, max, draws."""
        m = self.draw_means(label)
        return {
            "mean": float(m.mean()),
            "std": float(m.std(ddof=1)) if len(m) > 1 else 0.0,
            "min": float(m.min()),
            "max": float(m.max()),
            "draws": len(m),
        }

    @property
    def mean(self) -> float:
        return self.summary()["mean"]

    @property
    def std(self) -> float:
        return self.summary()["std"]


def random_baseline(
    lm: LoadedModel,
    spec: SteeringSpec,
    texts: EvalSet | Sequence[str | Prompt],
    draws: int = 10,
    seed: int = 0,
    targets: Sequence[tuple[int, int] | str | None] | None = None,
    labels: Sequence[str | None] | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> RandomBaseline:
    """The log-likelihood change of ``draws`` random expert choices (see `random_spec`), so a
    spec's effect can be read against what switching off any experts of those layers does."""
    if draws < 1:
        raise InvalidParameterError(f"draws must be at least 1, got {draws}")
    if spec.is_empty:
        raise InvalidParameterError("an empty spec has no random baseline: add edits")
    spec.validate(model_shape(lm))
    ev = _as_evalset(lm, texts, targets, labels)
    base = _base(lm, ev, batch_size)
    rng = np.random.default_rng(seed)
    frames, specs = [], []
    for d in range(draws):
        rs = random_spec(spec, lm.num_experts, rng)
        change = text_logliks(lm, ev, rs, batch_size) - base
        frames.append(
            pl.DataFrame(
                {
                    "draw": np.full(len(ev), d, dtype=np.int64),
                    "text_id": np.arange(len(ev), dtype=np.int64),
                    "label": pl.Series(ev.labels, dtype=pl.String),
                    "change": change,
                }
            )
        )
        specs.append(rs)
        if progress is not None:
            progress(d + 1)
    return RandomBaseline(per_draw=pl.concat(frames), specs=specs)


@dataclass
class SideBySide:
    """Unsteered and steered continuations of one prompt, each token scored under both models."""

    prompt: str
    base_text: str
    steered_text: str
    tokens: pl.DataFrame  # which, step, token_id, token, logp_base, logp_steered, change
    sampled: bool


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], special: bool = False) -> str:
    """The text of one sequence of token ids (special tokens kept only when `special`)."""
    text = tokenizer.decode(ids, skip_special_tokens=not special)
    return text if isinstance(text, str) else "".join(text)


@torch.no_grad()
def side_by_side(
    lm: LoadedModel,
    spec: SteeringSpec,
    prompt: str,
    max_new_tokens: int = 20,
    sampled: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
) -> SideBySide:
    """Generate from ``prompt`` unsteered and steered (greedy, or sampled with the same seed) and
    give every generated token's log-probability under both, with the change steered − base."""
    tokenizer = lm.require_tokenizer("generation")
    if max_new_tokens < 1:
        raise InvalidParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    spec.validate(model_shape(lm))
    ids = [int(x) for x in tokenizer(prompt)["input_ids"]]
    if not ids:
        raise InvalidParameterError("the prompt tokenizes to no tokens; give a non-empty prompt")
    model = lm.model
    if not isinstance(model, GenerationMixin):
        raise InvalidParameterError(f"{lm.model_id} is not a generating (causal LM) model")
    device = model.device
    kwargs: dict = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampled,
        "pad_token_id": lm.pad_token_id,
    }
    if sampled:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    gens: dict[str, list[int]] = {}
    for which, s in (("base", None), ("steered", spec)):
        with steered(lm, s):
            if sampled:
                torch.manual_seed(seed)
            out = model.generate(torch.tensor([ids], device=device), **kwargs)
        gens[which] = out[0, len(ids) :].tolist()
    rows = []
    for which, new in gens.items():
        if not new:
            continue
        full = [ids + new]
        with steered(lm, None):
            lp_base = token_logprobs(lm, full)[0][len(ids) - 1 :]
        with steered(lm, spec):
            lp_steer = token_logprobs(lm, full)[0][len(ids) - 1 :]
        for step, (tok, b, st) in enumerate(zip(new, lp_base, lp_steer, strict=True)):
            rows.append(
                {
                    "which": which,
                    "step": step,
                    "token_id": int(tok),
                    "token": tokenizer.decode([tok]),
                    "logp_base": float(b),
                    "logp_steered": float(st),
                    "change": float(st - b),
                }
            )
    schema = {
        "which": pl.String,
        "step": pl.Int64,
        "token_id": pl.Int64,
        "token": pl.String,
        "logp_base": pl.Float64,
        "logp_steered": pl.Float64,
        "change": pl.Float64,
    }
    return SideBySide(
        prompt=prompt,
        base_text=decode_text(tokenizer, gens["base"]),
        steered_text=decode_text(tokenizer, gens["steered"]),
        tokens=pl.DataFrame(rows, schema=schema),
        sampled=sampled,
    )
