"""CLI commands: dashboard (`routescope app`), the Streamlit app in app/ over a routing store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.errors import RoutescopeError

#: app/ sits at the top of the repository, beside the package (an editable install's checkout).
APP_DIR = Path(__file__).resolve().parents[2] / "app"
APP_MAIN = APP_DIR / "main.py"
DB_ENV = "ROUTESCOPE_DB"


class DashboardError(RoutescopeError):
    """The dashboard cannot be started (app files or streamlit missing)."""


def streamlit_command(db: str, port: int, headless: bool, address: str) -> list[str]:
    """The `streamlit run` command line for the app (the db travels in $ROUTESCOPE_DB)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_MAIN),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--",
        "--db",
        db,
    ]


@app.command(name="app")
def dashboard(
    db: str = typer.Option(
        DEFAULT_DB, help="DuckDB file (or Parquet export directory) to show; switchable in the app."
    ),
    port: int = typer.Option(8501, help="Port to serve on."),
    address: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 to share)."),
    headless: bool = typer.Option(
        False, "--headless", help="Do not open a browser (servers, containers, tests)."
    ),
) -> None:
    """Open the Streamlit dashboard over a routing store.

    Runs `streamlit run app/main.py` with app/ found at the top of the checkout routescope is installed from (an editable install: pip install -e .); needs streamlit, the app extra. A missing or empty database shows how to collect one.
    """
    if not APP_MAIN.is_file():
        raise DashboardError(
            f"the dashboard files are not at {APP_DIR}; `routescope app` runs from a checkout "
            "installed with `pip install -e .[app]`"
        )
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise DashboardError(
            "streamlit is not installed; install the app extra: pip install -e '.[app]'"
        ) from None
    env = {**os.environ, DB_ENV: str(Path(db).expanduser().resolve())}
    typer.echo(f"routescope dashboard on http://{address}:{port} (db: {env[DB_ENV]})", err=True)
    cmd = streamlit_command(env[DB_ENV], port, headless, address)
    if os.name == "posix":  # become the server: Ctrl-C and kill reach streamlit directly
        os.execve(cmd[0], cmd, env)
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)
