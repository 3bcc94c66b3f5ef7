"""Helpers shared by the command modules: error reporting and console output."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from dorl.errors import DorlError

F = TypeVar("F", bound=Callable[..., Any])


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print an error sentence on stderr and exit with `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(func: F) -> F:
    """Turn a DorlError raised by library code into a one-line message and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DorlError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]
