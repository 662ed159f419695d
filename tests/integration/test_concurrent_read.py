"""Reading while collecting: a job in another process commits batch after batch while this
process opens the store and counts after every commit; every read succeeds and the counts only
grow. The two take turns through a handshake on two pipes (the job's `after_batch` callback runs
after each commit: it says "committed i" and waits for "read i"), so what the reader sees does not
depend on timing, and a silent partner fails the test after a timeout instead of hanging it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_collect_job import CODE, PROSE, build_tiny_olmoe, make_tokenizer

from routescope.queries import get_query, run_query
from routescope.store.dataset import connect_store

#: seconds either side waits for the other's next message (the first includes loading the model)
FIRST_TIMEOUT, TURN_TIMEOUT = 180.0, 60.0

WRITER = """
import json, os, select, sys, time
import torch
torch.set_num_threads(1)
from routescope.collect.jobs import job_from_options
from routescope.collect.runner import run_job
model, prompts, db = sys.argv[1:4]
to_reader, from_reader, timeout = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

def handshake(i):
    # called by run_job after engine batch i; with flush_rows=1 it is already committed
    os.write(to_reader, f"committed {i}\\n".encode())
    answer, deadline = b"", time.monotonic() + timeout
    while not answer.endswith(b"\\n"):
        ready, _, _ = select.select([from_reader], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(from_reader, 64) if ready else b""
        if not chunk:
            sys.exit(f"no 'read {i}' from the reader within {timeout:.0f} s")
        answer += chunk
    if answer.decode().strip() != f"read {i}":
        sys.exit(f"expected 'read {i}' from the reader, got {answer!r}")

job = job_from_options([prompts], model=model, db=db, batch_size=2, max_new_tokens=1)
# flush_rows=1: every engine batch is its own commit (a long job's groups, made small)
res = run_job(job, quiet=True, flush_rows=1, after_batch=handshake)
print(json.dumps({"run_id": res.run_id, "rows": res.route_rows, "status": res.status}))
"""


def read_line(fd: int, timeout: float) -> str | None:
    """One line from the pipe, None at end of file (the writer exited); fails after timeout."""
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"the writer said nothing for {timeout:.0f} s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            assert not data, f"the writer stopped mid-message: {data!r}"
            return None
        data += chunk
    return data.decode().strip()


def read_counts(db: Path) -> tuple[int, int, int]:
    """(route rows, route_rows of the named `runs` query, sequences) as stored right now."""
    con = connect_store(db, lock_timeout=30)  # retries if the writer still held the lock
    try:
        n = con.execute("SELECT count(*) FROM routes").fetchall()[0][0]
        n_seq = con.execute("SELECT count(*) FROM sequences").fetchall()[0][0]
        table = run_query(con, get_query("runs"))
    finally:
        con.close()
    rows = table.column("route_rows").to_pylist() if table.num_rows else [0]
    return int(n), int(rows[0] or 0), int(n_seq)


def test_reader_sees_monotone_counts_while_a_job_writes(tmp_path):
    model = tmp_path / "model"
    build_tiny_olmoe(seed=5).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    lines = [t for _ in range(3) for t in PROSE + CODE]  # 33 prompts → 17 commits
    prompts.write_text("\n".join(lines) + "\n")
    n_batches = (len(lines) + 1) // 2
    db = tmp_path / "live.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    from_writer, writer_out = os.pipe()  # writer → reader: "committed i"
    writer_in, to_writer = os.pipe()  # reader → writer: "read i"
    out, err = tmp_path / "writer.out", tmp_path / "writer.err"
    with out.open("w") as out_f, err.open("w") as err_f:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(model), str(prompts), str(db)]
            + [str(writer_out), str(writer_in), str(TURN_TIMEOUT)],
            stdout=out_f,
            stderr=err_f,  # files, not pipes: nothing the writer prints can block it
            env=env,
            pass_fds=(writer_out, writer_in),
        )
    os.close(writer_out)  # only the writer holds these now: its exit is end-of-file here
    os.close(writer_in)
    turns: list[int] = []
    counts: list[int] = []
    query_counts: list[int] = []
    seqs: list[int] = []
    try:
        timeout = FIRST_TIMEOUT
        while (line := read_line(from_writer, timeout)) is not None:
            i = len(turns)
            assert line == f"committed {i}", line
            n, q, n_seq = read_counts(db)  # the store right after commit i, writer waiting
            counts.append(n)
            query_counts.append(q)
            seqs.append(n_seq)
            turns.append(i)
            os.write(to_writer, f"read {i}\n".encode())
            timeout = TURN_TIMEOUT
        writer.wait(timeout=TURN_TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=30)
        os.close(from_writer)
        os.close(to_writer)
    assert writer.returncode == 0, err.read_text()[-2000:]
    result = json.loads(out.read_text().strip().splitlines()[-1])
    assert result["status"] == "complete"
    final = read_counts(db)  # after the job: its status is set, nothing else changes
    counts.append(final[0])
    query_counts.append(final[1])
    # one turn per engine batch, each after its commit: whole batches of 2 sequences are visible
    assert turns == list(range(n_batches))
    assert seqs == [min(2 * (i + 1), len(lines)) for i in range(n_batches)]
    assert final[2] == len(lines)
    # the reader never failed, saw the counts only grow, and ended at the job's final count
    assert counts == sorted(counts) and query_counts == sorted(query_counts)
    assert counts[:-1] == query_counts[:-1] and len(set(counts[:-1])) == n_batches  # strictly up
    assert counts[-1] == counts[-2] == result["rows"] == query_counts[-1] > 0
    # it really read during the job: several distinct intermediate states were seen
    assert len(set(counts)) >= 3, counts


def test_a_second_collection_into_the_same_store_is_refused_while_readers_are_not(tmp_path):
    """The collection lock: a second writer job stops with one line; readers still get in."""
    from routescope.core.errors import StoreError
    from routescope.store.writer import IntermittentStore

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
