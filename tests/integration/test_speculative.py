"""Speculative-gate recording (`collect --speculative D`, DESIGN §9) for every registered family.

The reference is written here, independently of the adapters and the engine: a plain forward of
each sequence alone, with `register_forward_pre_hook` on every router module (and on the MLP of
each dense layer) capturing the router inputs; layer l's router weights applied to the input of
layer l - d with `F.linear`, then the family's routing rule from its transformers modeling code
(ranking by the logit, which softmax and top-k-then-softmax preserve; DeepSeek-V3 / GLM-4.5:
sigmoid plus the selection-only bias, kept groups by their two best scores; DeepSeek-V2
group-limited greedy: softmax, kept groups by their best score), top m. Past the kept groups'
candidates (m larger than the group limit allows) the excluded experts follow by the same score,
the documented extension (`MoEAdapter.rank_experts`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_collect_job import PROSE
from test_families import FAMILIES, PROMPTS, TINY, build_tiny
from tiny_models import build_tiny_olmoe, make_tokenizer

from routescope.cli import main
from routescope.collect.engine import collect_batch
from routescope.collect.jobs import JobSpecError, job_from_options, load_job, slug
from routescope.core.canonical import canonical_json
from routescope.core.errors import InvalidParameterError
from routescope.models import LoadedModel
from routescope.store.store import RoutingStore

D = 2

#: the group-limited families: how a group is scored (from the modeling code)
GROUPED = {"deepseek_v3": "top2-sum", "glm4_moe": "top2-sum", "deepseek_v2": "max"}


# ---- the independent reference -----------------------------------------------------------------
def _input_path(family: str, model: torch.nn.Module, layer: int) -> str:
    """The module whose first input is layer ``layer``'s router input (its MLP when dense)."""
    tiny = TINY[family]
    if layer in tiny.moe_layers:
        return f"model.layers.{layer}.{tiny.router_attr}"
    return f"model.layers.{layer}.{tiny.router_attr.rpartition('.')[0]}"


def capture_router_inputs(
    model: torch.nn.Module, family: str, seq: list[int], edit=None
) -> dict[int, torch.Tensor]:
    """Every decoder layer's router input (tokens, hidden) from a plain forward of ``seq`` alone;
    ``edit(router, output)``, if given, replaces each router's output (a steered model)."""
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(model.config.num_hidden_layers):
        module = model.get_submodule(_input_path(family, model, layer))

        def pre(mod, args, kwargs, layer=layer):
            x = args[0] if args else next(iter(kwargs.values()))
            inputs[layer] = x.detach().reshape(-1, x.shape[-1]).clone()

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if edit is not None and layer in TINY[family].moe_layers:
            handles.append(module.register_forward_hook(lambda mod, a, out: edit(mod, out)))
    try:
        with torch.no_grad():
            model(torch.tensor([seq]))
    finally:
        for h in handles:
            h.remove()
    return inputs


def reference_ranking(
    family: str, model: torch.nn.Module, router: torch.nn.Module, x: torch.Tensor, m: int
) -> torch.Tensor:
    """Router ``router``'s weights applied to ``x``, ranked by the family's rule: (tokens, m)."""
    cfg = model.config
    logits = F.linear(x.float(), router.weight.float(), getattr(router, "bias", None))
    kind = GROUPED.get(family)
    if kind == "max" and cfg.topk_method != "group_limited_greedy":
        kind = None
    if kind is None:
        return torch.topk(logits, m, dim=-1).indices
    if kind == "top2-sum":
        score = torch.sigmoid(logits) + router.e_score_correction_bias.float()
    else:
        score = torch.softmax(logits, dim=-1)
    n_group, e = int(cfg.n_group), logits.shape[-1]
    grouped = score.view(-1, n_group, e // n_group)
    if kind == "top2-sum":
        group_score = grouped.topk(2, dim=-1).values.sum(-1)
    else:
        group_score = grouped.max(dim=-1).values
    kept_groups = torch.topk(group_score, int(cfg.topk_group), dim=-1).indices
    kept = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, kept_groups, True)
    kept = kept[:, :, None].expand_as(grouped).reshape(-1, e)
    # rank: kept experts by score, then the others by score (a lexicographic sort)
    key = torch.where(kept, 1, 0).double() * 1e6 + score.double()
    return torch.argsort(key, dim=-1, descending=True, stable=True)[:, :m]


def reference_speculative(
    model: torch.nn.Module, family: str, seq: list[int], m: int, distances: int = D, edit=None
) -> np.ndarray:
    """int[T, L, D, m]: layer l's router on layer l - d's router input, -1 where l - d < 0."""
    inputs = capture_router_inputs(model, family, seq, edit)
    layers = TINY[family].moe_layers
    out = np.full((len(seq), len(layers), distances, m), -1, dtype=np.int64)
    for col, layer in enumerate(layers):
        router = model.get_submodule(f"model.layers.{layer}.{TINY[family].router_attr}")
        for d in range(1, distances + 1):
            if layer - d >= 0:
                ranked = reference_ranking(family, model, router, inputs[layer - d], m)
                out[:, col, d - 1] = ranked.numpy()
    return out


