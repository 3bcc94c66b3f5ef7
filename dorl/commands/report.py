"""`dorl report`: a slide's white-cell differential and review gallery, from camera frames or field records."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import (
    BackendOption,
    BatchSizeOption,
    SiteOption,
    ThresholdOption,
    TtaOption,
    console,
    fail,
    user_errors,
)


@user_errors
def report(
    sources: Annotated[list[Path], typer.Argument(
        help="Folders or files of camera frames (with --artifact), or one cells.jsonl written by `dorl fields`.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="Report folder to write.")],
    artifact: Annotated[Path | None, typer.Option(
        help="Exported ONNX artifact or TensorRT engine folder that analyses the frames.")] = None,
    min_cells: Annotated[int, typer.Option("--min-cells", min=1, help="Warn below this many counted cells.")] = 100,
    gallery: Annotated[bool, typer.Option("--gallery/--no-gallery", help="Write the review gallery.")] = True,
    batch_size: BatchSizeOption = 8,
    threshold: ThresholdOption = 0.5,
    backend: BackendOption = "auto",
    site: SiteOption = None,
    tta: TtaOption = None,
) -> None:
    """Count the slide's white cells by type (percentages with 95 % intervals) and write the review gallery."""
    from dorl.fields.report import field_report

    records = sources[0] if len(sources) == 1 and sources[0].suffix == ".jsonl" else None
    if records is not None:
        files = field_report(output, records=records, min_cells=min_cells, gallery=gallery)
    elif artifact is None:
        fail("analysing frames needs --artifact (an exported ONNX or engine folder); or give one cells.jsonl.")
    else:
        from dorl.runtime.options import AnalyzerOptions

        options = AnalyzerOptions(artifact, batch_size, threshold, backend, site, tta=tta)
        options.check_values()  # every option before the model is loaded, as predict does
        checked = options.check_artifact()
        for note in checked.notes:
            typer.secho(f"warning: {note}", fg="yellow", err=True)
        with options.open(checked.batch_size) as analyzer, _progress() as advance:
            files = field_report(output, frames=sources, analyzer=analyzer, min_cells=min_cells, gallery=gallery,
                                 on_frame=lambda _: advance())
    typer.echo(files.markdown.read_text(encoding="utf-8"))
    typer.echo(f"report written to {output} (differential.json, differential.md"
               + (", gallery/index.html" if files.gallery else "") + ")", err=True)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[], None]]:
    """A transient frame counter on stderr (silent off a terminal); yields the function that advances it."""
    from rich.progress import Progress

    err = console()
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("analysing frames", total=None)
        yield lambda: bar.advance(task)
