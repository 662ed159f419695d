"""Reading while collecting: a job in another process commits batch after batch while this
process keeps opening the store and counting; every read succeeds and the counts only grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_collect_job import CODE, PROSE, build_tiny_olmoe, make_tokenizer

from routescope.queries import get_query, run_query
from routescope.store.dataset import connect_store

WRITER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from routescope.collect.jobs import job_from_options
from routescope.collect.runner import run_job
model, prompts, db = sys.argv[1], sys.argv[2], sys.argv[3]
job = job_from_options([prompts], model=model, db=db, batch_size=2, max_new_tokens=1)
# flush_rows=1: every engine batch is its own commit (a long job's groups, made small)
res = run_job(job, quiet=True, flush_rows=1, after_batch=lambda i: time.sleep(0.05))
print(json.dumps({"run_id": res.run_id, "rows": res.route_rows, "status": res.status}))
"""


def test_reader_sees_monotone_counts_while_a_job_writes(tmp_path):
    model = tmp_path / "model"
    build_tiny_olmoe(seed=5).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    lines = [t for _ in range(3) for t in PROSE + CODE]  # 33 prompts → 17 commits
    prompts.write_text("\n".join(lines) + "\n")
    db = tmp_path / "live.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(model), str(prompts), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    runs_query = get_query("runs")
    counts: list[int] = []
    query_counts: list[int] = []
    try:
        while True:
            done = writer.poll() is not None
            if db.exists():
                con = connect_store(db, lock_timeout=30)  # retries while a commit holds the lock
                try:
                    n = con.execute("SELECT count(*) FROM routes").fetchall()[0][0]
                    table = run_query(con, runs_query)
                finally:
                    con.close()
                counts.append(int(n))
                rows = table.column("route_rows").to_pylist() if table.num_rows else [0]
                query_counts.append(int(rows[0] or 0))
            if done:
                break
            time.sleep(0.02)
    finally:
        if writer.poll() is None:
            writer.kill()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "complete"
    # the reader never failed, saw the counts only grow, and ended at the job's final count
    assert counts == sorted(counts) and query_counts == sorted(query_counts)
    assert counts[-1] == result["rows"] == query_counts[-1] > 0
    # it really read during the job: several distinct intermediate states were seen
    assert len(set(counts)) >= 3, counts
    con = connect_store(Path(db))
    try:
        n_seq = con.execute("SELECT count(*) FROM sequences").fetchall()[0][0]
    finally:
        con.close()
    assert n_seq == len(lines)


def test_a_second_collection_into_the_same_store_is_refused_while_readers_are_not(tmp_path):
    """The collection lock: a second writer job stops with one line; readers still get in."""
    from routescope.core.errors import StoreError
    from routescope.store.store import IntermittentStore

    db = tmp_path / "one.duckdb"
    first = IntermittentStore(db)
    first.set_meta("k", 1)  # created the file, and the DuckDB lock is released again
    with pytest.raises(StoreError, match=rf"another collection \(process {os.getpid()}\)") as exc:
        IntermittentStore(db)
    assert "\n" not in str(exc.value)
    con = connect_store(db, lock_timeout=0)  # no retry needed: nothing holds DuckDB's lock
    try:
        assert con.execute("SELECT value FROM meta WHERE key = 'k'").fetchall() == [("1",)]
    finally:
        con.close()
    first.close()
    with IntermittentStore(db) as second:  # free again once the first job is done
        second.set_meta("k", 2)
    assert not Path(str(db) + ".collect-lock").exists()
