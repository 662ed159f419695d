"""Issue 5 on the demo model: each domain's top localized experts are the domain-specialized ones."""

import polars as pl
import pytest

from routescope.analysis.localization import localize, split_labels
from routescope.analysis.specialization import domain_specialization
from routescope.store.store import RoutingStore


@pytest.mark.e2e
def test_top_localized_experts_are_domain_specialized(demo_heldout_db):
    db, _ = demo_heldout_db
    with RoutingStore(db, read_only=True) as store:
        trace = store.load_trace("demo-domains-heldout")
    spec = domain_specialization(trace)
    assert len(trace.label_set) == 5
    for domain in trace.label_set:
        target, control = split_labels(trace, domain)  # control: every other domain
        ranked = localize(target, control, n_boot=200, n_perm=200, seed=0).sort("rank")
        top = ranked.head(10)
        assert (top["q_value"] < 0.05).all(), domain
        assert (top["ci_low"] > 0).all(), domain
        table = spec.filter(pl.col("label") == domain)
        joined = top.join(table, on=["layer", "expert"], how="left")
        assert joined.height == 10
        # the specialization table's mark: used at >= 2x the uniform rate k/E and >= 2x the rate
        # on the other domains' tokens
        marked = (joined["ratio_uniform"] >= 2.0) & (joined["ratio_other"].fill_null(0) >= 2.0)
        assert int(marked.sum()) >= 7, (domain, joined.select("layer", "expert", "rd").rows())
        # RD over token sets of one run is share − share on the other domains, exactly
        diff = (joined["rd"] - (joined["share"] - joined["share_other"])).abs().max()
        assert diff < 1e-9, domain
