"""Helpers every dashboard page uses: the database path, short-lived store connections, cached
loads keyed by (db, file version, run, parameters), analysis results through the store's results
memo (with progress while they compute), the empty-store message, expert notes, presets.

Pages read only what they show (DESIGN §7): run metadata, one sequence, or analysis results
that the analyses compute by streaming the run in bounded chunks; no page loads a whole run.

The app never keeps a DuckDB connection open between reruns: DuckDB lets one process open a file
for writing and nobody else open it meanwhile, so holding a reader open would stall a collection
job, and a job holding the file would stall the app. Each read opens, reads and closes
(`connect_store` retries while a writer holds the lock); results are cached by the file's
modification stamp, so a page rerun normally touches no file at all.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl
import streamlit as st

from routescope.core.canonical import canonical_json
from routescope.core.defaults import DEFAULT_DB
from routescope.core.errors import RoutescopeError
from routescope.core.source import SourceInfo
from routescope.core.trace import Trace
from routescope.store import notes as notes_lib
from routescope.store.notes import ExpertNote

if TYPE_CHECKING:
    from routescope.analysis.summary import PageResult
    from routescope.store.store import RoutingStore

DB_ENV = "ROUTESCOPE_DB"
RUN_KEY = "run_id"

T = TypeVar("T")


# ---- where the data is --------------------------------------------------------------------------
def _db_from_argv(argv: list[str]) -> str | None:
    """`streamlit run app/main.py -- --db PATH` (or --db=PATH)."""
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--db="):
            return arg.split("=", 1)[1]
    return None


def default_db() -> str:
    """The db path given at launch: $ROUTESCOPE_DB, else `-- --db PATH`, else routescope.duckdb."""
    return os.environ.get(DB_ENV) or _db_from_argv(sys.argv[1:]) or DEFAULT_DB


def db_path() -> str:
    """The database this session reads (the sidebar can switch it)."""
    return str(st.session_state.get("db_path") or default_db())


def store_version(db: str) -> str:
    """A stamp that changes whenever the store's files change (cache key for every load)."""
    p = Path(db)
    if p.is_dir():
        stamps = [f.stat().st_mtime_ns for f in p.rglob("*.parquet")]
        return f"dir:{max(stamps, default=0)}:{len(stamps)}"
    parts = []
    for f in (p, Path(f"{db}.wal")):
        try:
            s = f.stat()
            parts.append(f"{s.st_mtime_ns}:{s.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


#: db path → {file stamp → the version it stands for}. Saving a result into the store's memo
#: changes the file but nothing a page shows, so the stamp after this app's own save stands for
#: the version before it: loads and results cached under that version stay valid, and a repeat
#: view reads no file (another process's write, results included, is a new version).
_SAME_DATA: dict[str, dict[str, str]] = {}


def data_version(db: str) -> str:
    """The version of the store's data: its file stamp, or the version that stamp stands for."""
    stamp = store_version(db)
    return _SAME_DATA.get(db, {}).get(stamp, stamp)


def _same_data(db: str, stamp: str, version: str) -> None:
    """Record that file stamp `stamp` stands for `version` (the last few per database)."""
    known = _SAME_DATA.setdefault(db, {})
    known[stamp] = version
    while len(known) > 64:
        known.pop(next(iter(known)))


def is_parquet(db: str) -> bool:
    """A Parquet export directory: readable, but notes and presets cannot be saved there."""
    return Path(db).is_dir()


#: Seconds a read waits for a collection job to release the file before the app falls back to
#: the data it last read (a job holds the lock while it commits; see `readable_version`).
LOCK_TIMEOUT = 5.0

#: db path → the last store version read successfully in this app process.
_LAST_GOOD: dict[str, str] = {}


@contextmanager
def open_store(db: str, write: bool = False) -> Iterator[RoutingStore]:
    """A `RoutingStore` over a fresh connection, closed on exit (releases the file lock).

    Read-only opens of a DuckDB file wait up to LOCK_TIMEOUT for a committing job, and can save
    an analysis result they computed into the store's results memo (taking the write lock just
    long enough), so the CLI finds it there too.
    """
    from routescope.store.store import RoutingStore

    if is_parquet(db):
        store = RoutingStore(db, read_only=True)
    else:
        store = RoutingStore(db, read_only=not write, lock_timeout=15.0 if write else LOCK_TIMEOUT)
    try:
        yield store
    finally:
        store.close()


def read(db: str, fn: Callable[[RoutingStore], T]) -> T:
    """Open the store read-only, apply fn(store), close."""
    with open_store(db) as store:
        return fn(store)


# ---- cached loads (keys: db path, file stamp, run, parameters) ---------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def load_runs(db: str, version: str) -> pl.DataFrame:
    """The store's runs (empty frame when the database has no runs table yet)."""
    return read(db, lambda s: s.runs())


@st.cache_data(show_spinner=False, max_entries=64)
def load_run_info(db: str, version: str, run_id: str) -> dict[str, Any]:
    return read(db, lambda s: s.run_info(run_id))


@st.cache_data(show_spinner=False, max_entries=32)
def load_source_info(db: str, version: str, run_id: str, phase: str = "all") -> SourceInfo:
    """What the run holds (layers, E, k, labels, prompt sets, counts), without reading routing."""
    return read(db, lambda s: s.source(run_id, phase=phase).info)


@st.cache_data(show_spinner=False, max_entries=32)
def has_target_spans(db: str, version: str, run_id: str) -> bool:
    """Whether any token of the run lies in a prompt's target span (one scan of a bool column)."""
    return read(
        db,
        lambda s: bool(
            s.con.execute(
                "SELECT coalesce(bool_or(in_target), false) FROM tokens WHERE run_id = ?",
                [run_id],
            ).fetchall()[0][0]
        ),
    )


@st.cache_data(show_spinner=False, max_entries=16)
def load_sequence_list(db: str, version: str, run_id: str) -> pl.DataFrame:
    """The run's sequences, one row each: seq_id, label, num_tokens (prompt), head (the prompt's
    first characters). No routing and no token rows: what a sequence picker needs."""
    return read(
        db,
        lambda s: s.table(
            "SELECT seq_id, label, num_tokens, left(coalesce(text, ''), 60) AS head "
            "FROM sequences WHERE run_id = ? ORDER BY seq_id",
            [run_id],
        ),
    )


@st.cache_data(show_spinner="Reading the sequence…", max_entries=32)
def load_sequence(db: str, version: str, run_id: str, seq_id: int) -> Trace:
    """One sequence of the run, every layer and phase (`RoutingStore.sequence_trace`)."""
    return read(db, lambda s: s.sequence_trace(run_id, int(seq_id)))


@st.cache_data(show_spinner=False, max_entries=32)
def load_token_strings(
    db: str, version: str, run_id: str, token_ids: tuple[int, ...]
) -> dict[int, str]:
    """The recorded text of these token ids (only these: never the run's whole vocabulary)."""
    return read(db, lambda s: s.token_strings(run_id, token_ids=list(token_ids)))


# ---- expert notes (routescope.store.notes over a short-lived connection) ----------------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_notes(db: str, version: str, model_id: str) -> dict[tuple[int, int], ExpertNote]:
    """(layer, expert) → (label, note) of the model's annotated experts."""
    return read(db, lambda s: notes_lib.load_notes(s.con, model_id))


def note_labels(notes: dict[tuple[int, int], ExpertNote]) -> dict[tuple[int, int], str]:
    """(layer, expert) → label (or the note's first words when unlabelled), for hover texts."""
    return notes_lib.note_labels(notes)


def save_note(db: str, model_id: str, layer: int, expert: int, label: str, note: str) -> None:
    """Save one expert's annotation (opens the file for writing only for this statement); an
    empty label and note remove it."""
    with open_store(db, write=True) as store:
        notes_lib.save_note(store.con, model_id, layer, expert, label, note)
    load_notes.clear()


def readable_version(db: str) -> tuple[str, str | None]:
    """(version to read, warning or None). When another process holds the file for longer than
    LOCK_TIMEOUT, fall back to the last version this app read (its cached results), with a note."""
    version = data_version(db)
    try:
        load_runs(db, version)
    except RoutescopeError as exc:
        last = _LAST_GOOD.get(db)
        if last is None or "lock" not in str(exc).lower():
            raise
        return last, (
            "The database is busy (another process, e.g. a collection job, holds it for writing); "
            "showing the data as last read. Reload the page later for newer data."
        )
    _LAST_GOOD[db] = version
    return version, None


# ---- analysis results: the store's memo, with progress while computing ----------------------
#: Analysis results kept in this server process, most recent last, up to this many bytes (the
#: oldest are dropped first; they stay in the store's memo).
RESULTS_BYTES = 256 * 2**20
_RESULTS: OrderedDict[tuple[str, ...], pl.DataFrame] = OrderedDict()
_RESULTS_LOCK = threading.Lock()


class ProgressBar:
    """An analysis's `progress(done, total)` callback drawing a Streamlit progress bar, shown only
    once something is computed (a result from the memo shows nothing) and removed after."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._slot: Any = None
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._slot is None:
            self._slot = st.empty()
        elif done < total and now - self._last < 0.2:
            return  # a few updates a second are enough
        self._last = now
        frac = min(max(done / total, 0.0), 1.0) if total else 1.0
        self._slot.progress(frac, text=f"{self.what}… {frac:.0%}")

    def start(self) -> None:
        """Show the bar at 0 before the first unit is done (reading can take a moment)."""
        self(0, 1)

    def close(self) -> None:
        if self._slot is not None:
            self._slot.empty()


def _kept(key: tuple[str, ...]) -> pl.DataFrame | None:
    with _RESULTS_LOCK:
        hit = _RESULTS.get(key)
        if hit is not None:
            _RESULTS.move_to_end(key)
        return hit


def _keep(key: tuple[str, ...], result: pl.DataFrame) -> None:
    """Keep a result for repeat views, within RESULTS_BYTES (a larger one is not kept)."""
    with _RESULTS_LOCK:
        _RESULTS[key] = result
        total = sum(r.estimated_size() for r in _RESULTS.values())
        while _RESULTS and total > RESULTS_BYTES:
            _, old = _RESULTS.popitem(last=False)
            total -= old.estimated_size()


#: Route rows per chunk when a page computes a result in this server (the CLI's default is
#: DEFAULT_CHUNK_ROWS): smaller chunks keep the server's memory low while it computes; the result
#: is the same however the run is chunked (DESIGN §7), so the key does not name it.
APP_MAX_ROWS = 1_000_000

#: DuckDB's memory limit while a page computes (on a DuckDB file; the store's sources cap it at
#: 512 MiB, and blocks read stay cached up to it): reading one chunk needs far less, and the
#: rest comes again from the OS's file cache.
APP_DUCKDB_MEMORY = "128MiB"

#: One analysis computes in this server at a time, whatever the number of sessions asking: the
#: server's memory then holds one analysis's chunks, and its save into the memo does not meet
#: another computation's open connection (DuckDB opens a file for writing only when the process
#: has no other connection to it; the save would be skipped).
_COMPUTING = threading.Lock()


class _Missing(Exception):
    """The memo lacks a result (raised instead of computing it, see `result`)."""


def result(
    db: str,
    version: str,
    run_id: str,
    item: PageResult,
    shared: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """A page's result (`routescope.analysis.summary.PageResult`) from the store's memo, under
    the key `routescope summarize` and the CLI use; computed here only when the memo lacks it
    (streaming the run in chunks of APP_MAX_ROWS route rows, one computation at a time in this
    server), with a progress bar meanwhile.

    Kept in this process too (keyed by the store's version), so a repeat view opens no file.
    `shared` (a dict the page makes on each run) keeps a pass several results share (the
    Experts page's counts), made only when one of them is missing.
    """
    kind, params = item.key()
    key = (db, version, run_id, kind, canonical_json(params))
    hit = _kept(key)
    if hit is not None:
        return hit
    bar = ProgressBar(item.what)
    saving: list[str] = []  # the file's stamp when a computed result was about to be saved
    try:
        try:
            frame = _from_memo(db, run_id, item, bar, shared, saving, compute=False)
        except _Missing:
            with _computing():  # read the memo again: another session may have computed it
                frame = _from_memo(db, run_id, item, bar, shared, saving, compute=True)
    finally:
        bar.close()
    if saving and data_version(db) != version:
        before = saving[-1]  # unchanged by anyone else while this computed: only the save
        if _SAME_DATA.get(db, {}).get(before, before) == version:
            _same_data(db, store_version(db), version)
    _keep(key, frame)
    return frame


@contextmanager
def _computing() -> Iterator[None]:
    """Hold the server's computation lock (saying so while another session holds it)."""
    if not _COMPUTING.acquire(blocking=False):
        note = st.empty()
        note.info("Waiting for another analysis this server is computing…")
        _COMPUTING.acquire()
        note.empty()
    try:
        yield
    finally:
        _COMPUTING.release()


def _from_memo(
    db: str,
    run_id: str,
    item: PageResult,
    bar: ProgressBar,
    shared: dict[str, Any] | None,
    saving: list[str],
    compute: bool,
) -> pl.DataFrame:
    """`summary.memo` over a short-lived store; a missing result raises `_Missing` unless
    `compute`, and `saving` gets the file's stamp just before a computed result is saved."""
    from routescope.analysis.summary import memo

    with open_store(db) as store:
        if compute and not is_parquet(db):
            store.con.execute(f"SET memory_limit = '{APP_DUCKDB_MEMORY}'")
        watched = _Watched(store, bar, lambda: saving.append(store_version(db)), compute)
        return memo(watched, run_id, item, progress=bar, shared=shared, max_rows=APP_MAX_ROWS)


class _Watched:
    """The store, as `summary.memo` uses it: a result the memo lacks raises `_Missing`, or (with
    `compute`) is computed with the progress bar shown from the start (reading can take a moment
    before the first unit), `computed()` called just before the memo saves it."""

    def __init__(
        self,
        store: RoutingStore,
        bar: ProgressBar,
        computed: Callable[[], None],
        compute: bool,
    ) -> None:
        self._store, self._bar, self._computed, self._compute = store, bar, computed, compute

    def source(self, run: str | None = None, phase: str = "all") -> Any:
        return self._store.source(run, phase=phase)

    def memo_result(
        self, run_id: str, kind: str, params: Any, compute: Callable[[], pl.DataFrame]
    ) -> pl.DataFrame:
        def computing() -> pl.DataFrame:
            if not self._compute:
                raise _Missing
            self._bar.start()
            frame = compute()
            self._computed()
            return frame

        return self._store.memo_result(run_id, kind, params, computing)


# ---- page scaffolding ---------------------------------------------------------------------------
def demo_help(db: str) -> str:
    """How to fill an empty store: collect the shipped demo model's routing into `db`."""
    return f"""\
To get started, record the demo model's routing (a small MoE model shipped with routescope)
into this database and reload the page:

```bash
routescope demo --db {db}
routescope app --db {db}
```

Or record your own model with `routescope collect collectors/demo.toml --model PATH_OR_HUB_ID`
and point the sidebar's database field at the file it wrote.
"""


def empty_state(db: str, why: str) -> None:
    """What an empty or missing store shows: how to make one, not an error."""
    st.info(f"{why}\n\n{demo_help(db)}")


def current_run() -> tuple[str, str, str] | None:
    """(db, version, run_id) of the run picked in the sidebar, or None (after showing why)."""
    db = db_path()
    run_id = st.session_state.get(RUN_KEY)
    if not Path(db).exists():
        empty_state(db, f"No routing database at `{db}` yet.")
        return None
    try:
        version, busy = readable_version(db)
    except RoutescopeError as exc:
        show_error(exc)
        return None
    if busy:
        st.warning(busy)
    if run_id is None and RUN_KEY not in st.session_state:
        # a page run on its own (no sidebar yet in this session): default to the newest run
        runs = load_runs(db, version)
        run_id = runs["run_id"][0] if runs.height else None
        st.session_state[RUN_KEY] = run_id
    if not run_id:
        empty_state(db, f"The database `{db}` holds no runs yet.")
        return None
    return db, version, str(run_id)


def show_error(exc: BaseException) -> None:
    """A user-fixable problem as one line (the library's RoutescopeError message)."""
    st.error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@contextmanager
def guarded() -> Iterator[None]:
    """Show a RoutescopeError as one line instead of a traceback, and stop the page."""
    try:
        yield
    except RoutescopeError as exc:
        show_error(exc)
        st.stop()


def flash(message: str) -> None:
    """A success message that survives the st.rerun() after a save."""
    st.session_state["_flash"] = message


def show_flash() -> None:
    """Show (once) the message left by `flash`."""
    msg = st.session_state.pop("_flash", None)
    if msg:
        st.success(msg)


def _sync(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def run_picker(db: str) -> str | None:
    """Sidebar: the database path and the run. The choice lives in plain session_state keys
    (widget keys are per page under st.navigation), so it is kept across pages."""
    if not st.session_state.get("db_path"):
        st.session_state["db_path"] = db
    st.session_state["_db_widget"] = st.session_state["db_path"]
    st.sidebar.text_input(
        "Database",
        key="_db_widget",
        on_change=_sync,
        args=("_db_widget", "db_path"),
        help="A DuckDB file written by `routescope collect`, or a Parquet export directory.",
    )
    db = db_path()
    if not Path(db).exists():
        st.sidebar.caption("no database at this path")
        st.session_state[RUN_KEY] = None
        return None
    try:
        runs = load_runs(db, readable_version(db)[0])
    except RoutescopeError as exc:
        st.sidebar.error(str(exc).splitlines()[0])
        st.session_state[RUN_KEY] = None
        return None
    if runs.height == 0:
        st.sidebar.caption("the database holds no runs")
        st.session_state[RUN_KEY] = None
        return None
    ids = runs["run_id"].to_list()
    labels = {
        r["run_id"]: f"{r['name'] or r['run_id']} · {r['model_id']} · {r['tokens']:,} tok"
        for r in runs.iter_rows(named=True)
    }
    if st.session_state.get(RUN_KEY) not in ids:
        st.session_state[RUN_KEY] = ids[0]
    st.session_state["_run_widget"] = st.session_state[RUN_KEY]
    st.sidebar.selectbox(
        "Run",
        ids,
        key="_run_widget",
        format_func=lambda r: labels.get(r, r),
        on_change=_sync,
        args=("_run_widget", RUN_KEY),
    )
    return st.session_state[RUN_KEY]


def layer_select(layers: list[int], key: str, label: str = "Layer") -> int:
    """A layer picker whose choice is kept (in session_state[key]) when the user comes back."""
    if st.session_state.get(key) not in layers:
        from routescope.analysis.summary import default_layer

        st.session_state[key] = default_layer(layers)
    st.session_state[f"_{key}_widget"] = st.session_state[key]
    return int(
        st.selectbox(
            label, layers, key=f"_{key}_widget", on_change=_sync, args=(f"_{key}_widget", key)
        )
    )


def plot(fig: Any, key: str) -> None:
    """A plotly chart at full width."""
    st.plotly_chart(fig, key=key, width="stretch")


# ---- steering presets (routescope.steering.presets over a short-lived connection) -------------
@st.cache_data(show_spinner=False, max_entries=32)
def load_presets(db: str, version: str, model_id: str | None = None) -> pl.DataFrame:
    """Presets (of `model_id`, plus those bound to no model): name, edits, mode, layers, spec JSON."""
    from routescope.steering import presets as ps

    def q(store: Any) -> pl.DataFrame:
        frame = ps.list_presets(store.con)
        if model_id is not None:
            frame = frame.filter(pl.col("model_id").is_null() | (pl.col("model_id") == model_id))
        specs = [ps.get_preset(store.con, pid).spec.to_json() for pid in frame["preset_id"]]
        return frame.with_columns(pl.Series("spec", specs, dtype=pl.Utf8))

    return read(db, q)


def save_preset(db: str, name: str, model_id: str, spec: Any, preset_id: str | None = None) -> str:
    """Create (preset_id None) or update/rename a preset after validating it against the run's
    model; returns its id. A taken or empty name is a one-line PresetError."""
    from routescope.steering import presets as ps

    with open_store(db, write=True) as store:
        if preset_id is None:
            p = ps.create_preset(store.con, name, spec, model_id=model_id)
        else:
            p = ps.update_preset(store.con, preset_id, spec=spec, new_name=name.strip())
    load_presets.clear()
    return p.preset_id


def delete_preset(db: str, preset_id: str) -> None:
    from routescope.steering import presets as ps

    with open_store(db, write=True) as store:
        ps.delete_preset(store.con, preset_id)
    load_presets.clear()


def model_shape(info: dict[str, Any]) -> Any:
    """The run's `ModelShape` (what a steering spec is validated against)."""
    from routescope.core.shape import ModelShape

    return ModelShape.from_run_info(info)
