"""`--db` takes a Parquet export directory as well as a DuckDB file: every analysis gives the same
answer on both, and writing to a directory is refused with one line."""

import json

import pytest
from test_store import filled  # noqa: F401  (fixture)
from typer.testing import CliRunner

from routescope.cli._app import app
from routescope.core.errors import StoreError
from routescope.store.parquet import export_parquet
from routescope.store.store import RoutingStore

COMMANDS = [
    ["analyze", "consistency", "run-a", "--segments", "2,3", "--json"],
    ["analyze", "cache", "run-a", "--capacities", "1-8", "--json"],
    ["analyze", "specialization", "run-a", "--json"],
    [
        "localize",
        "run-a",
        "--target",
        "label:code",
        "--control",
        "label:prose",
        "--n-boot",
        "50",
        "--n-perm",
        "50",
        "--json",
    ],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_analyses_equal_on_file_and_parquet(filled, tmp_path, command):  # noqa: F811
    path, _ = filled
    out = tmp_path / "export"
    with RoutingStore(path, read_only=True) as store:
        export_parquet(store, "run-a", out)
    runner = CliRunner()
    on_file = runner.invoke(app, [*command, "--db", path, "-q"])
    on_dir = runner.invoke(app, [*command, "--db", str(out), "-q"])
    assert on_file.exit_code == 0, on_file.output
    assert on_dir.exit_code == 0, on_dir.output
    assert json.loads(on_file.output) == json.loads(on_dir.output)


def test_parquet_directory_is_read_only(filled, tmp_path):  # noqa: F811
    path, _ = filled
    out = tmp_path / "export"
    with RoutingStore(path, read_only=True) as store:
        export_parquet(store, "run-a", out)
        trace_file = store.load_trace("run-a")
    with RoutingStore(out, read_only=True) as store:
        assert store.runs()["run_id"].to_list() == ["run-a"]
        trace_dir = store.load_trace("run-a")
    assert (trace_dir.experts == trace_file.experts).all()
    with pytest.raises(StoreError, match="read-only"):
        RoutingStore(out)
