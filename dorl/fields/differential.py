"""The slide's white-cell differential: counts and percentages per type with 95 % Wilson intervals.

A differential counts the white cells of one slide by type and gives each type's share. Only
whole, classified cells count: cells cut by the frame's edge are left out (the part of the cell
that is visible may not show what it is, and the neighbouring field may hold the rest of it),
and so are cells the analyzer rejected (no label: unreadable or non-finite outputs, or flagged
as no cell). Uncertain cells are counted under their label and listed for review. Labs count
at least 100 cells; below that the intervals are wide and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dorl.fields.records import CELL, EMPTY, ERROR
from dorl.runtime.records import EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL

MIN_CELLS = 100  # the usual manual differential
Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(count: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion count/total (95 % by default); (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = count / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TypeCount:
    """One cell type's line of the differential."""

    label: str
    count: int
    percent: float
    interval: tuple[float, float]  # 95 % Wilson interval, in percent


@dataclass
class Differential:
    """A slide's differential and what went into it."""

    labels: list[str] = field(default_factory=list)  # every type, in the head's order
    counts: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    empty_frames: int = 0
    failed_frames: int = 0
    cells_found: int = 0
    edge_cut: int = 0
    rejected: int = 0
    uncertain: int = 0  # among the counted cells
    min_cells: int = MIN_CELLS

    @property
    def counted(self) -> int:
        return sum(self.counts.values())

    @property
    def rows(self) -> list[TypeCount]:
        total = self.counted
        rows = []
        for label in self.labels:
            k = self.counts.get(label, 0)
            low, high = wilson_interval(k, total)
            rows.append(TypeCount(label, k, 100.0 * k / total if total else 0.0, (100.0 * low, 100.0 * high)))
        return rows

    @property
    def warnings(self) -> list[str]:
        notes = []
        if self.frames == 0:
            notes.append("no frames were analysed: the differential is empty.")
        elif self.counted == 0:
            notes.append("no white cell was counted: there is no differential; check the frames and the finder.")
        elif self.counted < self.min_cells:
            notes.append(f"only {self.counted} cells were counted, fewer than the usual {self.min_cells}: "
                         "read each percentage with its interval, or analyse more fields of the slide.")
        if self.failed_frames:
            notes.append(f"{self.failed_frames} of {self.frames} frames could not be read and were skipped "
                         "(their error records say why).")
        if self.uncertain:
            notes.append(f"{self.uncertain} of {self.counted} counted cells are uncertain: review them in the gallery.")
        return notes

    def add(self, record: dict[str, Any]) -> None:
        """Count one field record (a line of cells.jsonl)."""
        status = record.get("status")
        if record.get("cell", 0) in (0, None):  # the first line of a frame
            self.frames += 1
            self.empty_frames += status == EMPTY
            self.failed_frames += status == ERROR
        if status != CELL:
            return
        for name in record.get("probs") or {}:
            if name not in self.labels:
                self.labels.append(name)
        self.cells_found += 1
        if record.get("edge"):
            self.edge_cut += 1
        elif is_rejected(record):
            self.rejected += 1
        else:
            label = record["label"]
            if label not in self.labels:
                self.labels.append(label)
            self.counts[label] = self.counts.get(label, 0) + 1
            self.uncertain += bool(record.get("uncertain"))

    def exit_code(self) -> int:
        """`dorl report`'s exit code: 0 every frame read and every whole cell counted; 3 some frames
        unreadable or some cells rejected; 4 no frame read, or cells found and none countable."""
        if self.frames == self.failed_frames or (self.rejected and not self.counted):
            return EXIT_NOTHING
        if self.failed_frames or self.rejected:
            return EXIT_PARTIAL
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": {"analysed": self.frames, "without_white_cell": self.empty_frames, "failed": self.failed_frames},
            "cells": {"found": self.cells_found, "edge_cut": self.edge_cut, "rejected": self.rejected,
                      "counted": self.counted, "uncertain": self.uncertain},
            "min_cells": self.min_cells,
            "differential": [{"label": r.label, "count": r.count, "percent": round(r.percent, 2),
                              "ci95_percent": [round(r.interval[0], 2), round(r.interval[1], 2)]} for r in self.rows],
            "warnings": self.warnings,
        }


def is_rejected(record: dict[str, Any]) -> bool:
    """A found cell the analyzer gave no usable label: failed, non-finite, or flagged as no cell."""
    return record.get("label") is None or record.get("error") is not None or bool(record.get("no_cell"))


def differential(records: Iterable[dict[str, Any]], labels: Sequence[str] = (), min_cells: int = MIN_CELLS) -> Differential:
    """Aggregate field records (one pass, constant memory) into the slide's differential.

    Args:
        records: the lines of cells.jsonl, in order.
        labels: the cell types to list even when none was counted (default: those the records name).
        min_cells: below this many counted cells the differential carries a warning.
    """
    result = Differential(labels=list(labels), min_cells=min_cells)
    for record in records:
        result.add(record)
    return result
