"""Every named query in queries/, on a hand-made store, against answers computed here in Python.

The fixture store is built directly with DuckDB from the schema DDL (no RoutingStore), then exported
to hive-partitioned Parquet in the `routescope export` layout; each query runs on both forms.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from routescope.queries import (
    QueryError,
    WriteRefusedError,
    get_query,
    list_queries,
    parse_params,
    parse_value,
    query_from_sql,
    resolve_query,
    run_query,
)
from routescope.store.dataset import connect_store
from routescope.store.schema import DDL

# ---- the fixture data, kept as plain Python rows ---------------------------------------------

E, K = 6, 2
LAYERS = (2, 11)  # not 0..L-1, and two digits, so the grid's column names must be padded
P_EXPERT = [0.35, 0.25, 0.2, 0.12, 0.08, 0.0]  # expert 5 is never chosen in the base run


def _make_data() -> dict[str, list[dict]]:
    rng = np.random.default_rng(7)
    runs, seqs, toks, routes, probs = [], [], [], [], []

    def add_run(run_id, model_id, e, k, layers, steering, day):
        runs.append(
            dict(
                run_id=run_id,
                name=f"{run_id} run",
                model_id=model_id,
                family="olmoe",
                num_layers=max(layers) + 1,
                moe_layers=list(layers),
                num_experts=e,
                top_k=k,
                steering_id=steering,
                status="done",
                created_at=dt.datetime(2026, 1, day, 12, 0),
            )
        )

    add_run("base", "toy/moe", E, K, LAYERS, None, 1)
    add_run("steer", "toy/moe", E, K, LAYERS, "no-e0", 2)
    add_run("probe", "toy/other", 4, 1, (0,), None, 3)

    seq_spec = [(10, "en", 6, 2), (11, "en", 5, 1), (12, "de", 7, 0), (13, None, 4, 0)]
    for seq_id, label, length, n_decode in seq_spec:
        for run_id in ("base", "steer"):
            seqs.append(
                dict(
                    run_id=run_id,
                    seq_id=seq_id,
                    prompt_set="toy",
                    prompt_id=str(seq_id),
                    label=label,
                    text=f"text {seq_id}",
                    num_tokens=length,
                )
            )
        tids = rng.integers(0, 5, size=length)
        for pos in range(length):
            tok = dict(
                seq_id=seq_id,
                pos=pos,
                token_id=int(tids[pos]),
                token=f"tok{tids[pos]}",
                phase="decode" if pos >= length - n_decode else "prefill",
                in_target=seq_id in (10, 12) and pos in (2, 3),
            )
            for run_id in ("base", "steer"):
                toks.append(dict(run_id=run_id, **tok))
            for layer in LAYERS:
                ex = [int(x) for x in rng.choice(E, K, replace=False, p=P_EXPERT)]
                w = sorted(rng.random(K).tolist(), reverse=True)
                routes.append(
                    dict(run_id="base", seq_id=seq_id, pos=pos, layer=layer, experts=ex, weights=w)
                )
                # the steered twin: expert 0 deactivated, rerouted to the best unused expert
                st = [next(x for x in (4, 5, 3) if x not in ex) if x == 0 else x for x in ex]
                routes.append(
                    dict(run_id="steer", seq_id=seq_id, pos=pos, layer=layer, experts=st, weights=w)
                )
                p = rng.dirichlet(np.full(E, 0.5)).astype(np.float32)
                p[rng.integers(0, E)] = 0.0  # a zero probability: 0·ln 0 must count as 0
                probs.append(
                    dict(
                        run_id="base",
                        seq_id=seq_id,
                        pos=pos,
                        layer=layer,
                        probs=[float(x) for x in p],
                    )
                )
    # the newest run: another model, top-1 routing over 4 experts, one sequence
    seqs.append(
        dict(
            run_id="probe",
            seq_id=0,
            prompt_set="toy",
            prompt_id="0",
            label="x",
            text="probe",
            num_tokens=3,
        )
    )
    for pos in range(3):
        toks.append(
            dict(
                run_id="probe",
                seq_id=0,
                pos=pos,
                token_id=pos,
                token=f"p{pos}",
                phase="prefill",
                in_target=False,
            )
        )
        routes.append(
            dict(run_id="probe", seq_id=0, pos=pos, layer=0, experts=[pos % 2], weights=[1.0])
        )
        probs.append(
            dict(run_id="probe", seq_id=0, pos=pos, layer=0, probs=[0.25, 0.25, 0.25, 0.25])
        )
    return dict(runs=runs, sequences=seqs, tokens=toks, routes=routes, router_probs=probs)


DATA = _make_data()


def _build_db(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute(DDL)
    for table, rows in DATA.items():
        arrow = pa.Table.from_pylist(rows)  # noqa: F841  (scanned by name below)
        cols = ", ".join(arrow.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM arrow")
    con.close()


def _export(db: Path, out: Path) -> None:
    """The export layout: routes/router_probs by run_id and layer, the rest by run_id."""
    out.mkdir()
    con = duckdb.connect(str(db), read_only=True)
    for table in DATA:
        parts = "run_id, layer" if table in ("routes", "router_probs") else "run_id"
        con.execute(f"COPY {table} TO '{out / table}' (FORMAT parquet, PARTITION_BY ({parts}))")
    con.close()


@pytest.fixture(scope="module")
def store_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("store")
    db = root / "store.duckdb"
    _build_db(db)
    _export(db, root / "parquet")
    return {"file": db, "parquet": root / "parquet"}


@pytest.fixture(scope="module", params=["file", "parquet"])
def con(request, store_paths):
    c = connect_store(store_paths[request.param])
    yield c
    c.close()


def run(con, name: str, **params) -> list[dict]:
    return run_query(con, get_query(name), params).to_pylist()


def assert_rows(got: list[dict], expected: list[dict]) -> None:
    """Same rows in the same order; floats equal to 1e-9 relative."""
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e), (g, e)
        for key in e:
            gv, ev = g[key], e[key]
            if isinstance(ev, float) and gv is not None:
                assert math.isclose(gv, ev, rel_tol=1e-9, abs_tol=1e-12), (key, g, e)
            else:
                assert gv == ev, (key, g, e)


# ---- plain references ------------------------------------------------------------------------


def _run_info(run_id):
    return next(r for r in DATA["runs"] if r["run_id"] == run_id)


def _routes(run_id):
    return [r for r in DATA["routes"] if r["run_id"] == run_id]


def _tok(run_id):
    return {(t["seq_id"], t["pos"]): t for t in DATA["tokens"] if t["run_id"] == run_id}


def ref_expert_load(run_id, phase=None):
    e = _run_info(run_id)["num_experts"]
    tok = _tok(run_id)
    rows = [
        r for r in _routes(run_id) if phase is None or tok[r["seq_id"], r["pos"]]["phase"] == phase
    ]
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        lr = [r for r in rows if r["layer"] == layer]
        total = sum(len(r["experts"]) for r in lr)
        cnt = Counter(x for r in lr for x in r["experts"])
        for x in range(e):
            out.append(
                dict(
                    layer=layer,
                    expert=x,
                    assignments=cnt[x],
                    share=cnt[x] / total,
                    token_share=cnt[x] / len(lr),
                    load_ratio=cnt[x] / total * e,
                )
            )
    return out


def ref_rare(run_id, max_ratio=0.1):
    rows = [
        dict(
            layer=r["layer"],
            expert=r["expert"],
            assignments=r["assignments"],
            load_ratio=r["load_ratio"],
            never_used=r["assignments"] == 0,
        )
        for r in ref_expert_load(run_id)
        if r["load_ratio"] <= max_ratio + 1e-12
    ]
    return sorted(rows, key=lambda r: (r["layer"], r["assignments"], r["expert"]))


def ref_top_tokens(run_id, layer=None, expert=None, top_n=10, min_count=1):
    tok = _tok(run_id)
    occ = Counter(t["token_id"] for t in tok.values())
    names = {t["token_id"]: t["token"] for t in tok.values()}
    n = Counter()
    for r in _routes(run_id):
        if layer is not None and r["layer"] != layer:
            continue
        for x in r["experts"]:
            if expert is None or x == expert:
                n[r["layer"], x, tok[r["seq_id"], r["pos"]]["token_id"]] += 1
    totals = Counter()
    for (lay, x, _), c in n.items():
        totals[lay, x] += c
    out = []
    for lay, x in sorted(totals):
        cands = [
            (c, tid)
            for (la, ex, tid), c in n.items()
            if (la, ex) == (lay, x) and occ[tid] >= min_count
        ]
        cands.sort(key=lambda ct: (-ct[0], ct[1]))
        for rank, (c, tid) in enumerate(cands[:top_n], start=1):
            out.append(
                dict(
                    layer=lay,
                    expert=x,
                    rank=rank,
                    token_id=tid,
                    token=names[tid],
                    n=c,
                    expert_share=c / totals[lay, x],
                    token_share=c / occ[tid],
                )
            )
    return out


def ref_label_expert(run_id, layer=None):
    info = _run_info(run_id)
    labels = {
        (s["seq_id"]): s["label"] or "(none)" for s in DATA["sequences"] if s["run_id"] == run_id
    }
    tokens, hits = Counter(), Counter()
    for r in _routes(run_id):
        if layer is not None and r["layer"] != layer:
            continue
        lab = labels[r["seq_id"]]
        tokens[r["layer"], lab] += 1
        for x in r["experts"]:
            hits[r["layer"], lab, x] += 1
    uniform = info["top_k"] / info["num_experts"]
    return [
        dict(
            layer=lay,
            label=lab,
            expert=x,
            tokens=tokens[lay, lab],
            n=hits[lay, lab, x],
            share=hits[lay, lab, x] / tokens[lay, lab],
            uniform=uniform,
            ratio=hits[lay, lab, x] / tokens[lay, lab] / uniform,
        )
        for lay, lab in sorted(tokens)
        for x in range(info["num_experts"])
    ]


def ref_coactivation(run_id, layer=None, min_count=1):
    pair, single, ntok = Counter(), Counter(), Counter()
    for r in _routes(run_id):
        if layer is not None and r["layer"] != layer:
            continue
        ntok[r["layer"]] += 1
        for x in r["experts"]:
            single[r["layer"], x] += 1
        for a, b in combinations(sorted(r["experts"]), 2):
            pair[r["layer"], a, b] += 1
    out = [
        dict(
            layer=lay,
            expert_a=a,
            expert_b=b,
            n=c,
            n_a=single[lay, a],
            n_b=single[lay, b],
            p_b_given_a=c / single[lay, a],
            p_a_given_b=c / single[lay, b],
            lift=c * ntok[lay] / (single[lay, a] * single[lay, b]),
        )
        for (lay, a, b), c in pair.items()
        if c >= min_count
    ]
    return sorted(out, key=lambda r: (r["layer"], -r["n"], r["expert_a"], r["expert_b"]))


def ref_repetition(run_id):
    info = _run_info(run_id)
    e, k = info["num_experts"], info["top_k"]
    by = defaultdict(dict)
    for r in _routes(run_id):
        by[r["layer"], r["seq_id"]][r["pos"]] = r["experts"]
    same, share, pairs = Counter(), Counter(), Counter()
    for (lay, _), seq in by.items():
        for pos in sorted(seq):
            if pos - 1 in seq:
                prev, cur = seq[pos - 1], seq[pos]
                pairs[lay] += 1
                same[lay] += prev[0] == cur[0]
                share[lay] += bool(set(prev[:2]) & set(cur[:2]))
    chance2 = 1 - math.comb(e - 2, 2) / math.comb(e, 2)
    return [
        dict(
            layer=lay,
            pairs=pairs[lay],
            top1_repeat=same[lay] / pairs[lay],
            top1_chance=1 / e,
            top2_share=share[lay] / pairs[lay] if k >= 2 else None,
            top2_chance=chance2 if k >= 2 else None,
        )
        for lay in sorted(pairs)
    ]


def ref_grid(run_id, seq_id):
    tok = _tok(run_id)
    cells = {(r["pos"], r["layer"]): r["experts"] for r in _routes(run_id) if r["seq_id"] == seq_id}
    layers = sorted({lay for _, lay in cells})
    width = len(str(max(layers)))
    out = []
    for pos in sorted({p for p, _ in cells}):
        t = tok[seq_id, pos]
        row = dict(pos=pos, token_id=t["token_id"], token=t["token"], phase=t["phase"])
        for lay in layers:
            row["L" + str(lay).zfill(width)] = cells.get((pos, lay))
        out.append(row)
    return out


def ref_steering_diff(run_id, base_id):
    k, e = _run_info(run_id)["top_k"], _run_info(run_id)["num_experts"]
    base = {(r["seq_id"], r["pos"], r["layer"]): r["experts"] for r in _routes(base_id)}
    ta, tb = _tok(run_id), _tok(base_id)
    mism = sum(1 for key in ta if key in tb and ta[key]["token_id"] != tb[key]["token_id"])
    acc = defaultdict(list)
    for r in _routes(run_id):
        b = base.get((r["seq_id"], r["pos"], r["layer"]))
        if b is not None:
            acc[r["layer"]].append((r["experts"], b))
    return [
        dict(
            layer=lay,
            tokens=len(v),
            changed_sets=sum(sorted(a) != sorted(b) for a, b in v) / len(v),
            changed_top1=sum(a[0] != b[0] for a, b in v) / len(v),
            mean_overlap=sum(len(set(a) & set(b)) / k for a, b in v) / len(v),
            chance_overlap=k / e,
            token_mismatches=mism,
        )
        for lay, v in sorted(acc.items())
    ]


def ref_entropy(run_id, phase=None):
    tok = _tok(run_id)
    acc = defaultdict(list)
    for r in DATA["router_probs"]:
        if r["run_id"] != run_id:
            continue
        if phase is not None and tok[r["seq_id"], r["pos"]]["phase"] != phase:
            continue
        p = np.asarray(r["probs"], dtype=np.float32).astype(np.float64)
        h = float(-sum(x * math.log(x) for x in p if x > 0))
        acc[r["layer"]].append((h, float(p.max()), len(p)))
    out = []
    for lay, v in sorted(acc.items()):
        hs = [h for h, _, _ in v]
        out.append(
            dict(
                layer=lay,
                tokens=len(v),
                mean_entropy=float(np.mean(hs)),
                normalized_entropy=float(np.mean(hs)) / math.log(v[0][2]),
                min_entropy=min(hs),
                max_entropy=max(hs),
                mean_max_prob=float(np.mean([m for _, m, _ in v])),
            )
        )
    return out


def ref_target_vs_rest(run_id, top_n=20):
    tok = _tok(run_id)
    e = _run_info(run_id)["num_experts"]
    n_t, n_c, a_t, a_c = Counter(), Counter(), Counter(), Counter()
    for r in _routes(run_id):
        tgt = tok[r["seq_id"], r["pos"]]["in_target"]
        (n_t if tgt else n_c)[r["layer"]] += 1
        for x in r["experts"]:
            (a_t if tgt else a_c)[r["layer"], x] += 1
    rows = []
    for lay in sorted(set(n_t) | set(n_c)):
        for x in range(e):
            pt = a_t[lay, x] / n_t[lay] if n_t[lay] else None
            pc = a_c[lay, x] / n_c[lay] if n_c[lay] else None
            rd = pt - pc if pt is not None and pc is not None else None
            rows.append(
                dict(
                    layer=lay,
                    expert=x,
                    n_target=n_t[lay],
                    n_control=n_c[lay],
                    p_target=pt,
                    p_control=pc,
                    risk_difference=rd,
                )
            )
    rows.sort(
        key=lambda r: (
            r["risk_difference"] is None,
            -(r["risk_difference"] or 0),
            r["layer"],
            r["expert"],
        )
    )
    return rows[:top_n]


def ref_runs(model_id=None):
    out = []
    for r in sorted(DATA["runs"], key=lambda r: r["created_at"], reverse=True):
        if model_id is not None and r["model_id"] != model_id:
            continue
        rid = r["run_id"]
        toks = [t for t in DATA["tokens"] if t["run_id"] == rid]
        out.append(
            dict(
                run_id=rid,
                name=r["name"],
                model_id=r["model_id"],
                family=r["family"],
                num_experts=r["num_experts"],
                top_k=r["top_k"],
                moe_layers=r["moe_layers"],
                steering_id=r["steering_id"],
                status=r["status"],
                created_at=r["created_at"],
                sequences=sum(s["run_id"] == rid for s in DATA["sequences"]),
                prefill_tokens=sum(t["phase"] == "prefill" for t in toks),
                decode_tokens=sum(t["phase"] == "decode" for t in toks),
                route_rows=len(_routes(rid)),
                prob_rows=sum(p["run_id"] == rid for p in DATA["router_probs"]),
            )
        )
    return out


# ---- the fixture must exercise what the queries are about ----------------------------------


def test_fixture_has_the_interesting_cases():
    assert any(r["assignments"] == 0 for r in ref_expert_load("base"))  # a never-used expert
    diffs = ref_steering_diff("steer", "base")
    assert all(0 < d["changed_sets"] < 1 for d in diffs)  # steering changed some, not all
    assert {t["phase"] for t in DATA["tokens"]} == {"prefill", "decode"}
    assert any(0.0 in p["probs"] for p in DATA["router_probs"])


# ---- each named query on both backends ---------------------------------------------------------


def test_expert_load(con):
    assert_rows(run(con, "expert_load", run_id="base"), ref_expert_load("base"))
    assert_rows(
        run(con, "expert_load", run_id="base", phase="decode"), ref_expert_load("base", "decode")
    )
    # no run_id: the newest run (probe)
    assert_rows(run(con, "expert_load"), ref_expert_load("probe"))


def test_rare_experts(con):
    got = run(con, "rare_experts", run_id="base", max_ratio=0.5)
    assert_rows(got, ref_rare("base", 0.5))
    assert any(r["never_used"] for r in got)
    assert_rows(run(con, "rare_experts", run_id="base"), ref_rare("base"))
    assert_rows(run(con, "rare_experts", run_id="base", max_ratio=0), ref_rare("base", 0))


def test_top_tokens(con):
    assert_rows(run(con, "top_tokens", run_id="base"), ref_top_tokens("base"))
    assert_rows(
        run(con, "top_tokens", run_id="base", layer=11, expert=1, top_n=2),
        ref_top_tokens("base", 11, 1, 2),
    )
    assert_rows(
        run(con, "top_tokens", run_id="base", min_count=6, top_n=3),
        ref_top_tokens("base", min_count=6, top_n=3),
    )


def test_label_expert(con):
    assert_rows(run(con, "label_expert", run_id="base"), ref_label_expert("base"))
    assert_rows(run(con, "label_expert", run_id="steer", layer=2), ref_label_expert("steer", 2))


def test_coactivation(con):
    assert_rows(run(con, "coactivation", run_id="base"), ref_coactivation("base"))
    assert_rows(
        run(con, "coactivation", run_id="base", layer=11, min_count=3),
        ref_coactivation("base", 11, 3),
    )


def test_repetition(con):
    assert_rows(run(con, "repetition", run_id="base"), ref_repetition("base"))
    got = run(con, "repetition")  # probe: k = 1, so the top-2 columns are NULL
    assert_rows(got, ref_repetition("probe"))
    assert got[0]["top2_share"] is None


def test_sequence_grid(con):
    got = run(con, "sequence_grid", run_id="base", seq_id=12)
    assert list(got[0]) == ["pos", "token_id", "token", "phase", "L02", "L11"]
    assert_rows(got, ref_grid("base", 12))
    assert_rows(run(con, "sequence_grid", run_id="steer"), ref_grid("steer", 10))


def test_runs(con):
    assert_rows(run(con, "runs"), ref_runs())
    assert_rows(run(con, "runs", model_id="toy/moe"), ref_runs("toy/moe"))


def test_steering_diff(con):
    expected = ref_steering_diff("steer", "base")
    assert_rows(run(con, "steering_diff"), expected)  # defaults find the steered run and its twin
    assert_rows(run(con, "steering_diff", run_id="steer", base_run_id="base"), expected)
    same = run(con, "steering_diff", run_id="base", base_run_id="base")
    assert all(r["changed_sets"] == 0 and r["mean_overlap"] == 1 for r in same)


def test_router_entropy(con):
    assert_rows(run(con, "router_entropy", run_id="base"), ref_entropy("base"))
    assert_rows(
        run(con, "router_entropy", run_id="base", phase="prefill"), ref_entropy("base", "prefill")
    )
    got = run(con, "router_entropy")  # probe: uniform over 4 → normalized entropy 1
    assert got[0]["normalized_entropy"] == pytest.approx(1.0)


def test_target_vs_rest(con):
    assert_rows(run(con, "target_vs_rest", run_id="base"), ref_target_vs_rest("base"))
    assert_rows(run(con, "target_vs_rest", run_id="base", top_n=3), ref_target_vs_rest("base", 3))


def test_every_named_query_is_tested_and_documented():
    tested = {name[5:] for name in globals() if name.startswith("test_")}
    queries = list_queries()
    assert len(queries) >= 10
    for q in queries:
        assert q.name in tested, f"named query {q.name} has no test here"
        assert q.summary, f"{q.name} has no header description"
        for p in q.params:
            assert p in q.param_docs, f"{q.name}: parameter {p} is not documented in its header"
        assert set(q.param_docs) == set(q.params), q.name


def test_named_queries_run_in_duckdb_itself(store_paths):
    """The files run unchanged on a plain DuckDB connection after SET VARIABLE (no routescope)."""
    sql = get_query("expert_load").sql
    c = duckdb.connect(str(store_paths["file"]), read_only=True)
    c.execute("SET VARIABLE run_id = 'base'")
    got = [
        dict(zip([d[0] for d in c.description], row, strict=True))
        for row in c.execute(sql).fetchall()
    ]
    c.close()
    assert_rows(got, ref_expert_load("base"))


# ---- resolution, parameters, refusal ------------------------------------------------------------


def test_parse_value_types():
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)
    assert parse_value("-3") == -3
    assert parse_value("0.5") == 0.5 and parse_value("1e-3") == 0.001
    assert parse_value("007") == "007"  # leading zeros: an id, not a number
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("'12'") == "12"
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("abc-def") == "abc-def"
    assert parse_params(["run_id=r1", "layer=3"]) == {"run_id": "r1", "layer": 3}
    with pytest.raises(QueryError, match="name=value"):
        parse_params(["layer"])
    with pytest.raises(QueryError, match="name=value"):
        parse_params(["bad name=1"])


def test_int_params_stay_ints(con):
    got = run_query(con, query_from_sql("SELECT typeof(getvariable('n')) AS t"), {"n": 5})
    assert got.to_pylist() == [{"t": "INTEGER"}]


def test_unset_params_are_reset_between_runs(con):
    q = query_from_sql("SELECT getvariable('x') AS x")
    assert run_query(con, q, {"x": "a"}).to_pylist() == [{"x": "a"}]
    assert run_query(con, q, {}).to_pylist() == [{"x": None}]


def test_unknown_param_is_an_error(con):
    with pytest.raises(QueryError, match="no parameter ru_id; its parameters: run_id"):
        run(con, "repetition", ru_id="base")


def test_resolve_query(tmp_path):
    assert resolve_query("runs").name == "runs"
    f = tmp_path / "mine.sql"
    f.write_text("-- Mine: count routes.\nSELECT count(*) AS n FROM routes\n")
    q = resolve_query(str(f))
    assert (q.name, q.summary) == ("mine", "Mine: count routes.")
    assert resolve_query("SELECT 1").name == "<inline>"
    with pytest.raises(QueryError, match="no named query 'nope'; known: .*expert_load"):
        resolve_query("nope")
    with pytest.raises(QueryError, match="does not exist"):
        resolve_query(str(tmp_path / "missing.sql"))


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t (a INT)",
        "DELETE FROM routes",
        "SELECT 1; DROP TABLE runs",
        "COPY runs TO 'x.csv'",
    ],
)
def test_writes_are_refused_without_allow_write(con, sql):
    with pytest.raises(WriteRefusedError, match="would write .* rerun with --write"):
        run_query(con, query_from_sql(sql))
    assert run(con, "runs")  # nothing happened


def test_sql_error_names_the_query(con, tmp_path):
    f = tmp_path / "broken.sql"
    f.write_text("SELECT no_such_column FROM routes")
    with pytest.raises(QueryError, match="query broken failed: .*no_such_column"):
        run_query(con, resolve_query(str(f)))


def test_run_names_resolve_and_unknown_runs_are_errors(con):
    assert_rows(run(con, "repetition", run_id="base run"), ref_repetition("base"))
    with pytest.raises(QueryError, match="no run 'nope' \\(run_id\\); newest runs: probe, steer"):
        run(con, "repetition", run_id="nope")


@pytest.mark.parametrize("kind", ["file", "parquet"])
def test_every_named_query_runs_through_the_cli_read_only(store_paths, kind, monkeypatch, capsys):
    """`routescope sql NAME --format json` on a read-only store: exit 0, the same rows as
    `run_query`, and the store's file unchanged (the read-only path, whatever the query's text)."""
    import json
    import sys

    from routescope.cli import main

    path = store_paths[kind]
    before = path.read_bytes() if path.is_file() else None
    nonempty = 0
    for q in list_queries():
        monkeypatch.setattr(
            sys, "argv", ["routescope", "sql", q.name, "--db", str(path), "-f", "json"]
        )
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        assert code == 0, (q.name, err)
        assert "would write" not in err
        c = connect_store(path)
        try:
            expected = run_query(c, q).to_pylist()
        finally:
            c.close()
        assert len(json.loads(out)) == len(expected), q.name
        nonempty += bool(expected)
    assert nonempty >= 8  # the defaults (newest run) find rows for most queries
    if before is not None:
        assert path.read_bytes() == before


def test_pivot_behind_comments_is_read_only(con):
    """A dynamic PIVOT (one MULTI statement) preceded by comments runs read-only (duckdb 2.0.1
    keeps leading comments in a statement's text, which once defeated a text check)."""
    q = query_from_sql(
        "-- a comment\n-- another\nPIVOT (SELECT layer, seq_id FROM routes) ON layer USING count(*)"
    )
    assert run_query(con, q).num_rows > 0


def test_a_read_only_query_on_a_writable_connection_changes_nothing(tmp_path):
    """Without allow_write, a writable connection runs the query in a transaction rolled back."""
    db = tmp_path / "w.duckdb"
    c = duckdb.connect(str(db))
    c.execute("CREATE TABLE t AS SELECT range % 3 AS a, range AS b FROM range(9)")
    got = run_query(c, query_from_sql("-- pivot\nPIVOT t ON a USING sum(b)")).to_pylist()
    assert got == [{"0": 9, "1": 12, "2": 15}]
    with pytest.raises(WriteRefusedError):
        run_query(c, query_from_sql("INSERT INTO t VALUES (1, 1)"))
    assert c.execute("SELECT count(*) FROM t").fetchall() == [(9,)]
    c.close()


def test_parquet_store_is_read_only_to_duckdb(store_paths):
    """The Parquet export's views sit in a read-only catalog: DuckDB itself refuses writes."""
    c = connect_store(store_paths["parquet"])
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            c.execute("CREATE TABLE x (a INT)")
    finally:
        c.close()
