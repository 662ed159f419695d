"""The cache-policy table (routescope.analysis.policies): lookups, defaults, services, and the
invariants every registered policy must keep, so a new policy is tested by registering it."""

from __future__ import annotations

import inspect
import re
import textwrap
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from routescope.analysis import cache, policies
from routescope.analysis.cache import cache_hit_rates
from routescope.analysis.policies import (
    CachePolicy,
    Requests,
    default_policies,
    get_policy,
    policies_for_service,
    register_policy,
    registered,
    valid_names,
)
from routescope.core.errors import InvalidParameterError
from routescope.core.registry import Registry
from routescope.core.trace import Trace

APP_PAGE = Path(__file__).resolve().parents[2] / "app" / "views" / "4_locality.py"


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Registry[CachePolicy]:
    """A copy of the table that the test may add to (the real one is restored afterwards)."""
    table = policies._REGISTRY.copy()
    monkeypatch.setattr(policies, "_REGISTRY", table)
    return table


# ---- the table ----------------------------------------------------------------------------------
def test_builtin_table():
    names = [p.name for p in registered()]
    assert names == ["lru", "lfu", "fifo", "static", "lookahead-<L>", "belady", "belady-bypass"]
    assert default_policies() == cache.DEFAULT_POLICIES
    assert cache.DEFAULT_POLICIES == (
        "lru",
        "lfu",
        "fifo",
        "static",
        "lookahead-16",
        "belady",
        "belady-bypass",
    )
    for p in registered():
        assert p.description and "\n" not in p.description
        assert p.kernel in policies.KERNELS and p.admission in policies.ADMISSIONS
    assert get_policy("belady-bypass")[0].admission == "bypass"
    assert get_policy("static")[0].admission == "none"


@pytest.mark.parametrize(
    "name, policy, param",
    [
        ("lru", "lru", 0),
        (" LRU ", "lru", 0),
        ("lookahead-16", "lookahead-<L>", 16),
        ("lookahead-1", "lookahead-<L>", 1),
        ("belady", "belady", 0),
        ("belady-bypass", "belady-bypass", 0),
    ],
)
def test_lookup(name, policy, param):
    got, value = get_policy(name)
    assert (got.name, value) == (policy, param)
    assert cache.parse_policy(name) == (got, value)


@pytest.mark.parametrize("name", ["mru", "lookahead-0", "lookahead-", "lookahead-x", "belady-"])
def test_unknown_names_list_every_valid_one(name):
    with pytest.raises(InvalidParameterError) as err:
        get_policy(name)
    msg = str(err.value)
    assert "\n" not in msg and f"unknown cache policy {name!r}" in msg
    for p in registered():
        assert p.name in msg
    assert "lookahead-<L> (L >= 1)" in msg


def test_services_come_from_the_table():
    sim = [p.name for p in policies_for_service("simultaneous")]
    assert "belady-bypass" not in sim and "belady" in sim
    assert [p.name for p in policies_for_service("stream")] == [p.name for p in registered()]
    with pytest.raises(InvalidParameterError, match="unknown service 'batch'"):
        policies_for_service("batch")
    tr = Trace.from_sequences([np.array([[0], [1], [0]])], 3)
    with pytest.raises(InvalidParameterError) as err:
        cache_hit_rates(tr, ["lru", "belady-bypass"], service="simultaneous")
    assert str(err.value) == (
        "belady-bypass is defined for stream and token service only; drop it for simultaneous"
    )


def test_cli_default_and_help_come_from_the_table():
    from routescope.cli.analyze.cache import cache_cmd

    option = inspect.signature(cache_cmd).parameters["policies"].default
    assert option.default == ",".join(default_policies())
    assert valid_names() in option.help


def test_locality_page_reads_services_and_rules_from_the_table():
    text = APP_PAGE.read_text()
    assert "belady-bypass" not in text  # the service rule comes from the table
    assert '"simultaneous"]' not in text  # so does the service list
    assert "cache_policies.SERVICES" in text and "summary.locality_cache(" in text


def test_page_policies_follow_each_policys_service_rule():
    from routescope.analysis.summary import cache_policies_shown

    for service in policies.SERVICES:
        shown = cache_policies_shown(None, service)
        allowed = [
            p for p in policies.default_policies() if policies.get_policy(p)[0].allows(service)
        ]
        assert shown == (allowed if "belady" in allowed else [*allowed, "belady"])
    assert "belady-bypass" not in cache_policies_shown(["belady-bypass", "lru"], "simultaneous")
    assert cache_policies_shown(["lru"], "stream") == ["lru", "belady"]


def test_duplicates_and_clashes_are_refused(scratch_registry):
    fn = policies.registered()[0].simulate
    with pytest.raises(ValueError, match="already registered"):
        register_policy("lru", kernel="stack", description="again")(fn)
    with pytest.raises(ValueError, match="clashes"):
        register_policy("lookahead-3", kernel="stack", description="a lookahead")(fn)
    with pytest.raises(ValueError, match="kernel"):
        register_policy("odd", kernel="magic", description="?")(fn)
    with pytest.raises(ValueError, match="services"):
        register_policy("odd", kernel="stack", description="?", services=("batch",))(fn)


