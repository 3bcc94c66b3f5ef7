"""The review gallery: every cell's crop grouped by its label, the way a technologist checks a differential.

For each label, one PNG sheet of thumbnails (in frame order, captioned with the frame and the
confidence; uncertain cells framed in orange with a "?"), one HTML page that shows every cell
with its frame, box and probabilities, and `overview.jpg`, a row of the first cells of each label. Cells left out of the differential (cut by the edge,
rejected) get their own sheet, so nothing the finder saw is hidden from the reviewer.
Thumbnails are written one cell at a time; a sheet holds at most `per_sheet` cells.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dorl.data.images import load_rgb
from dorl.errors import ImageError
from dorl.fields.differential import is_rejected
from dorl.fields.records import CELL, frame_file

THUMB = 112  # px, a thumbnail's side
CAPTION = 14  # px under each thumbnail
COLUMNS = 10
UNCERTAIN_COLOUR = (255, 140, 0)
NOT_COUNTED = "not counted"


@dataclass(frozen=True)
class GalleryCell:
    """One thumbnail of the gallery."""

    group: str  # the label, or NOT_COUNTED
    file: str  # the thumbnail, relative to the gallery folder
    caption: str
    uncertain: bool
    record: dict[str, Any]


def write_gallery(records: Iterable[dict[str, Any]], folder: str | Path, per_sheet: int = 200) -> dict[str, list[Path]]:
    """Write the thumbnails, one PNG sheet (or several) per label, overview.jpg and index.html into `folder`.

    Args:
        records: field records (lines of cells.jsonl); a cell's pixels come from its saved crop
            ("crop") when there is one, else from its frame file and crop box.
        folder: the gallery folder (created).
        per_sheet: cells per PNG sheet; a label with more cells gets numbered sheets.

    Returns:
        label -> the PNG sheets written for it.
    """
    folder = Path(folder)
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[GalleryCell]] = {}
    for record in records:
        if record.get("status") != CELL:
            continue
        cell = _thumbnail(record, folder)
        groups.setdefault(cell.group, []).append(cell)
    order = sorted(groups, key=lambda g: (g == NOT_COUNTED, g))
    sheets = {group: _sheets(groups[group], group, folder, per_sheet) for group in order}
    overview(order, groups, folder).save(folder / "overview.jpg", quality=85)
    (folder / "index.html").write_text(_html(order, groups, sheets, folder), encoding="utf-8")
    return sheets


def overview(order: list[str], groups: dict[str, list[GalleryCell]], folder: Path, per_group: int = COLUMNS) -> Image.Image:
    """One picture of the gallery: a row of the first `per_group` cells of every label."""
    rows = [contact_sheet(groups[g][:per_group], folder, f"{g}: {_cells(len(groups[g]))}", per_group) for g in order]
    width = max((r.width for r in rows), default=1)
    picture = Image.new("RGB", (width, sum(r.height for r in rows) or 1), "white")
    top = 0
    for row in rows:
        picture.paste(row, (0, top))
        top += row.height
    return picture


def _thumbnail(record: dict[str, Any], folder: Path) -> GalleryCell:
    counted = not record.get("edge") and not is_rejected(record)
    group = record["label"] if counted else NOT_COUNTED
    name = f"f{record.get('frame_index', 0):05d}_c{record.get('cell', 0)}.jpg"
    image = _crop_pixels(record)
    thumb = Image.fromarray(image).resize((THUMB, THUMB), Image.Resampling.BILINEAR) if image is not None \
        else Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    thumb.save(folder / "cells" / name, quality=90)
    frame = _short(Path(str(record.get("frame", "?"))).stem)
    confidence = record.get("confidence")
    if counted:
        caption = f"{frame} {confidence:.2f}" if confidence is not None else frame
    else:
        caption = f"{frame} {'edge' if record.get('edge') else 'rejected'}"
    return GalleryCell(group, f"cells/{name}", caption, bool(record.get("uncertain")) and counted, record)


def _short(stem: str) -> str:
    """A frame's name short enough for a caption: its last `_` part (the frame number), or its end."""
    tail = stem.rsplit("_", 1)[-1]
    return tail if tail else stem[-10:]


