"""One analysed image as a JSON-ready record, its CSV row, and the tally of a run with its exit code.

`dorl predict`, `dorl serve` and the field analysis all answer with these records, so a result
reads the same whichever way it was asked for. A record never holds NaN (JSON has no NaN) and
its `source` is always printable: a file name that is not valid UTF-8 is shown with `\\xNN`
escapes and given exactly, as base64 of its bytes, in `source_b64`.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dorl.runtime.cell_result import STATUSES, CellResult

# Exit codes of commands that analyse images (documented in `dorl predict --help` and the README).
EXIT_OK = 0  # every image was analysed and labelled (uncertain ones included)
EXIT_ERROR = 1  # nothing was analysed: a bad artifact, option or output path (click's usage errors: 2)
EXIT_PARTIAL = 3  # some images failed, hold no cell, or could not be reached; the others are labelled
EXIT_NOTHING = 4  # no image got a label
EXIT_INTERRUPTED = 128  # + the signal number (130 for Ctrl-C, 143 for SIGTERM), after flushing the results
CSV_COLUMNS = ("source", "status", "label", "confidence", "uncertain", "error", "no_cell", "mask", "mask_error",
               "site", "distance", "touches_border")


def printable_source(source: str) -> tuple[str, str | None]:
    """(a printable UTF-8 form of `source`, base64 of its bytes when the name is not valid UTF-8)."""
    try:
        source.encode("utf-8")
        return source, None
    except UnicodeEncodeError:  # undecodable bytes of a file name, held as surrogate escapes
        raw = os.fsencode(source)
        return raw.decode("utf-8", errors="backslashreplace"), base64.b64encode(raw).decode("ascii")


def _finite(value: float | None, digits: int = 6) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else None


def cell_record(result: CellResult, mask_file: str | None = None, mask_error: str | None = None) -> dict[str, Any]:
    """The JSON-ready record of one analysed image.

    Args:
        result: the analyzer's result.
        mask_file: where its mask was written, if it was.
        mask_error: why its mask could not be written, if it could not.

    Returns:
        A dict with `source`, `status` (one of "ok", "uncertain", "no_cell", "failed"), `label`
        (None unless the image holds a cell), `confidence`, `uncertain`, `error`, `no_cell` (the
        reasons), `probs`, `distance` (to the source cells), `size` ([height, width]), `notes`,
        `site` (the site profile applied), `mask` and `mask_error`, `crop_box` and `touches_border`
        (where a cell-centric artifact cut the cell, and whether its mask touches the image's
        border; None otherwise), and `source_b64` for a name that is not valid UTF-8.
    """
    source, raw = printable_source(result.source)
    record: dict[str, Any] = {
        "source": source,
        "status": result.status,
        "label": result.label,
        "confidence": _finite(result.confidence),
        "uncertain": result.uncertain,
        "error": result.error,
        "no_cell": list(result.no_cell),
        "probs": {name: _finite(p) for name, p in result.probs.items()},
        "distance": _finite(result.distance, 4),
        "size": list(result.size_hw) if result.size_hw is not None else None,
        "notes": list(result.notes),
        "site": result.site,
        "mask": printable_source(mask_file)[0] if mask_file is not None else None,
        "mask_error": mask_error,
        "crop_box": list(result.crop_box) if result.crop_box is not None else None,
        "touches_border": result.touches_border,
    }
    if raw is not None:
        record["source_b64"] = raw
    return record


def csv_header(class_names: Sequence[str]) -> list[str]:
    return [*CSV_COLUMNS, *class_names]


def csv_row(record: dict[str, Any], class_names: Sequence[str]) -> list[str]:
    """The record as CSV cells, in `csv_header` order (empty cells for missing values)."""
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(int(value))
        if isinstance(value, list):
            return "; ".join(map(str, value))
        return str(value)

    probs = record["probs"]
    return [cell(record[c]) for c in CSV_COLUMNS] + [cell(probs.get(name)) for name in class_names]


@dataclass
class Tally:
    """What a run produced, for its summary line and exit code."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    mask_errors: int = 0
    ignored: int = 0  # files without an image suffix, hidden, or reached twice
    signal: int | None = None  # the signal that stopped the run early

    def add(self, record: dict[str, Any]) -> None:
        self.counts[record["status"]] += 1
        self.mask_errors += record.get("mask_error") is not None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def labelled(self) -> int:
        return self.counts["ok"] + self.counts["uncertain"]

    def exit_code(self) -> int:
        """EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING, or EXIT_INTERRUPTED + signal (see the constants)."""
        if self.signal is not None:
            return EXIT_INTERRUPTED + self.signal
        if self.labelled == 0:
            return EXIT_NOTHING
        if self.labelled < self.total or self.mask_errors:
            return EXIT_PARTIAL
        return EXIT_OK

    def summary(self) -> str:
        c = self.counts
        line = (f"{self.total} images: {self.labelled} labelled ({c['uncertain']} uncertain), {c['no_cell']} no cell, "
                f"{c['failed']} failed")
        if self.mask_errors:
            line += f", {self.mask_errors} masks not written"
        if self.ignored:
            line += f"; {self.ignored} non-image files ignored"
        if self.signal is not None:
            line += f"; stopped early by signal {self.signal}, the images after these were not analysed"
        return line + "."