# ---- registering a new policy ---------------------------------------------------------------------
def _docstring_example() -> str:
    """The copy-paste example of the module docstring (the indented block after '::')."""
    doc = policies.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_docstring_example_registers_a_working_policy(scratch_registry):
    exec(compile(_docstring_example(), "policies-example", "exec"), {})
    assert "lru-stack" in scratch_registry
    assert "lru-stack" not in default_policies()
    assert "lru-stack" in valid_names()
    rng = np.random.default_rng(0)
    tr = Trace.from_sequences([rng.integers(0, 5, (12, 2, 1)) for _ in range(3)], 5)
    for service in ("stream", "token", "simultaneous"):
        df = cache_hit_rates(tr, ["lru", "lru-stack"], service=service, start="warm")
        a = df.filter(pl.col("policy") == "lru").drop("policy")
        b = df.filter(pl.col("policy") == "lru-stack").drop("policy")
        assert_frame_equal(a, b)
    assert "lru-stack" in [p.name for p in policies_for_service("simultaneous")]


def test_a_registered_pattern_reaches_the_cli(scratch_registry, tmp_path):
    """A policy registered with a name pattern is parsed, simulated and offered by the CLI."""

    @register_policy(
        "lookahead-twice-<W>",
        kernel="stack",
        description="lookahead over twice W tokens",
        services=("stream", "token"),
        default=False,
        example=2,
    )
    def twice(req: Requests, slots: np.ndarray, param: int) -> np.ndarray:
        return policies.stack_hits(policies.K.LOOKAHEAD, req, slots, 2 * param)

    assert get_policy("lookahead-twice-3")[1] == 3
    assert get_policy("lookahead-3")[0].name == "lookahead-<L>"  # the older pattern still matches
    assert "lookahead-twice-<W> (W >= 1)" in valid_names()
    assert "lookahead-twice-<W>" not in [p.name for p in policies_for_service("simultaneous")]
    rng = np.random.default_rng(1)
    tr = Trace.from_sequences([rng.integers(0, 6, (15, 1, 2)) for _ in range(2)], 6)
    df = cache_hit_rates(tr, ["lookahead-6", "lookahead-twice-3"], phase="all")
    hits = {p: g["hits"].to_list() for (p,), g in df.group_by(["policy"])}
    assert hits["lookahead-6"] == hits["lookahead-twice-3"]
    with pytest.raises(InvalidParameterError, match="drop it for simultaneous"):
        cache_hit_rates(tr, ["lookahead-twice-3"], service="simultaneous")

    from test_locality_streaming import RUN, write_run

    from routescope.cli import app

    db = str(tmp_path / "s.duckdb")
    write_run(db)
    res = CliRunner().invoke(
        app,
        ["analyze", "cache", RUN, "--db", db, "--policies", "lru,lookahead-twice-2", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert '"policy": "lookahead-twice-2"' in res.output


# ---- invariants every registered policy keeps ------------------------------------------------------
@st.composite
def traces(draw: st.DrawFn) -> Trace:
    e = draw(st.integers(2, 6))
    k = draw(st.integers(1, min(3, e)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    hot = draw(st.integers(k, e))
    seqs = [
        np.array([[rng.choice(hot, k, replace=False) for _ in range(2)] for _ in range(n)])
        for n in draw(st.lists(st.integers(1, 10), min_size=1, max_size=3))
    ]
    return Trace.from_sequences(seqs, num_experts=e)


def _concrete(policy: CachePolicy) -> str:
    return policy.default_name if not policy.is_pattern else f"{policy.prefix}3"


PROP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("policy", registered(), ids=lambda p: p.name)
@PROP
@given(tr=traces(), start=st.sampled_from(["cold", "warm"]), max_rows=st.integers(1, 30))
def test_every_registered_policy_keeps_the_invariants(policy, tr, start, max_rows):
    name = _concrete(policy)
    for service in policy.services:
        fn = partial(cache_hit_rates, phase="all", service=service, start=start)
        df = fn(tr, [name, "belady"])
        assert_frame_equal(fn(tr, [name, "belady"], max_rows=max_rows), df, check_exact=True)
        df = df.drop_nulls("hit_rate")
        assert ((df["hits"] >= 0) & (df["hits"] <= df["requests"])).all()
        mine = df.filter(pl.col("policy") == name).sort("layer", "capacity", nulls_last=True)
        bound = df.filter(pl.col("policy") == "belady").sort("layer", "capacity", nulls_last=True)
        if policy.kernel == "stack":  # inclusion: never fewer hits with more room
            for _, grp in mine.group_by(["layer"]):
                assert (np.diff(grp["hits"].to_numpy()) >= 0).all()
        if service != "token" and policy.admission == "demand":  # Belady is the bound
            assert (bound["hits"].to_numpy() >= mine["hits"].to_numpy()).all()
        if service == "stream" and policy.admission == "bypass":
            assert (mine["hits"].to_numpy() >= bound["hits"].to_numpy()).all()
        if start == "warm" or not policy.warm_fill:  # a full cache that starts full hits all
            full = mine.filter(pl.col("capacity") == tr.num_experts)
            assert full["hit_rate"].to_list() == pytest.approx([1.0] * full.height)
    for service in set(policies.SERVICES) - set(policy.services):
        with pytest.raises(InvalidParameterError, match=f"drop it for {service}"):
            cache_hit_rates(tr, [name], service=service)


def test_builtin_descriptions_name_no_other_module():
    """The table is the one place a policy is described: the CLI help text is built from it."""
    from routescope.cli.analyze import cache as cli_cache

    text = Path(cli_cache.__file__).read_text()
    assert not re.search(r"lookahead-<L>|belady-bypass", text)
