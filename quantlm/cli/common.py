"""Shared CLI helpers: store option, error and warning reporting.

Errors and warnings are printed without hard wrapping (rich `soft_wrap=True`): a path or key in a
message is never broken across lines, whatever the terminal width; the terminal may still fold
long lines visually.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from quantlm.data.schema import DataValidationError

console = Console()
err_console = Console(stderr=True)

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Store directory (default: $QUANTLM_STORE or ./data/store)."),
]


def store_from(path: Path | None):
    """Open the store at `path` (or the default one)."""
    from quantlm.data.store import Store

    return Store(path)


def fail(message: str, code: int = 2) -> None:
    """Print an error to stderr (unwrapped) and exit with `code` (2: a user error)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print a warning (unwrapped) with the command's other output."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """Print a note (unwrapped), e.g. a metric that was skipped."""
    console.print(f"note: {escape(message)}", highlight=False, soft_wrap=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known user errors (bad data, missing files, bad configs) into a clear message + exit 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataValidationError as e:
            fail(str(e))
        except (FileNotFoundError, NotADirectoryError) as e:
            fail(str(e))
        except ValueError as e:
            if getattr(e, "user_facing", False):
                fail(str(e))
            raise
        return None

    return wrapper