# ---- every family: prefill and decode, alone and in a padded batch ----------------------------
@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, LoadedModel]:
    family = request.param
    model = build_tiny(family)
    return family, model, LoadedModel.from_model(model, model_id=f"tiny-{family}")


def _width(lm: LoadedModel, width: str) -> int | None:
    return None if width == "default" else lm.num_experts


@pytest.mark.parametrize("width", ["default", "all"])
@pytest.mark.parametrize(
    ("which", "new"),
    [([0], 0), ([0, 1, 2], 0), ([1], 3), ([0, 1, 2], 3)],
    ids=["prefill-batch1", "prefill-padded", "decode-batch1", "decode-padded"],
)
def test_rankings_equal_plain_torch(tiny, which: list[int], new: int, width: str) -> None:
    """Recorded rankings equal the reference for every token (prompt and generated), layer and
    distance; width "all" (m = E) ranks every expert, past the group limit too."""
    family, model, lm = tiny
    prompts = [PROMPTS[i] for i in which]
    m = _width(lm, width)
    rec = collect_batch(
        lm,
        prompts,
        max_new_tokens=new,
        generation={"eos_token_id": []},
        speculative=D,
        speculative_width=m,
    )
    m = m or min(2 * lm.top_k, lm.num_experts)
    assert rec.speculative is not None and rec.speculative.dtype == np.int16
    assert rec.speculative.shape == (rec.num_tokens, len(lm.moe_layers), D, m)
    for b, prompt in enumerate(prompts):
        rows = rec.sequence(b)
        tokens = rec.token_ids[rows].tolist()
        assert len(tokens) == len(prompt) + new
        ref = reference_speculative(model, family, tokens, m)
        np.testing.assert_array_equal(rec.speculative[rows].astype(np.int64), ref)


def test_minus_one_exactly_where_no_earlier_layer(tiny) -> None:
    family, _, lm = tiny
    rec = collect_batch(lm, PROMPTS[:2], speculative=D)
    for col, layer in enumerate(lm.moe_layers):
        for d in range(1, D + 1):
            missing = (rec.speculative[:, col, d - 1] == -1).all()
            present = (rec.speculative[:, col, d - 1] >= 0).all()
            assert missing if layer - d < 0 else present, (family, layer, d)
    ranked = rec.speculative[rec.speculative[..., 0] >= 0]
    assert all(len(set(r.tolist())) == len(r) for r in ranked)  # distinct experts per ranking


def test_recording_leaves_routing_unchanged(tiny) -> None:
    """The ad hoc router calls do not disturb the traced forward: same routing, same tokens."""
    _, _, lm = tiny
    opts = {"max_new_tokens": 2, "generation": {"eos_token_id": []}}
    plain = collect_batch(lm, PROMPTS, **opts)
    spec = collect_batch(lm, PROMPTS, speculative=1, **opts)
    assert plain.speculative is None
    np.testing.assert_array_equal(spec.token_ids, plain.token_ids)
    np.testing.assert_array_equal(spec.experts, plain.experts)
    np.testing.assert_array_equal(spec.weights, plain.weights)
    assert spec.speculative.shape[2] == 1


@pytest.mark.parametrize("family", ["olmoe", "deepseek_v3"])
def test_steered_collection_records_the_unsteered_ranking(family: str) -> None:
    """Under a RouterEdit the ranking is the router's own ranking of the (steered) input: the
    masked expert still appears in it, and it equals the reference on the steered model."""
    model = build_tiny(family)
    lm = LoadedModel.from_model(model)
    last = lm.moe_layers[-1]
    j = lm.moe_layers.index(last)
    base = collect_batch(lm, PROMPTS, speculative=D)
    banned = int(np.bincount(base.speculative[:, j, 0, 0]).argmax())  # often ranked first
    mask = torch.zeros(lm.num_experts, dtype=torch.bool)
    mask[banned] = True

    def edit(lm_, at, logits, weights, indices):
        if at != last:
            return None
        return lm_.adapter.route(logits, lm_.router_modules()[j], mask=mask)

    rec = collect_batch(lm, PROMPTS, max_new_tokens=2, steering=edit, speculative=D)
    assert not (rec.experts[:, j] == banned).any()  # the model was steered
    assert (rec.speculative[:, j, 0] == banned).any()  # the ranking was not

    def replace(mod, out):  # the same edit as a plain torch hook, for the reference
        if mod is not lm.router_modules()[j]:
            return None
        w, i = lm.adapter.route(out[0], mod, mask=mask)
        return out[0], w.to(out[1].dtype), i

    m = min(2 * lm.top_k, lm.num_experts)
    for b in range(len(PROMPTS)):
        tokens = rec.token_ids[rec.sequence(b)].tolist()
        ref = reference_speculative(model, family, tokens, m, edit=replace)
        np.testing.assert_array_equal(rec.speculative[rec.sequence(b)].astype(np.int64), ref)


