"""edit_routing on hand-computed examples: a softmax→top-k family (OLMoE) and a top-k→softmax one
(GraniteMoE), 4 experts, top-2, two tokens."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from routescope.models.adapters import adapter_for
from routescope.steering.interventions import LayerEdit, edit_routing

LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 3.0, 0.5]])


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


P = [_softmax(r) for r in LOGITS.tolist()]  # full softmax per token


def _lm(family: str, **kw):  # noqa: ANN202
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(family, num_experts_per_tok=2, **kw)
    return SimpleNamespace(adapter=adapter_for(cfg))


@pytest.fixture()
def olmoe():  # noqa: ANN201
    return _lm("olmoe", num_experts=4, norm_topk_prob=False)


def _run(lm, edit: LayerEdit) -> tuple[list[list[int]], list[list[float]]]:  # noqa: ANN001
    w, i = lm.adapter.route(LOGITS, None)
    nw, ni = edit_routing(lm, None, edit, LOGITS, w, i)
    return ni.tolist(), nw.tolist()


def test_unedited_route_is_softmax_topk(olmoe) -> None:  # noqa: ANN001
    idx, w = _run(olmoe, LayerEdit())
    assert idx == [[0, 1], [2, 3]]
    np.testing.assert_allclose(w, [[P[0][0], P[0][1]], [P[1][2], P[1][3]]], rtol=1e-6)


def test_reroute_next_best_fills_the_slot(olmoe) -> None:  # noqa: ANN001
    idx, w = _run(olmoe, LayerEdit(deactivate=(0,)))
    # token 0 loses expert 0: experts 1 and 2 with their softmax probabilities over all 4 logits
    assert idx == [[1, 2], [2, 3]]
    np.testing.assert_allclose(w, [[P[0][1], P[0][2]], [P[1][2], P[1][3]]], rtol=1e-6)


def test_drop_zeroes_and_optionally_renormalizes(olmoe) -> None:  # noqa: ANN001
    idx, w = _run(olmoe, LayerEdit(deactivate=(2,), mode="drop"))
    assert idx == [[0, 1], [2, 3]]
    np.testing.assert_allclose(w, [[P[0][0], P[0][1]], [0.0, P[1][3]]], rtol=1e-6)
    idx, w = _run(olmoe, LayerEdit(deactivate=(2,), mode="drop", renormalize=True))
    np.testing.assert_allclose(w, [[P[0][0], P[0][1]], [0.0, P[1][2] + P[1][3]]], rtol=1e-6)


def test_activate_forces_first_rank_and_keeps_order(olmoe) -> None:  # noqa: ANN001
    idx, w = _run(olmoe, LayerEdit(activate=(3,)))
    # token 0 lacks expert 3: it is put first, the best other expert (0) keeps the second slot;
    # token 1 already has it and keeps the router's own output
    assert idx == [[3, 0], [2, 3]]
    np.testing.assert_allclose(w, [[P[0][3], P[0][0]], [P[1][2], P[1][3]]], rtol=1e-6)


def test_scale_multiplies_only_where_selected(olmoe) -> None:  # noqa: ANN001
    idx, w = _run(olmoe, LayerEdit(scale=((1, 0.5),)))
    assert idx == [[0, 1], [2, 3]]
    np.testing.assert_allclose(w, [[P[0][0], 0.5 * P[0][1]], [P[1][2], P[1][3]]], rtol=1e-6)


def test_topk_then_softmax_family_renormalizes_over_the_new_pair() -> None:
    lm = _lm("granitemoe", num_local_experts=4)
    idx, w = _run(lm, LayerEdit(deactivate=(0,)))
    # GraniteMoE: softmax over the two chosen raw logits, so the rerouted pair sums to 1
    assert idx == [[1, 2], [2, 3]]
    a = _softmax([1.0, 0.0])
    b = _softmax([3.0, 0.5])
    np.testing.assert_allclose(w, [a, b], rtol=1e-6)
