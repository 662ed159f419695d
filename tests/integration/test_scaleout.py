"""Scale-out collection on a tiny random OLMoE saved to disk (no hub): shards merged with
`routescope merge`, and a Ray collection, each equal row for row to a single-process run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_collect_job import CODE, PROSE, build_tiny_olmoe, make_tokenizer
from typer.testing import CliRunner

from routescope.cli import app
from routescope.collect.jobs import job_from_options
from routescope.collect.runner import CollectionInterrupted, run_job
from routescope.collect.scaleout import ScaleOutError, Shard
from routescope.core.errors import StoreError
from routescope.store.dataset import connect_store
from routescope.store.merge import MergeError, merge_stores
from routescope.store.parts import ParquetPartsStore
from routescope.store.store import RoutingStore

N_SEQ = len(PROSE) + len(CODE)
#: batch size 1: a sequence's numbers then do not depend on which others share its batch (padded
#: batches of other compositions differ in the last float bits), so stores compare exactly.
OPTS = {"batch_size": 1, "max_new_tokens": 2, "save_probs": True}

#: Each table's rows ordered by its keys; timestamps (and the run's status) left out.
TABLES = {
    "runs": "SELECT * EXCLUDE (created_at, status) FROM runs ORDER BY run_id",
    "sequences": "SELECT * FROM sequences ORDER BY run_id, seq_id",
    "tokens": "SELECT * FROM tokens ORDER BY run_id, seq_id, pos",
    "routes": "SELECT * FROM routes ORDER BY run_id, seq_id, pos, layer",
    "router_probs": "SELECT * FROM router_probs ORDER BY run_id, seq_id, pos, layer",
}


def dump(path: str) -> dict[str, list]:
    con = connect_store(path)
    try:
        return {name: con.execute(q).fetchall() for name, q in TABLES.items()}
    finally:
        con.close()


def status(path: str, run_id: str) -> str:
    con = connect_store(path)
    try:
        return con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tiny model and its tokenizer saved where any process can load them by path."""
    root = tmp_path_factory.mktemp("model")
    build_tiny_olmoe(seed=3).save_pretrained(root)
    make_tokenizer().save_pretrained(root)
    return str(root)


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory) -> list[str]:
    root: Path = tmp_path_factory.mktemp("prompts")
    prose = root / "prose.txt"
    prose.write_text("\n".join(PROSE) + "\n")
    code = root / "code.jsonl"
    code.write_text(
        "\n".join(json.dumps({"text": t, "label": "code"}) for t in CODE) + "\n", encoding="utf-8"
    )
    return [str(prose), str(code)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir, prompt_files) -> tuple[str, dict[str, list]]:
    """A single-process collection of the job: (db path, its tables)."""
    db = str(tmp_path_factory.mktemp("ref") / "ref.duckdb")
    res = run_job(job_from_options(prompt_files, model=model_dir, db=db, **OPTS), quiet=True)
    assert res.status == "complete" and res.sequences_written == N_SEQ
    return db, dump(db)


def assert_same(got: dict[str, list], want: dict[str, list]) -> None:
    for table in TABLES:
        assert len(got[table]) == len(want[table]), table
        assert got[table] == want[table], table
    assert len(want["routes"]) > 0 and len(want["router_probs"]) == len(want["routes"])


def test_shard_parse_and_default_db():
    sh = Shard.parse("1/3")
    assert (sh.index, sh.count) == (1, 3)
    assert [i for i in range(8) if sh(i)] == [1, 4, 7]
    assert sh.default_db("out/routes.duckdb") == "out/routes.shard-1-of-3.duckdb"
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ScaleOutError, match="i/n"):
            Shard.parse(bad)


