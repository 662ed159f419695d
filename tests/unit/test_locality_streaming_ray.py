"""`routescope analyze consistency/cache --ray`: the same JSON as one process, on a small store."""

from __future__ import annotations

import json
import shutil

from test_locality_streaming import RUN, write_run
from typer.testing import CliRunner

CALLS = [
    ["analyze", "consistency", RUN, "--segments", "2,3", "--seed", "4"],
    ["analyze", "cache", RUN, "--granularity", "step", "--batch-size", "2", "--start", "warm"],
    ["analyze", "cache", RUN, "--scope", "global", "--service", "simultaneous", "--policies",
     "lru,fifo,static,lookahead-3,belady"],
]  # fmt: skip


def test_ray_json_equals_one_process(tmp_path, monkeypatch):
    import ray  # part of [dev] (the [ray] extra)

    from routescope.analysis.ray_driver import RayExecutor
    from routescope.cli import app

    one, many = str(tmp_path / "one.duckdb"), str(tmp_path / "ray.duckdb")
    write_run(one)
    shutil.copy(one, many)  # two stores: each CLI call memoizes its result into its store
    runner = CliRunner()
    want = []
    for call in CALLS:
        res = runner.invoke(app, [*call, "--db", one, "--json"])
        assert res.exit_code == 0, res.output
        want.append(json.loads(res.output))

    ran: list[str] = []  # the reductions the Ray executor ran
    real_run = RayExecutor.run

    def run(self, source, reduction, **kw):  # noqa: ANN001, ANN202
        ran.append(reduction.name)
        return real_run(self, source, reduction, **kw)

    monkeypatch.setattr(RayExecutor, "run", run)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = []
        for call in CALLS:
            res = runner.invoke(app, [*call, "--db", many, "--json", "--ray"])
            assert res.exit_code == 0, res.output
            got.append(json.loads(res.output))
    finally:
        ray.shutdown()
    assert ran == ["repetition", "SRP", "SCH", "cache hit rates", "cache hit rates"]
    assert got == want
    assert got[0]["srp"][0]["srp_shuffled"] is not None
