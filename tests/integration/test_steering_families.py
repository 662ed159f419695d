"""Steering on every supported family (tiny random models): what DESIGN.md §4.5 promises.

References are the unsteered routing of the same tokens: at the first MoE layer the router's input is
untouched by any edit, so the edited routing there can be checked against the unsteered one exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_families import PAD, PROMPTS, TINY_CONFIGS, build_tiny

from routescope.collect.engine import collect_batch
from routescope.models import LoadedModel
from routescope.steering import SpecEdit, SteeringSpec, steered


def _grouped(lm: LoadedModel) -> bool:
    """Group-limited routing: masking an expert can change which expert groups are eligible."""
    return "n_group" in TINY_CONFIGS[lm.model_id][0]


@pytest.fixture(scope="module", params=list(TINY_CONFIGS))
def lm(request: pytest.FixtureRequest) -> LoadedModel:
    return LoadedModel.from_model(build_tiny(request.param), model_id=request.param)


@pytest.fixture(scope="module")
def base(lm: LoadedModel):
    return collect_batch(lm, PROMPTS)


def _usage(experts: np.ndarray, li: int, num_experts: int) -> np.ndarray:
    return np.bincount(experts[:, li].ravel().astype(np.int64), minlength=num_experts)


def test_empty_spec_changes_nothing_bit_for_bit(lm: LoadedModel, base) -> None:
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        plain = lm.model(ids).logits
        with steered(lm, SteeringSpec()) as edit:
            assert edit is None
            hooked = lm.model(ids).logits
    assert torch.equal(plain, hooked)
    again = collect_batch(lm, PROMPTS, steering=SpecEdit(lm, SteeringSpec()))
    assert np.array_equal(again.experts, base.experts)
    assert np.array_equal(again.weights, base.weights)


def test_deactivate_reroute_removes_expert_and_keeps_k(lm: LoadedModel, base) -> None:
    layers, k, num_e = lm.moe_layers, lm.top_k, lm.num_experts
    # switch off each layer's most used expert, so the edit is certain to matter
    busiest = [int(_usage(base.experts, li, num_e).argmax()) for li in range(len(layers))]
    spec = SteeringSpec.from_edits(
        [(layer, e, "deactivate") for layer, e in zip(layers, busiest, strict=True)]
    )
    out = collect_batch(lm, PROMPTS, max_new_tokens=3, steering=SpecEdit(lm, spec))
    for li, e in enumerate(busiest):
        assert not (out.experts[:, li] == e).any()
        distinct = [len(set(row.tolist())) for row in out.experts[:, li]]
        assert distinct == [k] * len(out.experts)
    # first MoE layer, prefill: same router input, so compare with the unsteered choice
    before, after = base.experts[:, 0], out.experts[out.phase == 0][:, 0]
    for b_row, a_row in zip(before, after, strict=True):
        b_set, a_set = set(b_row.tolist()), set(a_row.tolist())
        if busiest[0] not in b_set:
            assert a_set == b_set  # tokens the edit does not touch keep their experts
        elif not _grouped(lm):
            assert b_set - {busiest[0]} <= a_set and len(a_set - b_set) == 1  # next best fills


def test_activate_forces_expert_into_every_token(lm: LoadedModel, base) -> None:
    layer, num_e, k = lm.moe_layers[-1], lm.num_experts, lm.top_k
    rarest = int(_usage(base.experts, len(lm.moe_layers) - 1, num_e).argmin())
    spec = SteeringSpec.from_edits([(layer, rarest, "activate")])
    out = collect_batch(lm, PROMPTS, max_new_tokens=2, steering=SpecEdit(lm, spec))
    rows = out.experts[:, -1]
    assert (rows == rarest).any(axis=1).all()
    assert all(len(set(r.tolist())) == k for r in rows)


@pytest.mark.parametrize("renormalize", [False, True])
def test_drop_zeroes_the_dropped_weight(lm: LoadedModel, base, renormalize: bool) -> None:
    layer, num_e = lm.moe_layers[0], lm.num_experts
    e = int(_usage(base.experts, 0, num_e).argmax())
    spec = SteeringSpec.from_edits([(layer, e, "deactivate")], mode="drop", renormalize=renormalize)
    out = collect_batch(lm, PROMPTS, steering=SpecEdit(lm, spec))
    assert np.array_equal(out.experts[:, 0], base.experts[:, 0])  # drop keeps the selection
    sel = base.experts[:, 0] == e
    assert sel.any()
    w0, w1 = base.weights[:, 0].astype(np.float64), out.weights[:, 0].astype(np.float64)
    assert (w1[sel] == 0).all()
    if not renormalize:
        assert np.array_equal(w1[~sel], w0[~sel])  # the others are untouched
        expected = w0.sum(axis=1) - np.where(sel, w0, 0.0).sum(axis=1)
        np.testing.assert_allclose(w1.sum(axis=1), expected, rtol=0, atol=1e-6)
        assert (w1.sum(axis=1)[sel.any(axis=1)] < w0.sum(axis=1)[sel.any(axis=1)]).all()
    else:
        np.testing.assert_allclose(w1.sum(axis=1), w0.sum(axis=1), rtol=1e-5)
        rows = sel.any(axis=1)
        ratio = w1[rows][~sel[rows]] / w0[rows][~sel[rows]]
        assert (ratio > 1).all()


def test_scale_multiplies_selected_weight(lm: LoadedModel, base) -> None:
    layer, num_e = lm.moe_layers[0], lm.num_experts
    e = int(_usage(base.experts, 0, num_e).argmax())
    spec = SteeringSpec.from_edits([(layer, e, "scale", 0.25)])
    out = collect_batch(lm, PROMPTS, steering=SpecEdit(lm, spec))
    sel = base.experts[:, 0] == e
    np.testing.assert_allclose(out.weights[:, 0][sel], base.weights[:, 0][sel] * 0.25, rtol=1e-6)
    assert np.array_equal(out.weights[:, 0][~sel], base.weights[:, 0][~sel])


def test_hook_path_agrees_with_collect_batch(lm: LoadedModel, base) -> None:
    layers, num_e = lm.moe_layers, lm.num_experts
    busiest = [int(_usage(base.experts, li, num_e).argmax()) for li in range(len(layers))]
    spec = SteeringSpec.from_edits(
        [(layers[0], busiest[0], "deactivate"), (layers[-1], (busiest[-1] + 1) % num_e, "activate")]
    )
    edit = SpecEdit(lm, spec)
    seq = PROMPTS[0]
    traced = collect_batch(lm, [seq], max_new_tokens=4, steering=edit)
    captured: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}

    class Recording(SpecEdit):
        """The same edit, remembering the routing it hands to the model."""

        def __call__(self, lm, layer, logits, weights, indices):  # noqa: ANN001, ANN204
            out = super().__call__(lm, layer, logits, weights, indices)
            captured[layer].append(
                (weights, indices) if out is None else (out[0].detach(), out[1].detach())
            )
            return out

    with steered(lm, Recording(lm, spec)), torch.no_grad():
        gen = lm.model.generate(
            torch.tensor([seq]), max_new_tokens=4, do_sample=False, pad_token_id=PAD
        )
    n_prompt = len(seq)
    gen_tokens = gen[0, n_prompt:].tolist()
    traced_gen = traced.token_ids[n_prompt:].tolist()
    assert traced_gen[: len(gen_tokens) - 1] == gen_tokens[: len(gen_tokens) - 1]
    # routing of the prompt tokens at the edited layers: same experts and weights per expert
    for li, layer in enumerate(layers):
        if layer not in edit.layer_edits:
            continue
        w, idx = captured[layer][0]
        for t in range(n_prompt):
            hooked = dict(zip(idx[t].tolist(), w[t].float().tolist(), strict=True))
            rec = dict(
                zip(traced.experts[t, li].tolist(), traced.weights[t, li].tolist(), strict=True)
            )
            assert hooked.keys() == rec.keys()
            for key in hooked:
                assert hooked[key] == pytest.approx(rec[key], abs=1e-6)


def test_steered_collection_job_records_the_edit(tmp_path) -> None:
    """A collection job with `steering = PRESET` (or a spec file) records routing that shows the
    edit, and stores the preset id in runs.steering_id."""
    import duckdb
    from test_collect_job import PROSE, build_tiny_olmoe, make_tokenizer

    from routescope.collect.jobs import job_from_options
    from routescope.collect.runner import run_job
    from routescope.steering.presets import create_preset, job_steering
    from routescope.store.store import RoutingStore

    lm = LoadedModel.from_model(build_tiny_olmoe(seed=3), make_tokenizer(), model_id="tiny/olmoe")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROSE))
    db = tmp_path / "s.duckdb"
    spec = SteeringSpec.from_edits([(0, 1, "deactivate"), (1, 4, "deactivate"), (2, 6, "activate")])
    with RoutingStore(db) as store:
        preset = create_preset(store.con, "off", spec)
        for name, steering in (("plain", None), ("steered", "off")):
            job = job_from_options(
                [str(prompts)], db=str(db), name=name, steering=steering, max_new_tokens=2
            )
            run_job(job, quiet=True, lm=lm, store=store, steering=job_steering(job, store.con))
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(spec.to_json())
        job = job_from_options(
            [str(prompts)], db=str(db), name="from-file", steering=str(spec_file)
        )
        run_job(job, quiet=True, lm=lm, store=store, steering=job_steering(job, store.con))
    con = duckdb.connect(str(db), read_only=True)
    ids = dict(con.execute("SELECT run_id, steering_id FROM runs").fetchall())
    assert ids == {"plain": None, "steered": preset.preset_id, "from-file": str(spec_file)}

    def count(run: str, layer: int, expert: int) -> tuple[int, int]:
        return con.execute(
            "SELECT count(*) FILTER (list_contains(experts, ?)), count(*) FROM routes "
            "WHERE run_id = ? AND layer = ?",
            [expert, run, layer],
        ).fetchone()

    assert count("plain", 0, 1)[0] > 0 and count("plain", 1, 4)[0] > 0
    for run in ("steered", "from-file"):
        assert count(run, 0, 1)[0] == 0 and count(run, 1, 4)[0] == 0
        hit, total = count(run, 2, 6)
        assert hit == total > 0
    con.close()


def test_installed_unit_scale_is_bit_identical(lm: LoadedModel, base) -> None:
    """scale x1.0 on every MoE layer's busiest expert installs the hooks (unlike an empty spec) and
    still changes nothing, bit for bit: logits of a plain forward, and the engine's routing and
    greedy continuation."""
    layers, num_e = lm.moe_layers, lm.num_experts
    busiest = [int(_usage(base.experts, li, num_e).argmax()) for li in range(len(layers))]
    spec = SteeringSpec.from_edits(
        [(layer, e, "scale", 1.0) for layer, e in zip(layers, busiest, strict=True)]
    )
    ids = torch.tensor([PROMPTS[0]])
    calls: list[int] = []

    class Counting(SpecEdit):
        """The same edit, counting the layers it is called on (proof the hooks ran)."""

        def __call__(self, lm, layer, logits, weights, indices):  # noqa: ANN001, ANN204
            calls.append(layer)
            return super().__call__(lm, layer, logits, weights, indices)

    with torch.no_grad():
        plain = lm.model(ids).logits
        with steered(lm, Counting(lm, spec)) as edit:
            assert edit is not None
            hooked = lm.model(ids).logits
    assert calls == layers  # every MoE layer went through the installed edit
    assert torch.equal(plain, hooked)
    # control: the same hooks with another factor do reach the logits, so the equality above is
    # not vacuous
    halved = SteeringSpec.from_edits(
        [(layer, e, "scale", 0.5) for layer, e in zip(layers, busiest, strict=True)]
    )
    with torch.no_grad(), steered(lm, halved):
        assert not torch.equal(plain, lm.model(ids).logits)
    free = collect_batch(lm, PROMPTS, max_new_tokens=3, generation={"eos_token_id": []})
    edited = collect_batch(
        lm, PROMPTS, max_new_tokens=3, steering=SpecEdit(lm, spec), generation={"eos_token_id": []}
    )
    assert np.array_equal(edited.token_ids, free.token_ids)
    assert np.array_equal(edited.experts, free.experts)
    assert np.array_equal(edited.weights, free.weights)
