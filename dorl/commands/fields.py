"""`dorl fields`: find and classify every white cell of whole camera frames, streaming JSON Lines."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from dorl.commands.common import (
    BackendOption,
    BatchSizeOption,
    SiteOption,
    ThresholdOption,
    TtaOption,
    user_errors,
)


@user_errors
def fields(
    artifact: Annotated[Path, typer.Argument(help="An exported ONNX artifact folder or a TensorRT engine folder.")],
    frames: Annotated[list[Path], typer.Argument(help="Frame files, or folders searched recursively for frames.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", "--out", help="Write the records to this file instead of standard output.")] = None,
    batch_size: BatchSizeOption = 8,
    threshold: ThresholdOption = 0.5,
    backend: BackendOption = "auto",
    site: SiteOption = None,
    no_cell_check: Annotated[bool, typer.Option(
        "--no-cell-check", help="Label every cell found, even one whose mask or feature says it holds no white cell.")
    ] = False,
    tta: TtaOption = None,
) -> None:
    """One JSON line per white cell (box, crop box, edge, mask, label, probabilities), per empty or unreadable frame.

    Exit codes as `dorl predict`'s: 0 all labelled, 3 some frames unreadable or cells unlabelled, 4 none labelled.
    """
    from dorl.fields.run import FieldRequest, run_fields
    from dorl.runtime.options import AnalyzerOptions
    from dorl.runtime.stream import stop_on_signals

    request = FieldRequest(AnalyzerOptions(artifact, batch_size, threshold, backend, site, not no_cell_check, tta),
                           tuple(frames))
    if output is not None:
        check_records_output(output, artifact, site, frames)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        opened: list[TextIO] = []

        def emit(record: dict) -> None:
            if not opened:  # at the first record: a run refused before it leaves an earlier file as it was
                if output is not None:
                    output.parent.mkdir(parents=True, exist_ok=True)
                opened.append(stack.enter_context(open(output, "w", encoding="utf-8")) if output is not None
                              else sys.stdout)
            opened[0].write(json.dumps(record, allow_nan=False) + "\n")
            opened[0].flush()

        tally = run_fields(request, emit, stop, warn=lambda m: typer.secho(f"warning: {m}", fg="yellow", err=True))
    typer.echo(tally.summary(), err=True)
    raise typer.Exit(tally.exit_code())


def check_records_output(output: Path, artifact: Path, site: Path | None, frames: list[Path]) -> None:
    """Refuse a records file that is a folder, an input frame, or inside an artifact, before any work."""
    from dorl.safe_write import check_output

    given = [artifact, *([site] if site is not None else []), *(f for f in frames if not f.is_dir())]
    check_output(output, folder=False, overwrite=True, inputs=given, input_folders=[f for f in frames if f.is_dir()])
