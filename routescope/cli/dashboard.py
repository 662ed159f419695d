"""CLI commands: dashboard (`routescope app`), the Streamlit app in app/ over a routing store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path

import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.core.errors import RoutescopeError

#: app/ sits at the top of the repository, beside the package (an editable install's checkout).
APP_DIR = Path(__file__).resolve().parents[2] / "app"
APP_MAIN = APP_DIR / "main.py"
DB_ENV = "ROUTESCOPE_DB"
#: how long `--open` waits for the server to answer before giving up on the browser (not the app).
OPEN_TIMEOUT = 120.0


class DashboardError(RoutescopeError):
    """The dashboard cannot be started (app files or streamlit missing)."""


def streamlit_command(
    db: str, port: int, address: str = "127.0.0.1", usage_stats: bool = False
) -> list[str]:
    """The `streamlit run` command line for the app (the db travels in $ROUTESCOPE_DB).

    Always headless: Streamlit then never asks for an e-mail address (which, with no terminal on
    standard input, makes it exit with status 255) and never opens a browser itself.
    """
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
        "true",
        "--browser.gatherUsageStats",
        "true" if usage_stats else "false",
        "--client.toolbarMode",
        "minimal",
        "--",
        "--db",
        db,
    ]


def browser_url(address: str, port: int) -> str:
    """The URL a local browser reaches the server at (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(address, address)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def server_healthy(url: str) -> bool:
    """True when Streamlit at url answers its health check with `ok`."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except (OSError, ValueError):
        return False


def can_open_browser() -> bool:
    """Whether webbrowser.open can show a graphical browser (not a text one in this terminal)."""
    if os.environ.get("BROWSER") or sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_when_ready(proc: subprocess.Popen, url: str, timeout: float = OPEN_TIMEOUT) -> bool:
    """Poll the server's health until it answers, then open url in a browser; False if not."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if server_healthy(url):
            opened = False
            if can_open_browser():
                with contextlib.suppress(Exception):
                    opened = webbrowser.open(url)
            if not opened:
                typer.echo(f"no browser to open here; open {url} yourself", err=True)
            return opened
        time.sleep(0.25)
    if proc.poll() is None:
        typer.echo(
            f"the server did not answer within {timeout:.0f} s; not opening a browser", err=True
        )
    return False


def stop_child(proc: subprocess.Popen, grace: float = 10.0) -> int:
    """Stop the child: let it end by itself for a second (a terminal's Ctrl-C reached it too),
    then send SIGINT as Ctrl-C would, then terminate, then kill; its exit status."""
    steps = [
        (None, 1.0),
        (lambda: proc.send_signal(signal.SIGINT), grace),
        (proc.terminate, grace),
        (proc.kill, grace),
    ]
    for action, wait in steps:
        if proc.poll() is not None:
            break
        if action is not None:
            with contextlib.suppress(ProcessLookupError):
                action()
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def serve_and_open(cmd: list[str], env: dict[str, str], url: str) -> int:
    """Run the server as a child, open the browser once it answers, and wait for it to end.

    SIGTERM (and SIGHUP) to this process is passed on to the child; on Ctrl-C (KeyboardInterrupt)
    the child is stopped as by Ctrl-C, and terminated if it has not stopped after a grace period.
    """
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    forwarded = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        open_when_ready(proc, url)
        code = proc.wait()
        return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    except KeyboardInterrupt:
        stop_child(proc)
        return 0
    finally:
        if proc.poll() is None:  # an unexpected error here: never leave the server behind
            stop_child(proc, grace=5.0)
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command(name="app")
def dashboard(
    db: str = typer.Option(
        DEFAULT_DB, help="DuckDB file (or Parquet export directory) to show; switchable in the app."
    ),
    port: int = typer.Option(8501, help="Port to serve on."),
    address: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 to share)."),
    open_browser: bool = typer.Option(
        False, "--open", help="Open the dashboard in a browser once the server answers."
    ),
    usage_stats: bool = typer.Option(
        False, "--usage-stats", help="Let Streamlit send its usage statistics (off by default)."
    ),
    headless: bool = typer.Option(
        False, "--headless", hidden=True, help="Accepted for compatibility; always headless now."
    ),
) -> None:
    """Serve the Streamlit dashboard over a routing store (never prompts; --open opens a browser).

    Runs `streamlit run app/main.py` with app/ found at the top of the checkout routescope is installed from (an editable install: pip install -e .); needs streamlit, the app extra. A missing or empty database shows how to collect one.
    """
    del headless  # the server is always headless: it never prompts and never opens a browser
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
    url = browser_url(address, port)
    typer.echo(f"routescope dashboard on {url} (db: {env[DB_ENV]})", err=True)
    cmd = streamlit_command(env[DB_ENV], port, address, usage_stats=usage_stats)
    code = 0
    if open_browser:
        code = serve_and_open(cmd, env, url)
    elif os.name == "posix":  # become the server: Ctrl-C and kill reach streamlit directly
        os.execve(cmd[0], cmd, env)
    else:
        try:
            code = subprocess.call(cmd, env=env)
        except KeyboardInterrupt:
            code = 0
    if code:
        raise typer.Exit(code)
