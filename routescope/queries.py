"""Named SQL queries over the routing store: find, describe and run the .sql files in queries/.

A named query is a .sql file whose leading `--` comment says what it answers, its parameters and its
columns. Parameters are DuckDB variables read with `getvariable('name')`, so the same file runs in
DuckDB's own CLI after `SET VARIABLE name = …;`. Here they are set from `name=value` strings whose
values are typed (ints stay ints, see `parse_value`). Queries run read-only unless writing is allowed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from routescope.core.errors import RoutescopeError

#: The queries shipped with routescope (queries/ at the top of the repository).
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "queries"
#: Extra query directories, separated by os.pathsep; searched before the built-in ones.
QUERIES_ENV = "ROUTESCOPE_QUERIES"

_VAR_RE = re.compile(r"getvariable\(\s*'(\w+)'\s*\)", re.I)
_NAME_RE = re.compile(r"[A-Za-z_][\w-]*")
_PARAM_NAME_RE = re.compile(r"[A-Za-z_]\w*")
_INT_RE = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT_RE = re.compile(r"-?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)")

#: Statement types that only read. Anything else is refused up front with a clear message, except a
#: MULTI statement (DuckDB's form of a dynamic PIVOT: a values query, then the select), whose parts
#: the Python API does not expose: it runs, and DuckDB's own read-only mode is what refuses a write.
READ_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.PRAGMA,
        duckdb.StatementType.SET,
        duckdb.StatementType.VARIABLE_SET,
        duckdb.StatementType.CALL,
    }
)


class QueryError(RoutescopeError):
    """A query cannot be found, its parameters are wrong, or DuckDB rejected it."""


class WriteRefusedError(QueryError):
    """A query would write to the store, which was opened read-only."""


@dataclass(frozen=True)
class NamedQuery:
    """One query: its name (file stem, or '<inline>'), SQL text, header description and parameters."""

    name: str
    sql: str
    path: Path | None = None
    description: str = ""
    params: tuple[str, ...] = ()
    param_docs: dict[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """The first line of the header: what the query answers."""
        return self.description.splitlines()[0] if self.description else ""


def _header(sql: str) -> list[str]:
    """The leading comment lines, without their `--` marker (blank lines end nothing before SQL)."""
    lines = []
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            lines.append(stripped[2:].rstrip())
        elif stripped:
            break
    return lines


def _parse_header(lines: list[str]) -> tuple[str, dict[str, str]]:
    """(description, {param: doc}) from a header in the queries/README.md convention."""
    desc: list[str] = []
    docs: dict[str, str] = {}
    section = "desc"
    indent: int | None = None
    current: str | None = None
    for line in lines:
        text = line.strip()
        head = re.fullmatch(r"(\w+):\s*(.*)", text)
        if head and not line.startswith("  ") and head.group(1).lower() in ("params", "columns"):
            section = head.group(1).lower()
            current = None
            continue
        if section == "desc":
            desc.append(text)
        elif section == "params" and text:
            depth = len(line) - len(line.lstrip())
            m = re.fullmatch(r"(\w+)\s+(.*)", text)
            if m and (indent is None or depth <= indent):
                indent = depth
                current = m.group(1)
                docs[current] = m.group(2).strip()
            elif current is not None:
                docs[current] += " " + text
    return "\n".join(x for x in desc if x), docs


def query_from_sql(sql: str, name: str = "<inline>", path: Path | None = None) -> NamedQuery:
    """A `NamedQuery` from SQL text: parameters are the variables it reads."""
    description, docs = _parse_header(_header(sql))
    params = tuple(dict.fromkeys(m.group(1) for m in _VAR_RE.finditer(sql)))
    return NamedQuery(name, sql, path, description, params, docs)


def query_from_file(path: str | Path) -> NamedQuery:
    """Load a .sql file as a query named after its stem."""
    p = Path(path)
    try:
        sql = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise QueryError(f"cannot read query file {p}: {exc.strerror or exc}") from None
    return query_from_sql(sql, name=p.stem, path=p)


def query_dirs() -> list[Path]:
    """Where named queries are looked up: $ROUTESCOPE_QUERIES directories, then the built-in ones."""
    extra = [Path(d) for d in os.environ.get(QUERIES_ENV, "").split(os.pathsep) if d]
    return [*extra, BUILTIN_DIR]


def list_queries(dirs: list[Path] | None = None) -> list[NamedQuery]:
    """All named queries, sorted by name; an earlier directory's query shadows a later namesake."""
    found: dict[str, NamedQuery] = {}
    for d in dirs if dirs is not None else query_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.sql")):
            found.setdefault(f.stem, query_from_file(f))
    return [found[k] for k in sorted(found)]


def get_query(name: str, dirs: list[Path] | None = None) -> NamedQuery:
    """The named query `name`; an unknown name is an error that lists the known ones."""
    for d in dirs if dirs is not None else query_dirs():
        f = d / f"{name}.sql"
        if f.is_file():
            return query_from_file(f)
    known = ", ".join(q.name for q in list_queries(dirs)) or "none found"
    raise QueryError(
        f"no named query {name!r}; known: {known} (`routescope sql --list` describes them)"
    )


