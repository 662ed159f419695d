"""Every analysis, named query and export on an imported run without gate weights (a vLLM trace):
each gives a result or refuses with exactly one line (exit 2), never a traceback.

Run through the CLI, the stable surface while the analyses move to streaming reductions. The
imported run gets two labels (set in the store by the test: vLLM traces carry none) so the
label-based analyses have groups.
"""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pytest
from import_helpers import MOE_LAYERS, NUM_LAYERS, collect_original, per_sequence

from routescope.importers import import_trace
from routescope.queries import list_queries

RUN = "imp"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    orig = collect_original(root / "orig")
    trace_dir = root / "trace"
    trace_dir.mkdir()
    for i, s in enumerate(per_sequence(orig.trace)):
        rows = np.zeros((len(s["phase"]), NUM_LAYERS, 2), dtype=np.int16)
        rows[:, MOE_LAYERS] = s["experts"]
        p = int((s["phase"] == 0).sum())
        np.savez(
            trace_dir / f"req_{i:03d}.npz",
            prompt_token_ids=s["token_ids"][:p],
            output_token_ids=np.concatenate([s["token_ids"][p:], [5]]),
            routed_experts=rows,
        )
    db = str(root / "imp.duckdb")
    import_trace("vllm", [trace_dir], db=db, name=RUN, model=orig.model_dir)
    import_trace("vllm", [trace_dir], db=db, name=RUN + "2", model=orig.model_dir)
    con = duckdb.connect(db)
    con.execute("UPDATE sequences SET label = CASE WHEN seq_id < 4 THEN 'prose' ELSE 'code' END")
    con.close()
    return db


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from routescope.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


COMMANDS = {
    "consistency": ["analyze", "consistency", RUN, "--segments", "2,4", "-q"],
    "cache": ["analyze", "cache", RUN, "--capacities", "1-4", "-q"],
    "specialization": ["analyze", "specialization", RUN, "-q"],
    "vocabulary": ["analyze", "specialization", RUN, "--vocab", "-q"],
    "saturation": ["analyze", "saturation", RUN, RUN + "2", "-q"],
    "localize": [
        "localize",
        RUN,
        "--target",
        "label:code",
        "--control",
        "label:prose",
        "--n-boot",
        "20",
        "--n-perm",
        "20",
    ],
    "localize-weight": [
        "localize",
        RUN,
        "--target",
        "label:code",
        "--control",
        "label:prose",
        "--n-boot",
        "20",
        "--n-perm",
        "20",
        "--weight",
    ],
    "runs": ["runs"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_analysis_runs_or_refuses_in_one_line(imported, name):
    proc = cli(*COMMANDS[name], "--db", imported)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if name == "localize-weight":  # needs gate weights: must refuse, saying why
        assert proc.returncode == 2 and "gate weights" in proc.stderr, proc.stderr
    if name in ("consistency", "cache", "specialization", "localize", "saturation", "runs"):
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("query", [q.name for q in list_queries()])
def test_named_query_runs_or_refuses_in_one_line(imported, query):
    proc = cli("sql", query, "--db", imported, "-p", f"run_id={RUN}", "-f", "csv")
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_dashboard_page_renders_on_the_imported_run(imported, monkeypatch):
    """Each page of the dashboard's page table renders over the store holding only imported
    runs, without an exception or an error box."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app_dir = Path(__file__).resolve().parents[2] / "app"
    monkeypatch.syspath_prepend(str(app_dir))
    import pages as manifest

    monkeypatch.setenv("ROUTESCOPE_DB", imported)
    at = AppTest.from_file(str(app_dir / "main.py"), default_timeout=120)
    at.run()
    for key, script in manifest.scripts().items():
        at.switch_page(script)
        at.run()
        assert not at.exception, (key, [e.value for e in at.exception])
        assert not at.error, (key, [e.value for e in at.error])
