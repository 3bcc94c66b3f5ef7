"""`dorl fields`: find and classify every white cell of whole camera frames, streaming JSON Lines."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import BackendOption, BatchSizeOption, SiteOption, ThresholdOption, user_errors


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
) -> None:
    """One JSON line per white cell (box, crop box, edge, mask, label, probabilities), per empty or unreadable frame."""
    from dorl.fields.analysis import analyze_fields
    from dorl.fields.records import CELL, ERROR, write_records
    from dorl.fields.report import collect_frames
    from dorl.runtime.analyzer import Analyzer

    files = collect_frames(frames)
    counts = {CELL: 0, "frames": 0, ERROR: 0, "edge": 0}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8")) if output is not None else sys.stdout
        analyzer = stack.enter_context(
            Analyzer(artifact, backend=backend, batch_size=batch_size, threshold=threshold, site=site))
        for frame in write_records(analyze_fields(files, analyzer), out):
            counts["frames"] += 1
            counts[CELL] += len(frame.cells)
            counts["edge"] += sum(c.edge for c in frame.cells)
            counts[ERROR] += frame.error is not None
    typer.echo(f"{counts['frames']} frames: {counts[CELL]} white cells ({counts['edge']} cut by the edge), "
               f"{counts[ERROR]} frames unreadable.", err=True)
