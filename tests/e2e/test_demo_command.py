"""`routescope demo` end to end on the shipped model: collect through the store, then summarise."""

import duckdb
import pytest
from typer.testing import CliRunner

from routescope.cli._app import app
from routescope.models.demo import DEMO_DOMAINS, DEMO_PROMPTS_DIR


def _heldout_count(path) -> int:
    import json

    return sum(json.loads(line).get("split") == "heldout" for line in open(path, encoding="utf-8"))


@pytest.mark.e2e
def test_demo_command_collects_and_summarises(demo_heldout_db):
    db, output = demo_heldout_db
    assert "most domain-specific expert per layer" in output
    assert "routescope app --db" in output
    con = duckdb.connect(str(db), read_only=True)
    runs = dict(con.execute("select run_id, status from runs").fetchall())
    assert runs == {"demo-domains-heldout": "complete", "demo-behaviours-heldout": "complete"}
    want = {d: _heldout_count(DEMO_PROMPTS_DIR / f"{d}.jsonl") for d in DEMO_DOMAINS}
    got = dict(
        con.execute(
            "select label, count(*) from sequences where run_id = 'demo-domains-heldout' group by 1"
        ).fetchall()
    )
    assert got == want and min(want.values()) > 0
    # one route row per recorded token per MoE layer; decode tokens recorded for the behaviour run
    (tokens,) = con.execute("select count(*) from tokens").fetchone()
    (routes,) = con.execute("select count(*) from routes").fetchone()
    assert routes == tokens * 6
    (decode,) = con.execute(
        "select count(*) from tokens where run_id = 'demo-behaviours-heldout' and phase = 'decode'"
    ).fetchone()
    assert decode > 0
    model_ids = {r[0] for r in con.execute("select distinct model_id from runs").fetchall()}
    assert model_ids == {"routescope/demo"}
    con.close()
    # resumable: a second call finds everything stored and changes nothing
    res2 = CliRunner().invoke(app, ["demo", "--db", str(db), "--split", "heldout", "--quiet"])
    assert res2.exit_code == 0, (res2.output, repr(res2.exception))
    con2 = duckdb.connect(str(db), read_only=True)
    assert con2.execute("select count(*) from routes").fetchone()[0] == routes
