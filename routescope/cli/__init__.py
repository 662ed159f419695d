"""`routescope …`: a thin shell over the library. Each module below registers its own commands."""

from __future__ import annotations

import sys

from routescope.cli import (  # noqa: F401  (imported for their command registrations)
    analyze,
    collect,
    compare,
    dashboard,
    demo,
    localize,
    misc,
    scale,
    sql,
    steer,
)
from routescope.cli._app import app
from routescope.errors import RoutescopeError


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)  # typer.Exit(n) comes back as the return value here
        if isinstance(code, int) and code:
            sys.exit(code)
    except RoutescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(130)
        raise
