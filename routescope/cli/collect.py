"""CLI commands: collect."""

from routescope.cli._app import analyze_app, app  # noqa: F401
