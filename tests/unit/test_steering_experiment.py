"""The demo steering experiment's pass rule (routescope.steering.experiment.DomainResult.passes).

A domain passes only when switching off its experts lowers its own held-out log-likelihood
(drop > 0), at least twice as much as random experts of the same layers do (any drop, when the
random experts cause no mean drop), and more than any other domain's.
"""

from __future__ import annotations

import math

import pytest

from routescope.steering.experiment import DomainResult, ExperimentResult, report_markdown
from routescope.steering.spec import SteeringSpec


def _result(own: float, random_mean: float, other: float = 0.5) -> DomainResult:
    """Domain "a" with log-likelihood change ``own`` (negative = falls), random baseline mean
    change ``random_mean``, and another domain "b" whose log-likelihood changes by ``other``."""
    spec = SteeringSpec.from_edits([(0, 1, "deactivate")])
    rand = {"mean": random_mean, "std": 0.01, "min": random_mean - 0.02, "max": random_mean + 0.02}
    rand_b = {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    return DomainResult("a", spec, {"a": own, "b": other}, {"a": rand, "b": rand_b})


@pytest.mark.parametrize(
    ("own", "random_mean", "other", "expected"),
    [
        # the old rule passed these: no random drop made the ratio infinite, whatever "a" did
        (+0.10, +0.05, +0.30, False),  # own log-likelihood rises, random rises too
        (+0.10, 0.0, +0.30, False),  # own rises, random exactly unchanged
        (0.0, -0.0, +0.30, False),  # own unchanged: no drop
        # own drop > 0 but less than twice the random drop
        (-0.10, -0.08, +0.30, False),
        (-0.199, -0.10, +0.30, False),
        # own drop > 0 and at least twice the random drop
        (-0.20, -0.10, +0.30, True),  # exactly 2x
        (-0.50, -0.05, -0.20, True),
        # random experts cause no mean drop, own drop > 0
        (-0.05, +0.02, +0.30, True),
        (-0.05, 0.0, +0.30, True),
        # twice random, but another domain falls more
        (-0.30, -0.10, -0.40, False),
        (-0.30, -0.10, -0.30, False),  # ties do not pass either
    ],
)
def test_pass_rule(own: float, random_mean: float, other: float, expected: bool) -> None:
    d = _result(own, random_mean, other)
    assert d.passes is expected


def test_a_rise_never_passes_whatever_the_random_baseline() -> None:
    for random_mean in (+1.0, +1e-9, 0.0, -0.0):
        for other in (+0.5, +5.0):
            assert not _result(+0.01, random_mean, other).passes
    # a rise is not "twice" a negative random drop either
    assert not _result(+0.01, +0.02, +5.0).passes


def test_ratio_has_no_value_without_a_random_drop() -> None:
    assert _result(-0.2, -0.1).ratio == pytest.approx(2.0)
    assert math.isnan(_result(+0.1, +0.05).ratio)  # not +inf: a rise must not look like a win
    assert math.isnan(_result(-0.1, 0.0).ratio)


def test_report_and_table_say_no_for_a_rise() -> None:
    rising = _result(+0.10, +0.05, +0.30)
    falling = DomainResult(
        "b",
        SteeringSpec.from_edits([(0, 2, "deactivate")]),
        {"a": -0.01, "b": -0.40},
        {
            "a": {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0},
            "b": {"mean": -0.1, "std": 0.01, "min": -0.12, "max": -0.08},
        },
    )
    settings = {
        "n_off": 1,
        "n_train": 4,
        "n_eval": 2,
        "draws": 3,
        "seed": 0,
        "max_length": 32,
        "routed_experts": 8,
    }
    result = ExperimentResult([rising, falling], {"a": -3.0, "b": -2.0}, settings)
    assert result.table()["passes"].to_list() == [False, True]
    summary = [
        line
        for line in report_markdown(result).splitlines()
        if line.endswith(("| no |", "| yes |"))
    ]
    assert summary[0].startswith("| a |") and summary[0].endswith("| no |")
    assert "n/a" in summary[0]
    assert summary[1].startswith("| b |") and summary[1].endswith("| yes |")