def _crop_pixels(record: dict[str, Any]) -> np.ndarray | None:
    try:
        if record.get("crop"):
            return load_rgb(record["crop"])
        x0, y0, x1, y1 = record["crop_box"]
        return load_rgb(frame_file(record))[y0:y1, x0:x1]
    except (ImageError, KeyError, TypeError, ValueError):
        return None  # a grey square: the frame moved or was an in-memory array


def _sheets(cells: list[GalleryCell], group: str, folder: Path, per_sheet: int) -> list[Path]:
    paths = []
    for start in range(0, len(cells), per_sheet):
        part = cells[start:start + per_sheet]
        suffix = "" if len(cells) <= per_sheet else f"-{start // per_sheet + 1}"
        path = folder / f"{group.replace(' ', '-')}{suffix}.png"
        contact_sheet(part, folder, f"{group}: {_cells(len(cells))}" + (f" ({start + 1}-{start + len(part)})" if suffix
                                                                        else "")).save(path, optimize=True)
        paths.append(path)
    return paths


def contact_sheet(cells: list[GalleryCell], folder: Path, title: str, columns: int = COLUMNS) -> Image.Image:
    """One image of the cells' thumbnails in rows, captioned, uncertain ones framed in orange."""
    cols = max(1, min(columns, len(cells)))
    rows = max(1, -(-len(cells) // cols))
    cell_h, header = THUMB + CAPTION, 22
    sheet = Image.new("RGB", (cols * (THUMB + 4) + 4, header + rows * (cell_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), title, fill="black")
    for i, cell in enumerate(cells):
        x = 4 + (i % cols) * (THUMB + 4)
        y = header + (i // cols) * (cell_h + 4)
        with Image.open(folder / cell.file) as thumb:
            sheet.paste(thumb.convert("RGB"), (x, y))
        if cell.uncertain:
            draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline=UNCERTAIN_COLOUR, width=4)
            draw.text((x + 6, y + 4), "?", fill=UNCERTAIN_COLOUR)
        draw.text((x + 1, y + THUMB + 1), cell.caption, fill="black")
    return sheet


def _html(order: list[str], groups: dict[str, list[GalleryCell]], sheets: dict[str, list[Path]], folder: Path) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>White-cell review gallery</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;width:",
             f"{THUMB + 8}px;font-size:11px;vertical-align:top}}figure img{{border:4px solid transparent}}",
             f".uncertain img{{border-color:rgb{UNCERTAIN_COLOUR}}}</style>",
             ("<h1>White-cell review gallery</h1><p>Cells grouped by label, in frame order; "
             "<span style='color:darkorange'>orange</span>: uncertain. "),
             ", ".join(f"<a href='#{_anchor(g)}'>{html.escape(g)} ({len(groups[g])})</a>" for g in order), "</p>"]
    for group in order:
        sheet_links = " ".join(f"<a href='{p.relative_to(folder).as_posix()}'>sheet</a>" for p in sheets[group])
        parts.append(f"<h2 id='{_anchor(group)}'>{html.escape(group)}: {_cells(len(groups[group]))} {sheet_links}</h2>")
        for cell in groups[group]:
            r = cell.record
            probs = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("probs") or {}).items() if v is not None)
            title = html.escape(f"{r.get('frame')} cell {r.get('cell')} box {r.get('box')}: {probs}", quote=True)
            css = " class='uncertain'" if cell.uncertain else ""
            parts.append(f"<figure{css}><img src='{cell.file}' width='{THUMB}' title='{title}'>"
                         f"<figcaption>{html.escape(cell.caption)}</figcaption></figure>")
    return "\n".join(parts) + "\n"


def _cells(count: int) -> str:
    return f"{count} cell" if count == 1 else f"{count} cells"


def _anchor(group: str) -> str:
    return group.replace(" ", "-")
