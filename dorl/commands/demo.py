"""`dorl demo`: the whole path on the bundled real sample, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="Folder for the report and every artifact.")] = Path(
        "dorl-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Shortened schedule (what CI runs).")] = False,
) -> None:
    """Train, evaluate, export (FP32/FP16/INT8), adapt and benchmark on the bundled sample."""
    from dorl.demo import DemoConfig, run_demo
    from dorl.training.progress import RichReporter

    with RichReporter() as reporter:
        path = run_demo(output, DemoConfig(quick=quick), say=lambda line: typer.echo(line, err=True),
                        reporter=reporter)
    typer.echo(f"report written to {path}")
