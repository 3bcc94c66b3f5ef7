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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier report at --output.")] = False,
) -> None:
    """Count the slide's white cells by type (percentages with 95 % intervals) and write the review gallery.

    Exit codes: 0 every frame read and every whole cell counted; 3 some frames unreadable or some cells
    rejected (the report says so); 4 no frame read, or white cells found and none of them countable.
    """
    from dorl.fields.report import check_report_output, field_report

    records = sources[0] if len(sources) == 1 and sources[0].suffix == ".jsonl" else None
    inputs = [p for p in (artifact, site) if p is not None]
    if records is not None:
        files = field_report(output, records=records, min_cells=min_cells, gallery=gallery, overwrite=overwrite,
                             inputs=inputs)
    elif artifact is None:
        fail("analysing frames needs --artifact (an exported ONNX or engine folder); or give one cells.jsonl.")
    else:
        from dorl.runtime.options import AnalyzerOptions

        options = AnalyzerOptions(artifact, batch_size, threshold, backend, site, tta=tta)
        options.check_values()  # every option before the model is loaded, as predict does
        check_report_output(output, overwrite, [*inputs, *sources])
        checked = options.check_artifact()
        for note in checked.notes:
            typer.secho(f"warning: {note}", fg="yellow", err=True)
        with options.open(checked.batch_size) as analyzer, _progress() as advance:
            files = field_report(output, frames=sources, analyzer=analyzer, min_cells=min_cells, gallery=gallery,
                                 on_frame=lambda _: advance(), overwrite=overwrite, inputs=inputs)
    typer.echo(files.markdown.read_text(encoding="utf-8"))
    typer.echo(f"report written to {output} (differential.json, differential.md"
               + (", gallery/index.html" if files.gallery else "") + ")", err=True)
    raise typer.Exit(files.differential.exit_code())


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[], None]]:
    """A transient frame counter on stderr (silent off a terminal); yields the function that advances it."""
    from rich.progress import Progress

    err = console()
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("analysing frames", total=None)
        yield lambda: bar.advance(task)
