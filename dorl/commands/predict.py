"""`dorl predict`: classify and segment cell images with an exported ONNX graph or engine."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from dorl.commands.common import console, fail, user_errors

BACKEND_HELP = "auto (from the artifact), onnxruntime or tensorrt."


@user_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="An exported ONNX artifact folder or a TensorRT engine folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders searched recursively for images.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per image.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV with one probability column per class.")] = False,
    save_masks: Annotated[
        Path | None, typer.Option("--save-masks", help="Write each cell mask as a PNG into this folder.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per inference call.")] = 8,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Top probability below which a cell is flagged uncertain.")
    ] = 0.5,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    site: Annotated[
        Path | None, typer.Option(help="Site profile from `dorl adapt` to re-centre features for this lab.")
    ] = None,
) -> None:
    """Classify and segment cell images; bad images are reported per image, not fatal."""
    from dorl.data.images import find_images
    from dorl.runtime.analyzer import Analyzer

    if json_out and csv_out:
        fail("--json and --csv exclude each other: choose one output format.")
    files = find_images(images)
    if not files:
        fail(f"no image files found in {', '.join(map(str, images))}: give image files or folders holding them.")
    with Analyzer(artifact, backend=backend, batch_size=batch_size, threshold=threshold, site=site) as analyzer:
        results = list(_with_progress(analyzer.iter_analyze(files), len(files)))
        class_names = analyzer.class_names
    mask_files = _save_masks(results, save_masks) if save_masks is not None else [None] * len(results)
    records = [_record(r, m) for r, m in zip(results, mask_files)]
    if json_out:
        for record in records:
            typer.echo(json.dumps(record))
    elif csv_out:
        typer.echo(_csv(records, class_names), nl=False)
    else:
        _print_table(records)
    failed = sum(r["error"] is not None for r in records)
    uncertain = sum(r["uncertain"] and r["error"] is None for r in records)
    typer.echo(f"{len(records)} images: {len(records) - failed} analysed ({uncertain} uncertain), {failed} failed.", err=True)
    if failed == len(records):
        fail("none of the images could be read: see the errors above.")


def _with_progress(results: Iterator[Any], total: int) -> Iterator[Any]:
    from rich.progress import Progress

    err = console()
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("analysing cells", total=total)
        for result in results:
            progress.advance(task)
            yield result


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def _record(result: Any, mask_file: Path | None) -> dict[str, Any]:
    confidence = result.confidence
    return {
        "source": result.source,
        "label": result.label,
        "confidence": _finite(confidence) if confidence is not None else None,
        "uncertain": result.uncertain,
        "error": result.error,
        "probs": {name: _finite(p) for name, p in result.probs.items()},
        "mask": str(mask_file) if mask_file is not None else None,
    }


def _save_masks(results: Sequence[Any], folder: Path) -> list[Path | None]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    paths: list[Path | None] = []
    for i, result in enumerate(results):
        if result.mask is None:
            paths.append(None)
            continue
        stem = Path(result.source).stem or f"cell_{i}"
        name = f"{stem}.png" if f"{stem}.png" not in used else f"{stem}_{i}.png"
        used.add(name)
        Image.fromarray(result.mask.astype("uint8") * 255).save(folder / name)
        paths.append(folder / name)
    return paths


def _csv(records: list[dict[str, Any]], class_names: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "label", "confidence", "uncertain", "error", "mask", *class_names])
    for r in records:
        probs = [r["probs"].get(name, "") for name in class_names]
        writer.writerow([r["source"], r["label"] or "", r["confidence"] if r["confidence"] is not None else "",
                         int(r["uncertain"]), r["error"] or "", r["mask"] or "", *probs])
    return buffer.getvalue()


def _print_table(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    table.add_column("source", overflow="fold")
    for name in ("label", "confidence", "uncertain"):
        table.add_column(name, no_wrap=True)
    table.add_column("error", overflow="fold")
    for r in records:
        confidence = f"{r['confidence']:.3f}" if r["confidence"] is not None else "-"
        uncertain = "-" if r["error"] else ("yes" if r["uncertain"] else "no")
        table.add_row(r["source"], r["label"] or "-", confidence, uncertain, r["error"] or "")
    Console(soft_wrap=False).print(table)