def test_bad_distance_or_width_is_one_clear_error() -> None:
    lm = LoadedModel.from_model(build_tiny("olmoe"))
    with pytest.raises(InvalidParameterError, match="at most 2"):
        collect_batch(lm, PROMPTS[:1], speculative=3)
    with pytest.raises(InvalidParameterError, match="1..8"):
        collect_batch(lm, PROMPTS[:1], speculative=1, speculative_width=9)
    with pytest.raises(InvalidParameterError, match="needs speculative"):
        collect_batch(lm, PROMPTS[:1], speculative_width=4)


# ---- jobs, the CLI and the store ---------------------------------------------------------------
def _old_run_id(job) -> str:
    """The run id as computed before speculative recording existed (its identity keys, fixed)."""
    sets = [
        {"name": ps.set_name, "label": ps.label, "split": ps.split, "sha256": _sha(ps.path)}
        for ps in job.prompt_sets
    ]
    identity = {
        "model": job.model,
        "revision": job.revision,
        "dtype": job.dtype,
        "trust_remote_code": job.trust_remote_code,
        "max_length": job.max_length,
        "max_new_tokens": job.max_new_tokens,
        "save_probs": job.save_probs,
        "steering": job.steering,
        "prompt_sets": sets,
    }
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]
    return f"{slug(Path(job.model).name)}-{digest}"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_job_identity_and_validation(tmp_path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROSE) + "\n")
    plain = job_from_options([str(prompts)], model="some/model", max_new_tokens=2)
    assert plain.run_id == _old_run_id(plain)  # no speculative: the run id it always had
    assert "speculative" not in plain.identity()
    spec = job_from_options([str(prompts)], model="some/model", max_new_tokens=2, speculative=2)
    wide = spec.with_overrides(speculative_width=6)
    assert len({plain.run_id, spec.run_id, wide.run_id}) == 3
    assert spec.identity()["speculative"] == 2 and wide.identity()["speculative_width"] == 6

    job_file = tmp_path / "job.toml"
    job_file.write_text(
        'model = "some/model"\nmax_new_tokens = 2\nspeculative = 2\nspeculative_width = 6\n'
        '[[prompts]]\npath = "p.txt"\n'
    )
    assert load_job(job_file).run_id == wide.run_id
    for bad, match in [
        ("speculative = -1", "speculative must be"),
        ('speculative = "2"', "`speculative` must be a int"),
        ("speculative_width = 4", "needs speculative"),
        ("speculative = 2\nspeculative_width = 0", "speculative_width must be"),
    ]:
        job_file.write_text(f'{bad}\n[[prompts]]\npath = "p.txt"\n')
        with pytest.raises(JobSpecError, match=match):
            load_job(job_file)


def _cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["routescope", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_round_trip_through_the_store(tmp_path, monkeypatch) -> None:
    """`routescope collect --speculative 2` on a saved tiny model: the store holds the rankings,
    read back through StoreSource chunks, equal to the plain-torch reference of every stored
    sequence (prompt and generated tokens); the same command without it records none."""
    model = build_tiny_olmoe(seed=5)
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROSE) + "\n")
    db = str(tmp_path / "s.duckdb")
    common = ["collect", "--model", str(model_dir), "--prompts", str(prompts), "--db", db, "-q"]
    common += ["--max-new-tokens", "2", "-b", "2"]
    assert _cli(monkeypatch, *common, "--name", "spec", "--speculative", "2") == 0
    assert _cli(monkeypatch, *common, "--name", "plain") == 0
    # a distance the model cannot have fails in one line before the run is created
    assert _cli(monkeypatch, *common, "--name", "bad", "--speculative", "3") != 0

    with RoutingStore(db, read_only=True) as store:
        src = store.source("spec")
        assert (src.info.speculative_distances, src.info.speculative_width) == (2, 4)
        chunks = list(src.chunks(with_speculative=True, max_rows=20))
        assert len(chunks) > 1
        plain = store.source("plain")
        assert plain.info.speculative_distances == 0
        assert all(c.speculative is None for c in plain.chunks(with_speculative=True))
        config = store.con.execute("SELECT config FROM runs WHERE run_id = 'spec'").fetchall()[0][0]
    assert '"speculative":2' in config.replace(" ", "")
    assert '"speculative_width":4' in config.replace(" ", "")
    con = duckdb.connect(db, read_only=True)
    counts = dict(
        con.execute("SELECT run_id, count(*) FROM speculative_routes GROUP BY 1").fetchall()
    )
    runs = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()}
    con.close()
    assert set(counts) == {"spec"}
    assert runs == {"spec", "plain"}

    tokens = 0
    family = "olmoe"  # build_tiny_olmoe: the TINY row's router path and layers
    assert TINY[family].moe_layers == [0, 1, 2]
    for chunk in chunks:
        for s in range(chunk.num_sequences):
            rows = slice(int(chunk.seq_offsets[s]), int(chunk.seq_offsets[s + 1]))
            seq = chunk.token_ids[rows].tolist()
            assert (chunk.phase[rows] == 1).sum() >= 1  # generated tokens are in the store too
            ref = reference_speculative(model, family, seq, 4)
            np.testing.assert_array_equal(chunk.speculative[rows].astype(np.int64), ref)
            tokens += len(seq)
    assert tokens == src.info.num_tokens == counts["spec"] // (3 * 2)
