"""Helpers shared by the command modules: error reporting, console output, and the analyzer's options."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dorl.errors import DorlError

F = TypeVar("F", bound=Callable[..., Any])

# The options every command that runs the Analyzer on cells takes, spelt once.
BACKEND_HELP = "auto (from the artifact), onnxruntime or tensorrt."
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Cells per inference call.")]
ThresholdOption = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Top probability below which a cell is flagged uncertain.")]
BackendOption = Annotated[str, typer.Option(help=BACKEND_HELP)]
SiteOption = Annotated[Path | None, typer.Option(help="Site profile from `dorl adapt` for this lab.")]
TtaOption = Annotated[str | None, typer.Option(
    help="Test-time augmentation: none, or flips (each cell is also classified flipped left-right, up-down and "
         "both, and the four probabilities averaged: 4 classifying passes per cell). Default: what the artifact "
         "records (flips for models trained by this dorl, none for older ones).")]


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