def resolve_query(spec: str, dirs: list[Path] | None = None) -> NamedQuery:
    """NAME of a named query, a FILE ending in .sql (or any existing file), or inline SQL text."""
    spec = spec.strip()
    if not spec:
        raise QueryError("empty query; give a query name, a .sql file or SQL text")
    if spec.lower().endswith(".sql") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise QueryError(f"query file {spec} does not exist")
        return query_from_file(spec)
    if _NAME_RE.fullmatch(spec):
        return get_query(spec, dirs)
    return query_from_sql(spec)


def parse_value(text: str) -> Any:
    """Type a parameter value: 12 → int, 0.5 / 1e-3 → float, true/false → bool, null → None,
    [..] / {..} → JSON, 'x' or "x" → the string x; anything else stays a string (so 007 does too).
    """
    t = text.strip()
    low = t.lower()
    if _INT_RE.fullmatch(t):
        return int(t)
    if _FLOAT_RE.fullmatch(t):
        return float(t)
    if low in ("true", "false"):
        return low == "true"
    if low == "null":
        return None
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if t[:1] in "[{":
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            raise QueryError(f"parameter value {t!r} looks like JSON but does not parse") from None
    return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`["k=v", …]` → {k: typed v}; a malformed item is a clear error."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _PARAM_NAME_RE.fullmatch(key):
            raise QueryError(f"bad parameter {item!r}; write it as name=value, e.g. run_id=abc123")
        out[key] = parse_value(value)
    return out


def connection_is_read_only(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether DuckDB itself refuses writes to the connection's current database."""
    rows = con.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    return bool(rows and rows[0][0])


def _first_line(msg: str) -> str:
    lines = [x for x in str(msg).strip().splitlines() if x.strip()]
    return lines[0] if lines else str(msg)


def _refuse(query: NamedQuery, what: str) -> WriteRefusedError:
    return WriteRefusedError(
        f"query {query.name} would write ({what}) but the store is open read-only; "
        "rerun with --write to allow changes"
    )


#: Parameters that name a run: a run's name is accepted too, and an unknown run is a clear error.
RUN_PARAMS = ("run_id", "base_run_id")


def _resolve_runs(
    con: duckdb.DuckDBPyConnection, query: NamedQuery, params: dict[str, Any]
) -> dict[str, Any]:
    """Map run names to run ids (newest first) and refuse runs the store does not hold."""
    out = dict(params)
    for key in RUN_PARAMS:
        if out.get(key) is None:
            continue
        value = str(out[key])
        try:
            row = con.execute(
                "SELECT run_id FROM runs WHERE run_id = ? OR name = ? "
                "ORDER BY run_id = ? DESC, created_at DESC LIMIT 1",
                [value, value, value],
            ).fetchone()
            known = [
                r[0]
                for r in con.execute(
                    "SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 10"
                ).fetchall()
            ]
        except duckdb.Error:  # no runs table (an arbitrary database): leave the value alone
            continue
        if row is None:
            hint = ", ".join(known) if known else "the store holds no runs"
            raise QueryError(
                f"query {query.name}: no run {value!r} ({key}); newest runs: {hint} "
                "(`routescope sql runs` lists them all)"
            )
        out[key] = row[0]
    return out


def run_query(
    con: duckdb.DuckDBPyConnection,
    query: NamedQuery,
    params: dict[str, Any] | None = None,
    allow_write: bool = False,
) -> pa.Table:
    """Run `query` on `con` with `params` set as DuckDB variables; the last statement's rows.

    The query's variables not given in `params` are reset, so its defaults apply. Without
    `allow_write`, statements other than reads are refused before anything runs, and what the
    statement types cannot tell (a dynamic PIVOT is one MULTI statement) is left to DuckDB: on a
    read-only connection it refuses writes itself; on a writable one the query runs inside a
    transaction that is rolled back, so nothing it does persists.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(query.params))
    if unknown:
        takes = ", ".join(query.params) or "none"
        raise QueryError(
            f"query {query.name} has no parameter {', '.join(unknown)}; its parameters: {takes}"
        )
    try:
        statements = con.extract_statements(query.sql)
    except duckdb.Error as exc:
        raise QueryError(f"query {query.name}: {_first_line(str(exc))}") from None
    if not statements:
        raise QueryError(f"query {query.name} holds no SQL statement")
    guard = False  # roll back whatever a read-only query did on a writable connection
    if not allow_write:
        for st in statements:
            if st.type not in READ_STATEMENTS and st.type != duckdb.StatementType.MULTI:
                raise _refuse(query, f"{st.type.name} statement")
        guard = not connection_is_read_only(con)
    params = _resolve_runs(con, query, params)
    try:
        if guard:
            con.execute("BEGIN TRANSACTION")
        for name in query.params:
            if name in params:
                con.execute(f"SET VARIABLE {name} = ?", [params[name]])
            else:
                con.execute(f"RESET VARIABLE {name}")
        for st in statements[:-1]:
            con.execute(st.query)
        rel = con.sql(statements[-1].query)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as exc:
        msg = _first_line(str(exc))
        if "read-only" in msg:
            raise _refuse(query, msg) from None
        raise QueryError(f"query {query.name} failed: {msg}") from None
    finally:
        if guard:
            con.execute("ROLLBACK")
