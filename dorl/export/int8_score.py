"""Scoring candidate INT8 graphs against FP32 on the gate's cells: the gate, its screen and the sweep's estimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from dorl.contract import MASK_LOGITS, mask_iou
from dorl.export.check_cells import CheckCells, Infer
from dorl.export.int8_gate import GateReport, GateThresholds, evaluate

# A screen on most of the gate's cells spares little of a failing step and doubles the passing one.
SCREEN_MAX_SHARE = 0.75
SWEEP_MASK_CELLS = 16  # the sweep scores a group's mask damage on this many of its cells (pass 1)

Runner = Callable[[Path], Infer]  # a graph's file -> one session of it, as a function of uint8 images


def spread(n: int, k: int) -> np.ndarray:
    """min(k, n) indices spread evenly over range(n)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).astype(int))


@dataclass
class GateScorer:
    """Runs candidate graphs on the gate's cells as the analyzer runs them (both passes of a
    cell-centric artifact) and scores them against the FP32 outputs."""

    reference: dict[str, np.ndarray]
    cells: CheckCells
    labels: np.ndarray
    thresholds: GateThresholds
    sweep_rows: np.ndarray
    sweep_cells: CheckCells = field(init=False)
    sweep_reference: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.sweep_cells = self.cells.rows(self.sweep_rows)
        self.sweep_reference = {name: value[self.sweep_rows] for name, value in self.reference.items()}

    @property
    def screens(self) -> bool:
        """Whether a screen on the sweep's cells is worth running before the whole gate."""
        return len(self.sweep_rows) < SCREEN_MAX_SHARE * len(self.cells)

    @cached_property
    def _framed(self) -> CheckCells:
        """The sweep's cells with the crops FP32's masks cut (cut once)."""
        return self.sweep_cells.framed(self.sweep_reference.get(MASK_LOGITS))

    def score(self, path: Path, run: Runner, sweep: bool = False) -> tuple[GateReport, dict[str, np.ndarray]]:
        """The gate's score of a graph as the analyzer runs it, on the gate's cells (`sweep`: the sweep's)."""
        cells, reference, labels = ((self.sweep_cells, self.sweep_reference, self.labels[self.sweep_rows]) if sweep
                                    else (self.cells, self.reference, self.labels))
        outputs = cells.run(run(path))
        return evaluate(reference, outputs, labels, self.thresholds), outputs

    def estimate(self, path: Path, run: Runner, masks_change: bool = True) -> GateReport:
        """The sweep's cheaper score of one group's damage, on the sweep's cells.

        On a cell-centric artifact the labels come from pass 2 on the cells FP32's masks cut (the
        damage of the classifying pass itself, without the crop moving with the masks), and the masks
        from pass 1 on SWEEP_MASK_CELLS of the cells, or not at all when `masks_change` is False (no
        node the masks depend on is quantized: they are FP32's). A whole-image artifact is scored as
        the gate scores it.
        """
        if not self.cells.two_pass:
            return self.score(path, run, sweep=True)[0]
        masks = self.sweep_reference.get(MASK_LOGITS)
        infer = run(path)
        report = evaluate(self.sweep_reference, self._framed.classify(infer, masks), self.labels[self.sweep_rows],
                          self.thresholds)
        if masks_change and masks is not None:
            few = spread(len(self.sweep_rows), SWEEP_MASK_CELLS)
            own = infer(self.sweep_cells.pixels[few])[MASK_LOGITS]
            report = replace(report, mask_iou_mean=float(mask_iou(masks[few], own).mean()))
        return report
