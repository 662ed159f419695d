"""CLI commands: dashboard (`routescope app`)."""

from routescope.cli._app import app  # noqa: F401
