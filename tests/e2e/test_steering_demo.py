"""The steering experiment on the shipped demo model (DESIGN.md §4.5, issue 6).

For each domain: localize its experts on the train split (target = the domain, control = the other
domains), switch off the top 10 of 6×32 = 192 routed experts, and check on the held-out split that
the domain's log-likelihood falls at least twice as much as with 10 random experts of the same layers
(mean of 10 draws) and more than any other domain's. Few prompts per domain keep it to ~2 minutes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from routescope.models import LoadedModel
from routescope.models.demo import DEMO_DOMAINS, DEMO_PROMPTS_DIR
from routescope.steering.experiment import run_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_domain_experts_matter_more_than_random_ones(demo_model) -> None:
    model, tok = demo_model
    lm = LoadedModel.from_model(model, tok, model_id="demo")
    domains = DEMO_DOMAINS
    files = {d: DEMO_PROMPTS_DIR / f"{d}.jsonl" for d in domains}
    res = run_experiment(lm, files, n_off=10, n_train=40, n_eval=10, draws=10, seed=0)
    assert [d.domain for d in res.domains] == list(domains)
    for d in res.domains:
        assert len(d.spec.edits) == 10
        assert all(e.action == "deactivate" for e in d.spec.edits)
        assert set(d.change) == set(domains)
        r = d.random[d.domain]
        assert r["draws"] == 10 and r["min"] <= r["mean"] <= r["max"]
        drop, rand_drop = -d.change[d.domain], -r["mean"]
        assert drop > 0, f"{d.domain}: switching off its experts did not lower its log-likelihood"
        assert drop >= 2 * rand_drop, f"{d.domain}: drop {drop:.4f} < 2 × random {rand_drop:.4f}"
        others = [-v for k, v in d.change.items() if k != d.domain]
        assert drop > max(others), f"{d.domain}: another domain fell more ({max(others):.4f})"
        assert d.passes
    assert all(math.isfinite(v) and v < 0 for v in res.base.values())
    # the localized experts differ between domains
    sets = [{(e.layer, e.expert) for e in d.spec.edits} for d in res.domains]
    overlap = np.mean([len(a & b) / 10 for i, a in enumerate(sets) for b in sets[i + 1 :]])
    assert overlap < 0.5