def test_two_shards_merged_equal_single_process(tmp_path, model_dir, prompt_files, reference):
    """Shard 0 into its own DuckDB file, shard 1 as Parquet parts, `routescope merge` → the
    single-process store, row for row; merging again or a different job's shard is refused."""
    ref_db, want = reference
    db = tmp_path / "job.duckdb"
    base = ["collect", "--model", model_dir, "--db", str(db), "-q"]
    base += ["--batch-size", "1", "--max-new-tokens", "2", "--save-probs"]
    for p in prompt_files:
        base += ["--prompts", p]
    runner = CliRunner()
    r0 = runner.invoke(app, [*base, "--shard", "0/2"])
    assert r0.exit_code == 0, r0.output
    parts = tmp_path / "parts1"
    r1 = runner.invoke(app, [*base, "--shard", "1/2", "--parts", str(parts)])
    assert r1.exit_code == 0, r1.output
    shard0 = tmp_path / "job.shard-0-of-2.duckdb"
    assert shard0.is_file() and not db.exists()
    run_id = job_from_options(prompt_files, model=model_dir, **OPTS).run_id
    got0, got1 = dump(str(shard0)), dump(str(parts))
    assert [r[1] for r in got0["sequences"]] == list(range(0, N_SEQ, 2))
    assert [r[1] for r in got1["sequences"]] == list(range(1, N_SEQ, 2))
    assert status(str(shard0), run_id) == "partial" and status(str(parts), run_id) == "partial"

    # one shard alone: merged, but the run is not complete
    half = tmp_path / "half.duckdb"
    res = merge_stores(str(half), [str(shard0)], quiet=True)
    assert res.runs[run_id] == {
        "sequences": len(range(0, N_SEQ, 2)),
        "stored": len(range(0, N_SEQ, 2)),
        "total": N_SEQ,
        "status": "partial",
    }
    out = tmp_path / "merged.duckdb"
    rm = runner.invoke(app, ["merge", str(out), str(shard0), str(parts), "-q"])
    assert rm.exit_code == 0, rm.output
    assert_same(dump(str(out)), want)
    assert status(str(out), run_id) == "complete"
    # the rest merged into the half store completes it too
    merge_stores(str(half), [str(parts)], quiet=True)
    assert_same(dump(str(half)), want)
    assert status(str(half), run_id) == "complete"

    # a sequence twice: refused, and the output is unchanged
    with pytest.raises(MergeError, match=r"sequence 0 of run .* is in both"):
        merge_stores(str(out), [str(shard0)], quiet=True)
    assert_same(dump(str(out)), want)
    # a shard of another job under the same run name disagrees on the config
    other = tmp_path / "other.duckdb"
    named = ["--name", "same"]
    assert runner.invoke(app, [*base, *named, "--shard", "0/2", "--db", str(other)]).exit_code == 0
    changed = [a if a != "2" else "1" for a in base]  # --max-new-tokens 1
    r = runner.invoke(app, [*changed, *named, "--shard", "1/2", "--db", str(other)])
    assert r.exit_code == 0, r.output
    with pytest.raises(MergeError, match="differs between .* in config"):
        merge_stores(
            str(tmp_path / "x.duckdb"),
            [
                str(tmp_path / "other.shard-0-of-2.duckdb"),
                str(tmp_path / "other.shard-1-of-2.duckdb"),
            ],
            quiet=True,
        )


def test_parquet_parts_resume_after_interrupt(tmp_path, model_dir, prompt_files, reference):
    """An interrupted shard into Parquet parts resumes to the same rows, leaving no duplicate."""
    _, want = reference
    job = job_from_options(
        prompt_files, model=model_dir, db=str(tmp_path / "unused.duckdb"), **OPTS
    )

    def stop_after_first(i: int) -> None:
        if i == 0:
            raise KeyboardInterrupt

    parts = tmp_path / "parts"
    with ParquetPartsStore(parts) as store, pytest.raises(CollectionInterrupted):
        run_job(job, quiet=True, store=store, flush_rows=1, after_batch=stop_after_first)
    assert len(dump(str(parts))["sequences"]) == 1  # the first batch was committed
    # a half-written part (no sequences file) is removed when the directory is opened again
    stray = parts / "routes" / f"run_id={job.run_id}" / "layer=0" / "deadbeef_0.parquet"
    stray.write_bytes(b"not parquet")
    with ParquetPartsStore(parts) as store:
        with pytest.raises(StoreError, match="another collection .* is writing to"):
            ParquetPartsStore(parts)  # a second writer would take the first's parts as abandoned
        assert not stray.exists()
        res = run_job(job, quiet=True, store=store, flush_rows=1)
    assert res.sequences_skipped == 1 and res.sequences_written == N_SEQ - 1
    assert_same(dump(str(parts)), want)
    assert not (tmp_path / "unused.duckdb").exists()


