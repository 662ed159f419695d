"""SQL: the named queries of queries/ and a free editor, on a read-only connection; results as a
table with CSV download."""

from __future__ import annotations

import json

import _shared as sh
import polars as pl
import streamlit as st

from routescope import queries as q
from routescope.store.dataset import connect_store


def _run(db: str, query: q.NamedQuery, params: dict) -> pl.DataFrame:
    """Run a query read-only (opened for this query only, so a collection job is not blocked)."""
    con = connect_store(db, read_only=True)
    try:
        return pl.from_arrow(q.run_query(con, query, params))  # type: ignore[return-value]
    finally:
        con.close()


def _csv(frame: pl.DataFrame) -> bytes:
    """CSV bytes; list and struct cells (e.g. experts, moe_layers) are written as JSON text."""
    nested = [c for c, t in frame.schema.items() if t.is_nested()]
    if nested:
        frame = frame.with_columns(
            pl.col(c).map_elements(
                lambda v: json.dumps(v.to_list() if isinstance(v, pl.Series) else v, default=str),
                return_dtype=pl.Utf8,
            )
            for c in nested
        )
    return frame.write_csv().encode()


def _show(frame: pl.DataFrame, key: str) -> None:
    st.caption(f"{frame.height:,} row(s)")
    st.dataframe(frame.head(10_000), hide_index=True, key=f"{key}_table")
    st.download_button(
        "Download CSV",
        _csv(frame),
        file_name=f"{key}.csv",
        mime="text/csv",
        key=f"{key}_csv",
    )


st.title("SQL")
db = sh.db_path()
run = sh.current_run()
if run is None:
    st.stop()
db, _version, run_id = run

named, free = st.tabs(["Named queries", "Editor"])
with named:
    with sh.guarded():
        queries = q.list_queries()
    by_name = {x.name: x for x in queries}
    name = st.selectbox(
        "Query",
        list(by_name),
        format_func=lambda n: f"{n} — {by_name[n].summary}",
        key="named_query",
    )
    query = by_name[name]
    if query.description:
        st.markdown(query.description.replace("\n", "  \n"))
    params: dict = {}
    for p in query.params:
        default = run_id if p == "run_id" else ""
        text = st.text_input(
            p,
            value=default,
            placeholder="empty: the query's default",
            help=query.param_docs.get(p),
            key=f"param_{name}_{p}",
        )
        if text.strip():
            params[p] = q.parse_value(text.strip())
    with st.expander("SQL"):
        st.code(query.sql, language="sql")
    if st.button("Run query", key="run_named"):
        with sh.guarded():
            st.session_state["named_result"] = (name, _run(db, query, params))
    res = st.session_state.get("named_result")
    if res is not None and res[0] == name:
        _show(res[1], name)

with free:
    st.caption(
        "Read-only: SELECT over runs, sequences, tokens, routes, route_choices, expert_notes, "
        "steering_presets, … Variables set with `SET VARIABLE x = …;` work as in duckdb."
    )
    sql = st.text_area(
        "SQL",
        value=f"SELECT layer, expert, count(*) AS n\nFROM route_choices\nWHERE run_id = '{run_id}'"
        "\nGROUP BY ALL ORDER BY n DESC LIMIT 20",
        height=160,
        key="free_sql",
    )
    if st.button("Run", key="run_free"):
        with sh.guarded():
            st.session_state["free_result"] = _run(db, q.query_from_sql(sql), {})
    res = st.session_state.get("free_result")
    if res is not None:
        _show(res, "query")
