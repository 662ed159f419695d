"""routescope dashboard: `routescope app [--db FILE]` (or `streamlit run app/main.py -- --db FILE`).

The entry script: page config, the sidebar (database and run, kept in session_state across pages)
and the navigation between the pages in app/views/ (not pages/: that name would switch on Streamlit's older automatic page list). Every number comes from `routescope.*`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _shared` from the pages

import _shared  # noqa: E402

st.set_page_config(page_title="routescope", page_icon=":material/alt_route:", layout="wide")

VIEWS = Path(__file__).resolve().parent / "views"
runs = st.Page(VIEWS / "1_runs.py", url_path="runs", title="Runs", icon=":material/table_rows:")


def _start() -> None:
    """The app's root `/`: switch to Runs at `/runs`.

    Streamlit serves the default page at `/` only, so a default Runs page would answer `/runs`
    with "Page not found"; this hidden default keeps Runs an ordinary page at its own URL.
    """
    st.switch_page(runs)


start = st.Page(_start, url_path="start", title="Runs", visibility="hidden", default=True)
pages = [
    start,
    runs,
    st.Page(
        VIEWS / "2_tokens.py", url_path="tokens", title="Tokens", icon=":material/text_fields:"
    ),
    st.Page(
        VIEWS / "3_experts.py", url_path="experts", title="Experts", icon=":material/grid_view:"
    ),
    st.Page(
        VIEWS / "4_locality.py",
        url_path="locality",
        title="Locality and caching",
        icon=":material/memory:",
    ),
    st.Page(
        VIEWS / "5_localization.py",
        url_path="localization",
        title="Localization",
        icon=":material/target:",
    ),
    st.Page(VIEWS / "6_steering.py", url_path="steering", title="Steering", icon=":material/tune:"),
    st.Page(VIEWS / "7_sql.py", url_path="sql", title="SQL", icon=":material/database:"),
]
nav = st.navigation(pages)
if nav is start:
    nav.run()  # switches to Runs before the sidebar is drawn (no store is read twice)
st.sidebar.title("routescope")
_shared.run_picker(_shared.db_path())
nav.run()
