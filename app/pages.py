"""The dashboard's pages, in one table: `main.py` builds `st.navigation` from it, the app tests
iterate it, and the README's page table lists the same titles (a test holds them together).

A page is a script in `views/` (not `pages/`: that folder name would switch on Streamlit's older
automatic page list) or, with `switch_to`, a page with no script that switches to another page.
No streamlit import here: this module is plain data, importable by the tests.

To add a page: write `views/N_name.py`, add a `Page` row below, and a row to the README's page
table; `tests/e2e/app/test_app.py` then renders it on the fixture store, on an empty store and
(when `read_only_ok`) on a Parquet export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Page:
    """One page of the dashboard and what it needs."""

    key: str  #: short name (tests, session keys)
    title: str  #: shown in the sidebar and the browser tab
    url_path: str  #: served at /<url_path>
    file: str | None = None  #: its script, relative to app/ (None with `switch_to`)
    icon: str | None = None  #: a Streamlit icon (":material/...:")
    default: bool = False  #: the page Streamlit serves at `/`
    hidden: bool = False  #: left out of the sidebar
    switch_to: str | None = None  #: a page with no script: switches to the page with this key
    read_only_ok: bool = True  #: works in full on a read-only store (a Parquet export)
    needs_model: bool = False  #: loads the run's model (generation), not only the store
    reads: str = ""  #: what it reads from the store (DESIGN §7: only what it shows)

    @property
    def path(self) -> Path | None:
        """The script's absolute path (None for a switching page)."""
        return None if self.file is None else APP_DIR / self.file


#: Every page in sidebar order. Streamlit serves the default page at `/` only, so a default Runs
#: page would answer `/runs` with "Page not found"; the hidden default `start` switches to Runs,
#: which keeps its own URL.
PAGES: tuple[Page, ...] = (
    Page(
        key="start",
        title="Runs",
        url_path="start",
        default=True,
        hidden=True,
        switch_to="runs",
        reads="nothing (switches to Runs)",
    ),
    Page(
        key="runs",
        title="Runs",
        url_path="runs",
        file="views/1_runs.py",
        icon=":material/table_rows:",
        reads="the runs table and counts; the picked run's metadata",
    ),
    Page(
        key="tokens",
        title="Tokens",
        url_path="tokens",
        file="views/2_tokens.py",
        icon=":material/text_fields:",
        reads="the sequence list, then one sequence's routing and its token strings",
    ),
    Page(
        key="experts",
        title="Experts",
        url_path="experts",
        file="views/3_experts.py",
        icon=":material/grid_view:",
        reads="specialization results from the store's results memo (computed once, streamed)",
    ),
    Page(
        key="locality",
        title="Locality and caching",
        url_path="locality",
        file="views/4_locality.py",
        icon=":material/memory:",
        reads="consistency and cache results from the store's results memo (computed once, "
        "streamed)",
    ),
    Page(
        key="prefetch",
        title="Prefetch and offloading",
        url_path="prefetch",
        file="views/8_prefetch.py",
        icon=":material/bolt:",
        reads="prefetch recall and offloading what-if results from the store's results memo "
        "(computed once, streamed)",
    ),
    Page(
        key="localization",
        title="Localization",
        url_path="localization",
        file="views/5_localization.py",
        icon=":material/target:",
        reads="localization results from the store's results memo (computed once, streamed)",
    ),
    Page(
        key="steering",
        title="Steering",
        url_path="steering",
        file="views/6_steering.py",
        icon=":material/tune:",
        read_only_ok=False,
        needs_model=True,
        reads="presets and notes; the model for the playground",
    ),
    Page(
        key="sql",
        title="SQL",
        url_path="sql",
        file="views/7_sql.py",
        icon=":material/database:",
        reads="what the query asks for (read-only)",
    ),
)


def page(key: str) -> Page:
    """The page with this key (a clear error listing the keys)."""
    for p in PAGES:
        if p.key == key:
            return p
    raise KeyError(f"no dashboard page {key!r}; pages are {', '.join(p.key for p in PAGES)}")


def visible() -> list[Page]:
    """The pages listed in the sidebar, in order."""
    return [p for p in PAGES if not p.hidden]


def scripts() -> dict[str, str]:
    """key → script path relative to app/ of every page with a script (what AppTest switches to)."""
    return {p.key: p.file for p in PAGES if p.file is not None}


def check() -> None:
    """The table is consistent: unique keys and URLs, one default, each page a script that exists
    or a switch to a page that has one."""
    keys = [p.key for p in PAGES]
    urls = [p.url_path for p in PAGES]
    problems = []
    if len(set(keys)) != len(keys):
        problems.append(f"repeated keys in {keys}")
    if len(set(urls)) != len(urls):
        problems.append(f"repeated url paths in {urls}")
    if sum(p.default for p in PAGES) != 1:
        problems.append("not exactly one default page")
    for p in PAGES:
        if (p.file is None) == (p.switch_to is None):
            problems.append(f"{p.key}: give either a file or switch_to")
        if p.path is not None and not p.path.is_file():
            problems.append(f"{p.key}: no script {p.path}")
        if p.switch_to is not None and scripts().get(p.switch_to) is None:
            problems.append(f"{p.key}: switches to {p.switch_to!r}, which has no script")
    if problems:
        raise ValueError("app/pages.py: " + "; ".join(problems))
