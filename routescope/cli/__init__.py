"""`routescope …`: a thin shell over the library. Each module below registers its own commands."""

from __future__ import annotations

import sys

from routescope.cli import (  # noqa: F401  (imported for their command registrations)
    analyze,
    collect,
    dashboard,
    demo,
    families,
    importer,
    localize,
    merge,
    presets,
    runs,
    simulate,
    sql,
    steer,
    summarize,
)
from routescope.cli._app import app
from routescope.core.errors import RoutescopeError


def _is_usage_error(exc: BaseException) -> bool:
    """A click usage/parameter error, from click itself or the copy typer ≥ 0.29 vendors.

    Both raise classes named ClickException/UsageError with `format_message()` and `exit_code`;
    typer's copy does not derive from click's, so the test is by shape, not by one base class.
    """
    return any(
        cls.__name__ == "ClickException" and cls.__module__.endswith("click.exceptions")
        for cls in type(exc).__mro__
    ) and hasattr(exc, "format_message")


def _is_abort(exc: BaseException) -> bool:
    """click's or typer's Abort (Ctrl-C or EOF at a prompt)."""
    return type(exc).__name__ == "Abort"


def _usage_line(exc: Exception) -> str:
    """One line for a usage error: the message, and where to look for the right usage."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "routescope"
    return f"error: {message} (see `{command} --help`)"


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(
            standalone_mode=False, prog_name="routescope"
        )  # typer.Exit(n) comes back as the return value here
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
        if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):
            exc.show()  # `routescope` alone, or a group without a command: its help
            sys.exit(2)
        if _is_usage_error(exc):
            print(_usage_line(exc), file=sys.stderr)
            sys.exit(int(getattr(exc, "exit_code", 2) or 2))
        if _is_abort(exc):
            print("aborted", file=sys.stderr)
            sys.exit(130)
        raise
