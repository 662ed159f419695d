"""routescope dashboard: `routescope app [--db FILE]` (or `streamlit run app/main.py -- --db FILE`).

The entry script: page config, the sidebar (database and run, kept in session_state across pages)
and the navigation between the pages in app/pages/. Every number comes from `routescope.*`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _shared` from the pages

import _shared  # noqa: E402

st.set_page_config(page_title="routescope", page_icon="🔀", layout="wide")

PAGES = Path(__file__).resolve().parent / "pages"
pages = [
    st.Page(PAGES / "1_runs.py", title="Runs", icon="🗂️", default=True),
    st.Page(PAGES / "2_tokens.py", title="Tokens", icon="🔤"),
    st.Page(PAGES / "3_experts.py", title="Experts", icon="🧩"),
    st.Page(PAGES / "4_locality.py", title="Locality and caching", icon="📦"),
    st.Page(PAGES / "5_localization.py", title="Localization", icon="🎯"),
    st.Page(PAGES / "6_steering.py", title="Steering", icon="🕹️"),
    st.Page(PAGES / "7_sql.py", title="SQL", icon="🗄️"),
]
nav = st.navigation(pages)
st.sidebar.title("routescope")
_shared.run_picker(_shared.db_path())
nav.run()
