"""What the field analysis says about a frame and each white cell in it, and its JSON Lines form.

A run over frames is written as JSON Lines, one object per line: one per white cell found
(`"status": "cell"`), one for a frame where no white cell was found (`"empty"`), one for a frame
that could not be read (`"error"`). Every line names its frame, so the lines of one frame can be
told apart from the next and a report can count frames as well as cells.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError
from dorl.fields.finder import Box, FoundCell
from dorl.runtime.analyzer import CellResult
from dorl.runtime.records import printable_source
from dorl.serve.record import mask_rle, rle_to_mask

CELL, EMPTY, ERROR = "cell", "empty", "error"


@dataclass(frozen=True, eq=False)
class FieldCell:
    """One white cell of a frame: where it is, the crop the analyzer saw, and what the analyzer said."""

    frame: str  # the frame's path, or a description of an in-memory frame
    frame_index: int  # the frame's position in the run
    index: int  # the cell's number within its frame
    found: FoundCell  # the finder's view: cell box, nucleus, edge
    crop_box: Box  # the part of the frame given to the analyzer
    result: CellResult  # the analyzer's record for the crop
    crop: np.ndarray | None = None  # the crop's pixels (HxWx3 uint8)

    @property
    def box(self) -> Box:
        return self.found.box

    @property
    def edge(self) -> bool:
        """Cut by the frame's edge: reported, but left out of the differential."""
        return self.found.edge

    @property
    def mask(self) -> np.ndarray | None:
        """The analyzer's cell mask over `crop_box` (frame coordinates), or None."""
        return self.result.mask

    def frame_mask(self, frame_hw: tuple[int, int]) -> np.ndarray | None:
        """The analyzer's cell mask as an HxW bool mask of the whole frame, or None."""
        if self.result.mask is None:
            return None
        mask = np.zeros(frame_hw, dtype=bool)
        x0, y0, x1, y1 = self.crop_box
        mask[y0:y1, x0:x1] = self.result.mask
        return mask


@dataclass(frozen=True, eq=False)
class FrameResult:
    """One frame of a run: its white cells, none, or the error that stopped it."""

    frame: str
    index: int
    size: tuple[int, int] | None  # (height, width); None when the frame could not be read
    cells: list[FieldCell] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        return ERROR if self.error is not None else (CELL if self.cells else EMPTY)


def analyzer_record(result: CellResult) -> dict[str, Any]:
    """The analyzer's own record of one cell: label, confidence, uncertain, error, no_cell, probabilities."""
    confidence = result.confidence
    return {
        "label": result.label,
        "confidence": _finite(confidence) if confidence is not None else None,
        "uncertain": result.uncertain,
        "error": result.error,
        "no_cell": list(result.no_cell),  # why the analyzer found no analysable white cell (empty: it did)
        "probs": {name: _finite(p) for name, p in result.probs.items()},
    }


def frame_records(frame: FrameResult, crop_files: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """The JSON Lines objects of one frame: one per cell, or one saying it is empty or failed.

    Args:
        frame: the frame's result.
        crop_files: cell index -> the file its crop was saved to, when crops were saved.
    """
    name, raw = printable_source(frame.frame)
    base: dict[str, Any] = {"frame": name, "frame_index": frame.index,
                            "frame_size": list(frame.size) if frame.size else None, "cells_in_frame": len(frame.cells)}
    if raw is not None:  # a file name that is not valid UTF-8: shown escaped, given exactly as base64
        base["frame_b64"] = raw
    if not frame.cells:
        error = printable_source(frame.error)[0] if frame.error is not None else None
        return [{**base, "status": frame.status, "error": error}]
    return [{**base, "status": CELL, **cell_record(cell, (crop_files or {}).get(cell.index))} for cell in frame.cells]


def cell_record(cell: FieldCell, crop_file: str | None = None) -> dict[str, Any]:
    """The JSON object of one white cell: position in the frame, edge flag, mask, the analyzer's record."""
    return {
        "cell": cell.index,
        "box": list(cell.box),
        "nucleus_box": list(cell.found.nucleus_box),
        "crop_box": list(cell.crop_box),
        "edge": cell.edge,
        **analyzer_record(cell.result),
        "mask": encode_mask(cell.mask) if cell.mask is not None else None,
        "crop": crop_file,
    }


def frame_file(record: dict[str, Any]) -> str:
    """The frame file a record came from, exactly (from `frame_b64` when its name is not valid UTF-8)."""
    raw = record.get("frame_b64")
    return os.fsdecode(base64.b64decode(raw)) if isinstance(raw, str) else str(record.get("frame"))


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool mask as COCO's uncompressed run-length code (column-major runs starting with background),
    the encoding `dorl serve` answers with."""
    return mask_rle(mask)


def decode_mask(code: dict[str, Any]) -> np.ndarray:
    """The bool mask of a run-length code written by `encode_mask`.

    Raises:
        ConfigError: the code's runs do not add up to its size.
    """
    height, width = code["size"]
    counts = np.asarray(code["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ConfigError(f"a mask's runs add up to {counts.sum()} pixels, not {height}x{width}: the record is corrupt.")
    return rle_to_mask(code)


def write_records(frames: Iterable[FrameResult], out: Any) -> Iterator[FrameResult]:
    """Write each frame's lines to the text stream `out` as it passes, flushing per frame."""
    for frame in frames:
        for record in frame_records(frame):
            out.write(json.dumps(record) + "\n")
        out.flush()
        yield frame


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON Lines file, one at a time.

    Raises:
        ConfigError: the file is missing or a line is not a field record.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give the cells.jsonl written by the field analysis.")
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number} is not JSON ({exc.msg}): the file is truncated or not "
                                  "field records.") from exc
            if not isinstance(record, dict) or record.get("status") not in (CELL, EMPTY, ERROR):
                raise ConfigError(f"{path} line {number} is not a field record (no status cell/empty/error): "
                                  "give the cells.jsonl written by the field analysis.")
            yield record


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


def text_line(record: dict[str, Any]) -> str:
    """One record as a tab-separated line: frame, cell number, label, confidence, box, edge, and why there is
    no label (the text output of `dorl predict --fields`)."""
    if record["status"] != CELL:
        return f"{record['frame']}\t-\t{record['status']}\t{record.get('error') or ''}".rstrip()
    confidence = f"{record['confidence']:.3f}" if record["confidence"] is not None else "-"
    box = ",".join(str(v) for v in record["box"])
    detail = record["error"] or "; ".join(record["no_cell"]) or ("uncertain" if record["uncertain"] else "")
    return (f"{record['frame']}\t{record['cell']}\t{record['label'] or '-'}\t{confidence}\t{box}\t"
            f"{'edge' if record['edge'] else 'whole'}\t{detail}").rstrip()
