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
pages = [
    st.Page(
        VIEWS / "1_runs.py",
        url_path="runs",
        title="Runs",
        icon=":material/table_rows:",
        default=True,
    ),
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
st.sidebar.title("routescope")
_shared.run_picker(_shared.db_path())
nav.run()
