"""Usage errors (from click, or the copy of click that typer vendors) are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["localize", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["localize"], "Missing"),  # missing argument / required option
        (["export"], "Missing argument 'run'"),
        (["collect", "--batch-size", "abc", "job.toml"], "--batch-size"),
        (["sql", "--format", "xml", "runs"], "'xml'"),
    ],
)
def test_usage_error_is_one_line_exit_2(args, says, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "routescope", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "--help" in lines[0]


def test_usage_errors_from_plain_click_are_one_line_too(monkeypatch, capsys):
    """The same handling for click's own exception classes (typer before 0.29 raised these)."""
    import click

    import routescope.cli as cli

    def raise_click(*_a, **_k):
        raise click.exceptions.NoSuchOption("--nope")

    monkeypatch.setattr(cli, "app", raise_click)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: No such option '--nope'. (see `routescope --help`)"]
