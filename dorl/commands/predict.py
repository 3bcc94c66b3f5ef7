"""`dorl predict`: classify and segment cell images with an exported ONNX graph or engine."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dorl.commands.common import BACKEND_HELP, TtaOption, console, user_errors

EXIT_CODES_HELP = (
    "Exit codes: 0 every image labelled; 1 nothing analysed (bad artifact, option or output); 2 usage error; "
    "3 some images failed, hold no cell or could not be reached (the others are labelled); 4 no image labelled; "
    "130/143 stopped by Ctrl-C/SIGTERM after writing the results reached."
)


@user_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="An exported ONNX artifact folder or a TensorRT engine folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders searched recursively for images.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per image (JSON Lines).")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV with one probability column per class.")] = False,
    save_masks: Annotated[Path | None, typer.Option(
        "--save-masks", help="Write each cell mask as a PNG into this new or empty folder (subfolders kept).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Let --save-masks write into a folder that already holds files, replacing same names.")
    ] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Images per inference call (capped by the artifact: 64, or an engine's max).")] = 8,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Top probability below which a cell is flagged uncertain.")
    ] = 0.5,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    site: Annotated[
        Path | None, typer.Option(help="Site profile from `dorl adapt` to re-centre features for this lab.")
    ] = None,
    no_cell_check: Annotated[bool, typer.Option(
        "--no-cell-check", help="Label every image, even one whose mask or feature says it holds no white cell.")
    ] = False,
    fields: Annotated[bool, typer.Option(
        "--fields", help="The images are whole camera frames: find every white cell and give one record per cell "
                         "(its box in the frame, edge flag, label), as `dorl fields` does.")] = False,
    tta: TtaOption = None,
) -> None:
    """Classify and segment cell images; results stream out batch by batch, bad images are reported per image.

    Each image gets a status: ok, uncertain (labelled, low confidence), no_cell (no analysable white
    cell: the label is withheld and the reasons given) or failed (with its error). Ctrl-C or SIGTERM
    finishes the current batch, prints its results and the summary, then stops.
    """
    from dorl.runtime.options import AnalyzerOptions
    from dorl.runtime.predict import PredictRequest, prepare_predict, run_predict
    from dorl.runtime.stream import stop_on_signals

    if json_out and csv_out:
        raise typer.BadParameter("--json and --csv exclude each other: choose one output format.")
    options = AnalyzerOptions(artifact, batch_size, threshold, backend, site, not no_cell_check, tta)
    if fields:
        _predict_fields(options, images, json_out, csv_out or save_masks is not None)
    request = PredictRequest(options, tuple(images), save_masks, overwrite)
    plan = prepare_predict(request)
    for note in plan.notes:
        _warn(note)
    for path in plan.scan.ignored[:10]:
        typer.echo(f"ignored (not an image file): {path}", err=True)
    if len(plan.scan.ignored) > 10:
        typer.echo(f"... and {len(plan.scan.ignored) - 10} more files ignored", err=True)
    write = _writer("json" if json_out else "csv" if csv_out else "text", plan.class_names)
    with stop_on_signals() as stop, _progress(len(plan.scan.entries)) as advance:
        tally = run_predict(plan, write, stop, advance, _warn)
    sys.stdout.flush()
    typer.echo(tally.summary(), err=True)
    code = tally.exit_code()
    if code == 4:
        typer.secho("error: no image got a label: see the errors and no-cell reasons above.", fg=typer.colors.RED,
                    err=True)
    raise typer.Exit(code)


def _predict_fields(options: Any, frames: list[Path], json_out: bool, refused: bool) -> None:
    """Whole frames: the field analysis's records (JSON Lines, or one text line per cell), same exit codes."""
    from dorl.fields.records import text_line
    from dorl.fields.run import FieldRequest, run_fields
    from dorl.runtime.stream import stop_on_signals

    if refused:
        raise typer.BadParameter("--fields writes JSON Lines (--json) or text: --csv and --save-masks are for "
                                 "single-cell images.")

    def write(record: dict[str, Any]) -> None:
        sys.stdout.write((json.dumps(record, allow_nan=False) if json_out else text_line(record)) + "\n")
        sys.stdout.flush()

    request = FieldRequest(options, tuple(frames))
    with stop_on_signals() as stop:
        tally = run_fields(request, write, stop, warn=_warn)
    typer.echo(tally.summary(), err=True)
    raise typer.Exit(tally.exit_code())


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def _writer(fmt: str, class_names: list[str]) -> Any:
    """A function printing one record in `fmt` and flushing, so each batch is visible at once."""
    from dorl.runtime.records import csv_header, csv_row

    out = sys.stdout
    if fmt == "csv":
        table = csv.writer(out, lineterminator="\n")
        table.writerow(csv_header(class_names))

    def write(record: dict[str, Any]) -> None:
        if fmt == "json":
            out.write(json.dumps(record, allow_nan=False) + "\n")
        elif fmt == "csv":
            table.writerow(csv_row(record, class_names))
        else:
            out.write(_text_line(record) + "\n")
        out.flush()

    return write


def _text_line(record: dict[str, Any]) -> str:
    confidence = f"{record['confidence']:.3f}" if record["confidence"] is not None else "-"
    detail = record["error"] or "; ".join(record["no_cell"]) or record.get("mask_error") or ""
    return f"{record['source']}\t{record['status']}\t{record['label'] or '-'}\t{confidence}\t{detail}".rstrip()


class _progress:
    """A transient progress bar on a terminal's stderr; nothing otherwise."""

    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        err = console()
        self.bar = Progress(console=err, transient=True, disable=not err.is_terminal)
        self.task = self.bar.add_task("analysing cells", total=total)

    def __enter__(self) -> Any:
        self.bar.__enter__()
        return lambda n: self.bar.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(None, None, None)
