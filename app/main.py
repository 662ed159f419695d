"""routescope dashboard: `routescope app [--db FILE]` (or `streamlit run app/main.py -- --db FILE`).

The entry script: page config, the sidebar (database and run, kept in session_state across pages)
and the navigation, built from the page table in `pages.py` (scripts in app/views/). Every number
comes from `routescope.*`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import _shared` from the pages

import _shared  # noqa: E402
import pages as manifest  # noqa: E402

st.set_page_config(page_title="routescope", page_icon=":material/alt_route:", layout="wide")


def _switcher(target: st.Page) -> Callable[[], None]:
    """A page body that only switches to `target` (the hidden default at `/` uses it)."""

    def switch() -> None:
        st.switch_page(target)

    return switch


def _visibility(p: manifest.Page) -> str:
    return "hidden" if p.hidden else "visible"


built: dict[str, st.Page] = {
    p.key: st.Page(
        p.path,
        url_path=p.url_path,
        title=p.title,
        icon=p.icon,
        default=p.default,
        visibility=_visibility(p),
    )
    for p in manifest.PAGES
    if p.path is not None
}
for p in manifest.PAGES:
    if p.switch_to is not None:
        built[p.key] = st.Page(
            _switcher(built[p.switch_to]),
            url_path=p.url_path,
            title=p.title,
            icon=p.icon,
            default=p.default,
            visibility=_visibility(p),
        )
nav = st.navigation([built[p.key] for p in manifest.PAGES])
if any(nav is built[p.key] for p in manifest.PAGES if p.switch_to is not None):
    nav.run()  # switches before the sidebar is drawn (no store is read twice)
st.sidebar.title("routescope")
_shared.run_picker(_shared.db_path())
nav.run()
