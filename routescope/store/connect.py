"""Opening a store's DuckDB file, and keeping a second collection out of it.

DuckDB lets one process hold a file for writing and nobody else open it meanwhile. A collection
job holds the file only while it commits, so readers (the dashboard, `routescope sql`, analyses)
open it between commits: `connect_retrying` backs off while the lock is held, and ends with one
clear line when it stays locked. `CollectionLock` is an advisory lock file that stops a second
collection into the same store at once, instead of interleaving with the first.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from routescope.core.errors import StoreError

T = TypeVar("T")

#: Seconds a read-only open waits while a collection job holds the file for a commit.
READER_LOCK_TIMEOUT = 10.0


def first_line(msg: str) -> str:
    """The first non-empty line of an error message (DuckDB's run to several)."""
    lines = [x for x in str(msg).strip().splitlines() if x.strip()]
    return lines[0] if lines else str(msg)


def _holder(exc: Exception) -> str:
    pid = re.search(r"PID (\d+)", str(exc))
    return f" (process {pid.group(1)})" if pid else ""


def while_locked(attempt: Callable[[], T], timeout: float) -> T:
    """`attempt()`, called again while it fails on another process's lock of a DuckDB file,
    backing off (20 ms doubling to 1 s) for up to `timeout` seconds; then its lock error."""
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.02
    while True:
        try:
            return attempt()
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def connect_retrying(
    path: str | Path, read_only: bool, lock_timeout: float
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting up to `lock_timeout` seconds while another process holds its
    lock (`while_locked`); then one clear line that says who holds it and what to do."""

    def attempt() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(path), read_only=read_only)
        # DuckDB's own bar would draw over routescope's progress output on long statements
        con.execute("SET enable_progress_bar = false")
        return con

    try:
        return while_locked(attempt, lock_timeout)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise StoreError(
                f"cannot open {path} as a DuckDB database: {first_line(str(exc))}"
            ) from None
        waited = f" after {lock_timeout:g} s" if lock_timeout > 0 else ""
        raise StoreError(
            f"database {path} is still locked for writing by another process"
            f"{_holder(exc)}{waited}; wait for that job to finish (or stop it), point "
            "--db at another file, or read a Parquet export of the run "
            "(`routescope export RUN --parquet DIR`)"
        ) from None
    except duckdb.Error as exc:
        raise StoreError(
            f"cannot open {path} as a DuckDB database: {first_line(str(exc))}"
        ) from None


class CollectionLock:
    """An advisory lock file held while one collection writes to a store (released by
    `release()` or at process exit); a second collection into the same store stops at once."""

    def __init__(self, lock_path: str | Path, store: str) -> None:
        self.path = str(lock_path)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # no advisory locks here: DuckDB's lock still guards each commit
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # e.g. a missing directory: opening the store reports it clearly
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="ignore").strip()
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise StoreError(
                f"another collection{who} is writing to {store}; wait for it to finish "
                "(or stop it), or point --db at another file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