def test_ray_collection_equals_single_process(tmp_path, model_dir, prompt_files, reference):
    import ray  # the [ray] extra (pip install 'routescope[ray]')

    from routescope.collect.scaleout import run_ray

    _, want = reference
    db = str(tmp_path / "ray.duckdb")
    job = job_from_options(prompt_files, model=model_dir, db=db, **OPTS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_ray(job, workers=2, chunk_size=3, quiet=True)
    finally:
        ray.shutdown()
    assert res.status == "complete" and res.sequences_written == N_SEQ
    assert_same(dump(db), want)
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info(job.run_id)["status"] == "complete"


def test_scaleout_user_errors_are_one_line(tmp_path, monkeypatch, prompt_files, model_dir):
    from routescope.collect.scaleout import run_ray

    job = job_from_options(prompt_files, model=model_dir, db=str(tmp_path / "j.duckdb"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    with pytest.raises(ScaleOutError, match=r"pip install 'routescope\[ray\]'"):
        run_ray(job)
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)  # nothing is written, but if it were, not into the repository
    db = str(tmp_path / "never.duckdb")
    base = ["collect", "--model", model_dir, "--prompts", prompt_files[0], "--db", db, "-q"]
    cases = {
        "--address is for --ray": [*base, "--address", "ray://x:10001"],
        "--parts needs --shard": [*base, "--parts", str(tmp_path / "p")],
        "leave out --shard": [*base, "--ray", "--shard", "0/2"],
        "no shard at": ["merge", str(tmp_path / "o.duckdb"), str(tmp_path / "missing.duckdb")],
        "is the output itself": ["merge", str(tmp_path / "o.duckdb"), str(tmp_path / "o.duckdb")],
    }
    for message, args in cases.items():
        r = runner.invoke(app, args)
        assert isinstance(r.exception, ScaleOutError | MergeError), (args, r.output)
        assert message in str(r.exception) and "\n" not in str(r.exception)
    assert not (tmp_path / "o.duckdb").exists() and not Path(db).exists()


def test_shards_of_a_job_steered_by_a_preset(tmp_path, model_dir, prompt_files):
    """A preset named by the job lives in the job's store: both shard forms resolve it from
    there, and the merged shards equal the steered single-process run."""
    from routescope.cli.collect import run_scaled
    from routescope.steering.presets import create_preset, job_steering
    from routescope.steering.spec import SteeringSpec

    db = str(tmp_path / "main.duckdb")
    with RoutingStore(db) as store:
        spec = SteeringSpec.from_dict(
            {"edits": [{"layer": 1, "expert": 4, "action": "deactivate"}]}
        )
        create_preset(store.con, "no-e4", spec, model_id=model_dir)
    job = job_from_options(prompt_files, model=model_dir, db=db, steering="no-e4", **OPTS)
    steering = job_steering(job)
    ref = run_job(job, quiet=True, steering=steering)
    assert ref.status == "complete"
    parts = tmp_path / "parts"
    run_scaled(job, steering, True, "0/2", None, False, None, 2)
    run_scaled(job, steering, True, "1/2", parts, False, None, 2)
    shard0 = str(tmp_path / "main.shard-0-of-2.duckdb")
    with RoutingStore(shard0, read_only=True) as store:
        assert store.table("SELECT name FROM steering_presets")["name"].to_list() == ["no-e4"]
    out = str(tmp_path / "merged.duckdb")
    merge_stores(out, [shard0, str(parts)], quiet=True)
    want = dump(db)
    assert_same(dump(out), want)
    assert status(out, job.run_id) == "complete"
    con = connect_store(out)
    try:
        layer1 = con.execute(
            "SELECT count(*) FROM route_choices WHERE layer = 1 AND expert = 4"
        ).fetchall()
        steering_id = con.execute("SELECT steering_id FROM runs").fetchall()
        preset_id = con.execute("SELECT preset_id FROM steering_presets").fetchall()
    finally:
        con.close()
    assert layer1 == [(0,)] and steering_id == preset_id
