"""The slide report: field records -> differential.json, differential.md and the review gallery.

`field_report` is the one call behind `dorl report`: from frames it first runs the field
analysis into `cells.jsonl` (streaming, one frame at a time), then reads the records back once
for the differential and once for the gallery, so no step holds the whole run in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dorl.data.scan import ScanEntry, scan_images
from dorl.errors import ConfigError
from dorl.fields.analysis import FieldConfig, analyze_fields
from dorl.fields.differential import MIN_CELLS, Differential, differential
from dorl.fields.gallery import write_gallery
from dorl.fields.records import FrameResult, read_records, write_records

RECORDS_FILE = "cells.jsonl"


@dataclass(frozen=True)
class ReportFiles:
    """What `field_report` wrote."""

    records: Path
    json: Path
    markdown: Path
    gallery: Path | None  # the gallery's index.html
    differential: Differential


def collect_frames(paths: Sequence[str | Path]) -> list[ScanEntry]:
    """The frames named by `paths` (folders searched recursively), each an image file or a path whose
    problem was found while walking (a dangling link, a link loop, a pipe): those become error records.

    Raises:
        ConfigError: a path does not exist, or nothing with an image's name was found.
    """
    if not paths:
        raise ConfigError("no frames given: give folders or files of camera frames.")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"{', '.join(missing)} does not exist: give folders or files of camera frames.")
    entries = scan_images(paths).entries
    if not entries:
        raise ConfigError(f"no image files found in {', '.join(map(str, paths))}: give folders holding camera "
                          "frames (.jpg, .png, .bmp, .tif).")
    return entries


def analyze_to_records(frames: Iterable[Any], analyzer: Any, records: Path, config: FieldConfig | None = None,
                       on_frame: Callable[[FrameResult], None] | None = None) -> int:
    """Run the field analysis over `frames` and write its JSON Lines to `records`, frame by frame.

    Returns:
        The number of frames written.
    """
    records.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(records, "w", encoding="utf-8") as out:
        for frame in write_records(analyze_fields(frames, analyzer, config), out):
            count += 1
            if on_frame is not None:
                on_frame(frame)
    return count


def check_report_output(out: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse a report folder that would overwrite anything but an earlier report, before any work.

    An existing folder is replaced only when it holds an earlier report (its differential.json) and
    `overwrite` is given; the report may not be, hold or lie inside an input (a gallery written among
    the frames would be read as frames next time), nor lie inside an artifact.
    """
    from dorl.safe_write import OutputError, check_output

    target = Path(out)
    if target.is_dir() and any(target.iterdir()):
        if not (target / "differential.json").is_file():
            raise OutputError(f"{out} holds files that are not a dorl report: choose a new or empty folder, so that "
                              "nothing in it is lost.")
        if not overwrite:
            raise OutputError(f"{out} already holds a report: pass --overwrite to replace it, or choose another folder.")
    return check_output(target, overwrite=True, inputs=inputs)


def field_report(out: str | Path, records: str | Path | None = None, frames: Sequence[str | Path] = (),
                 analyzer: Any = None, config: FieldConfig | None = None, min_cells: int = MIN_CELLS,
                 gallery: bool = True, title: str = "White-cell differential",
                 on_frame: Callable[[FrameResult], None] | None = None, overwrite: bool = False,
                 inputs: Sequence[str | Path] = ()) -> ReportFiles:
    """Write a slide's differential (JSON, Markdown) and review gallery into `out`.

    The folder is written whole into a temporary sibling and renamed into place: a failed run leaves
    an earlier report as it was, and a replaced report keeps none of its old gallery sheets.

    Args:
        out: the report folder (new, empty, or an earlier report with `overwrite`).
        records: an existing cells.jsonl to report on; or None to analyse `frames` with `analyzer`
            into `out/cells.jsonl` first.
        frames: frame files or folders (used when `records` is None).
        analyzer: an open `Analyzer` (used when `records` is None).
        config: the finder and crop settings of the analysis.
        min_cells: fewer counted cells than this draws a warning.
        gallery: also write the review gallery (`out/gallery/`).
        title: the Markdown report's heading.
        on_frame: called with each frame's result as the analysis writes it (progress).
        overwrite: replace an earlier report at `out`.
        inputs: other inputs the report may not touch (the artifact, a site profile).

    Raises:
        ConfigError: neither records nor frames with an analyzer were given, or they cannot be read.
        OutputError: `out` holds other files, an earlier report without `overwrite`, or an input.
    """
    from dorl.safe_write import atomic_folder

    if records is None and analyzer is None:
        raise ConfigError("a report needs either a cells.jsonl or frames and an artifact to analyse them with.")
    given = [*inputs, *([records] if records is not None else frames)]
    out = check_report_output(out, overwrite, given)
    entries = collect_frames(frames) if records is None else []
    with atomic_folder(out, overwrite=True, inputs=given) as tmp:
        if records is None:
            analyze_to_records(entries, analyzer, tmp / RECORDS_FILE, config, on_frame)
        source = Path(records) if records is not None else tmp / RECORDS_FILE
        result = differential(read_records(source), min_cells=min_cells)
        shown = Path(records) if records is not None else out / RECORDS_FILE
        (tmp / "differential.json").write_text(json.dumps({"records": str(shown), **result.to_dict()}, indent=2) + "\n",
                                               encoding="utf-8")
        if gallery:
            write_gallery(_lean(read_records(source)), tmp / "gallery")
        index = Path("gallery") / "index.html" if gallery else None
        (tmp / "differential.md").write_text(markdown(result, title, index), encoding="utf-8")
    return ReportFiles(shown, out / "differential.json", out / "differential.md", out / index if index else None,
                       result)


def markdown(result: Differential, title: str = "White-cell differential", gallery: Path | None = None) -> str:
    """The differential as a Markdown report: the table, what was counted, and the warnings."""
    lines = [f"# {title}", ""]
    lines += [f"- **Warning:** {w}" for w in result.warnings]
    if result.warnings:
        lines.append("")
    lines += ["| type | cells | % | 95 % interval (Wilson) |", "|---|---:|---:|---|"]
    lines += [f"| {r.label} | {r.count} | {r.percent:.1f} | {r.interval[0]:.1f} – {r.interval[1]:.1f} |"
              for r in result.rows]
    lines += [f"| **counted** | **{result.counted}** | 100 | |", ""]
    lines.append(f"Frames analysed: {result.frames} ({result.empty_frames} without a white cell, "
                 f"{result.failed_frames} unreadable). White cells found: {result.cells_found}; counted "
                 f"{result.counted} ({result.uncertain} uncertain); left out: {result.edge_cut} cut by the frame's "
                 f"edge, {result.rejected} rejected by the analyzer.")
    if gallery is not None:
        lines += ["", (f"Review gallery: [{gallery.as_posix()}]({gallery.as_posix()}) (every cell grouped by label; "
                  "uncertain cells framed in orange).")]
    return "\n".join(lines) + "\n"


def _lean(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records without their masks, which the gallery does not draw."""
    for record in records:
        yield {k: v for k, v in record.items() if k != "mask"}
