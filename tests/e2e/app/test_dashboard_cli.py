"""`routescope app` as a user starts it: the installed entry point, no terminal on standard input,
a HOME where Streamlit never ran (so nothing it remembered can hide its first-run e-mail prompt).
The server must answer its health check without prompting, `--open` must open the browser only
once the server answers, and both must stop cleanly when terminated."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from headless_chromium import free_port, http_get

pytestmark = pytest.mark.e2e

#: Streamlit's first-run prompt ("… please enter your email address below … Email: ")
PROMPT_MARKERS = ("Email", "email address", "Welcome to Streamlit")
START_TIMEOUT = 90.0


def routescope_command() -> list[str]:
    """The installed `routescope` entry point beside this interpreter, else its equivalent."""
    exe = Path(sys.executable).with_name("routescope")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-c", "from routescope.cli import main; main()"]


def health(base: str) -> str | None:
    return http_get(f"{base}/_stcore/health")


def wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> float:
    """Seconds until the server answers `ok`; fails at once if the process exits first."""
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT:
        if health(base) == "ok":
            return time.monotonic() - start
        if proc.poll() is not None:
            pytest.fail(f"`routescope app` exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no health answer within {START_TIMEOUT:.0f} s:\n{log.read_text()}")


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test environment with a HOME (and XDG dirs) where Streamlit never ran."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "XDG_"))}
    env.pop("BROWSER", None)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return {**env, "HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def start(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`routescope app ARGS` with stdin from /dev/null, output to a log, in its own session."""
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*routescope_command(), "app", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # its own process group: the cleanup can reach every child
        )
    return proc, log


def cleanup(proc: subprocess.Popen) -> None:
    """Kill whatever the test left running (the whole process group)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def cmdline(pid: int) -> list[str]:
    """The process's arguments ([] if it has exited meanwhile)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except FileNotFoundError:
        return []


def assert_no_prompt(log: Path) -> None:
    text = log.read_text()
    assert not any(m in text for m in PROMPT_MARKERS), text


def test_app_serves_without_a_terminal_and_never_prompts(fixture_store, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start(
        ["--db", fixture_store["db"], "--port", str(port)], fresh_env(tmp_path), tmp_path
    )
    try:
        took = wait_healthy(proc, base, log)
        print(f"healthy after {took:.1f} s")
        assert_no_prompt(log)
        if Path(f"/proc/{proc.pid}").is_dir():  # without --open, routescope became the server
            cmd = cmdline(proc.pid)
            assert cmd[cmd.index("--server.headless") + 1] == "true"
            assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        cleanup(proc)
    assert health(base) is None  # the port is free again: nothing was left serving
    assert_no_prompt(log)
    assert not (tmp_path / "home" / ".streamlit" / "credentials.toml").exists()


RECORDER = r"""
import json, sys, urllib.request
url = sys.argv[2]
try:
    with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
        state = r.read().decode()
except OSError as exc:
    state = f"error: {exc}"
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"url": url, "health": state}) + "\n")
"""


def test_open_flag_opens_the_browser_once_the_server_answers(fixture_store, tmp_path):
    """--open: routescope runs the server as a child, opens $BROWSER only when /_stcore/health
    answers, and SIGTERM to routescope stops the child too."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    recorder, opened = tmp_path / "recorder.py", tmp_path / "opened.jsonl"
    recorder.write_text(RECORDER)
    env = fresh_env(tmp_path, BROWSER=f"{sys.executable} {recorder} {opened} %s")
    proc, log = start(
        ["--db", fixture_store["db"], "--port", str(port), "--open", "--usage-stats"],
        env,
        tmp_path,
    )
    try:
        wait_healthy(proc, base, log)
        deadline = time.monotonic() + 30
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.exists(), f"no browser was opened:\n{log.read_text()}"
        calls = [json.loads(line) for line in opened.read_text().splitlines()]
        assert calls == [{"url": base, "health": "ok"}]  # once, and only after the server answered
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if children.is_file():  # the server is routescope's child, started with the flags
            # (the browser command may not have exited yet: it is a child too, for a moment)
            servers = [
                c
                for c in (cmdline(int(pid)) for pid in children.read_text().split())
                if "streamlit" in c
            ]
            assert len(servers) == 1, servers
            cmd = servers[0]
            assert cmd[cmd.index("--server.headless") + 1] == "true"
            assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "true"
        proc.send_signal(signal.SIGTERM)  # passed on to the server; both end
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        cleanup(proc)
    assert health(base) is None
    assert_no_prompt(log)
