"""CLI command `routescope sql`: run a named query, a .sql file or SQL text on the routing store."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.core.errors import RoutescopeError


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _plain(value: Any) -> Any:
    """A JSON-friendly form of one Arrow→Python value (timestamps as ISO text, NaN as null)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cell(value: Any) -> str:
    """Text of one value for csv and the rich table (lists as JSON, floats to 6 significant digits)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(_plain(value))
    return str(_plain(value))


def _to_csv(table: pa.Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(
            [
                json.dumps(_plain(v)) if isinstance(v, list | dict) else _plain(v)
                for v in row.values()
            ]
        )
    return buf.getvalue()


def _to_json(table: pa.Table) -> str:
    rows = [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]
    return json.dumps(rows, ensure_ascii=False) + "\n"


def _render_table(table: pa.Table, title: str, max_rows: int, file: Any | None) -> None:
    """A rich table of the first `max_rows` rows, saying how many there are in all."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=200 if file is not None else None)
    shown = table.slice(0, max_rows) if max_rows >= 0 else table
    out = Table(title=title, title_justify="left")
    headers_fit = sum(len(n) + 3 for n in table.column_names) + 1 <= console.width
    for name, typ in zip(table.column_names, table.schema.types, strict=True):
        numeric = pa.types.is_integer(typ) or pa.types.is_floating(typ)
        out.add_column(
            name,
            justify="right" if numeric else "left",
            overflow="fold",
            min_width=len(name) if headers_fit else None,
        )
    for row in shown.to_pylist():
        out.add_row(*(_cell(v) for v in row.values()))
    console.print(out)
    n = table.num_rows
    if shown.num_rows < n:
        console.print(
            f"showing {shown.num_rows} of {n} rows; --max-rows N shows more, --format csv all"
        )
    else:
        console.print(f"{n} row{'s' if n != 1 else ''}")


def _list_queries() -> None:
    from rich.console import Console
    from rich.table import Table

    from routescope.queries import list_queries, query_dirs

    queries = list_queries()
    out = Table(title="Named queries (routescope sql NAME --param k=v)", title_justify="left")
    out.add_column("name", style="bold", no_wrap=True)
    out.add_column("answers")
    out.add_column("parameters")
    for q in queries:
        params = "\n".join(f"{p}: {q.param_docs[p]}" if p in q.param_docs else p for p in q.params)
        out.add_row(q.name, q.description, params or "-")
    console = Console()
    console.print(out)
    console.print("looked in: " + ", ".join(str(d) for d in query_dirs()))


@app.command("sql")
def sql_command(
    query: Annotated[
        str | None,
        typer.Argument(help="A named query (see --list), a .sql file, or SQL text in quotes."),
    ] = None,
    db: Annotated[
        Path,
        typer.Option(help="DuckDB store file, or a Parquet export directory."),
    ] = Path(DEFAULT_DB),
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="name=value for a query variable (repeatable); 12 stays an int, 'x' a string.",
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result to this file.")
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the named queries with what they answer.")
    ] = False,
    write: Annotated[
        bool, typer.Option("--write", help="Open the store for writing and allow changes.")
    ] = False,
    max_rows: Annotated[int, typer.Option(help="Rows shown by --format table (-1: all).")] = 50,
) -> None:
    """Run SQL on the routing store: named queries, .sql files or inline SQL (read-only by default)."""
    from routescope.queries import parse_params, resolve_query, run_query
    from routescope.store.dataset import connect_store

    if list_:
        _list_queries()
        return
    if query is None:
        raise RoutescopeError("give a query name, a .sql file or SQL text (or --list to see names)")
    if fmt is OutputFormat.parquet and output is None:
        raise RoutescopeError("--format parquet writes a file: add --output FILE.parquet")
    if write and db.is_dir():
        raise RoutescopeError(
            f"--write needs a DuckDB file; {db} is a Parquet export, which is read-only"
        )
    named = resolve_query(query)
    params = parse_params(param)
    con = connect_store(db, read_only=not write)
    try:
        table = run_query(con, named, params, allow_write=write)
    finally:
        con.close()
    try:
        _emit(table, named.name, fmt, output, max_rows)
    except OSError as exc:
        raise RoutescopeError(
            f"cannot write {output or 'the output'}: {exc.strerror or exc}; check the path"
        ) from None


def _emit(
    table: pa.Table, title: str, fmt: OutputFormat, output: Path | None, max_rows: int
) -> None:
    """Write the result in the chosen format to `output` or stdout."""
    if fmt is OutputFormat.parquet:
        import pyarrow.parquet as pq

        assert output is not None
        pq.write_table(table, output)
        print(f"wrote {table.num_rows} rows to {output}", file=sys.stderr)
        return
    if fmt is OutputFormat.table:
        if output is None:
            _render_table(table, title, max_rows, None)
        else:
            with output.open("w", encoding="utf-8") as fh:
                _render_table(table, title, max_rows, fh)
        return
    text = _to_csv(table) if fmt is OutputFormat.csv else _to_json(table)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {table.num_rows} rows to {output}", file=sys.stderr)
