"""The INT8 gate: labelled held-out cells, agreement with FP32, the accuracy drop and the masks.

An INT8 graph ships only if, on at least 200 labelled cells that were not in its calibration set,
its top-1 agrees with the FP32 graph on at least 99 % of cells, its accuracy is at most one point
below FP32's, and its cell masks overlap FP32's with a mean IoU of at least 0.90 (the analyzer
returns the masks, so they are gated like the labels). Labels come from the ImageFolder layout:
a cell's parent folder is its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import sha256_file
from dorl.contract import MASK_LOGITS, PROBS, mask_iou, top1, top1_agreement
from dorl.errors import ConfigError, DorlError, ImageError

MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01  # one percentage point
MIN_MASK_IOU = 0.90  # mean over the gate's cells
MIN_GATE_CELLS = 200


class GateError(DorlError):
    """An INT8 graph falls below the gate."""


@dataclass(frozen=True)
class GateThresholds:
    """What an INT8 graph must keep against FP32 (all fractions)."""

    min_agreement: float = MIN_AGREEMENT
    max_accuracy_drop: float = MAX_ACCURACY_DROP
    min_mask_iou: float = MIN_MASK_IOU
    min_cells: int = MIN_GATE_CELLS

    def __post_init__(self) -> None:
        for name in ("min_agreement", "max_accuracy_drop", "min_mask_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"the INT8 gate's {name} is {getattr(self, name)}: give a fraction from 0 to 1.")
        if self.min_cells < 1:
            raise ConfigError(f"the INT8 gate needs at least one cell, got {self.min_cells}.")


@dataclass(frozen=True)
class GateSet:
    """Held-out cells with their class indices."""

    sources: tuple[str, ...]
    labels: np.ndarray  # int [N]


@dataclass(frozen=True)
class GateReport:
    """How an INT8 graph did against FP32 on the gate set."""

    images: int
    top1_agreement: float
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_drop: float
    mask_iou_mean: float | None  # None when the graph makes no masks
    probs_drift: float  # mean total-variation distance between the FP32 and INT8 probabilities
    thresholds: GateThresholds = GateThresholds()

    @property
    def passed(self) -> bool:
        t = self.thresholds
        masks = self.mask_iou_mean is None or self.mask_iou_mean >= t.min_mask_iou
        return self.top1_agreement >= t.min_agreement and self.accuracy_drop <= t.max_accuracy_drop and masks

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.update(fields.pop("thresholds"))
        return {**fields, "passed": self.passed}

    def describe(self) -> str:
        t = self.thresholds
        masks = "" if self.mask_iou_mean is None else \
            f", mask IoU {self.mask_iou_mean:.3f} (needs {t.min_mask_iou:.2f})"
        change = (f"a drop of {self.accuracy_drop * 100:.1f} points" if self.accuracy_drop >= 0
                  else f"a gain of {-self.accuracy_drop * 100:.1f} points")
        return (f"top-1 agreement with FP32 {self.top1_agreement:.1%} (needs {t.min_agreement:.0%}), accuracy "
                f"{self.accuracy_int8:.1%} vs FP32 {self.accuracy_fp32:.1%}: {change} (a drop of at most "
                f"{t.max_accuracy_drop * 100:.0f}){masks} on {self.images} held-out cells")


def gate_set(paths: Sequence[Any], class_names: Sequence[str], held_out_from: frozenset[str] = frozenset(),
             min_cells: int = 1) -> GateSet:
    """The labelled cells among `paths` that are not in the calibration set.

    Args:
        paths: image files; a file's parent folder name is its class (anything else is skipped).
        class_names: the model's classes; files under other folders are skipped.
        held_out_from: sha256 of the calibration cells, which the gate must not see.
        min_cells: how many qualifying cells there must be.

    Raises:
        ConfigError: fewer than `min_cells` labelled held-out cells remain.
    """
    sources, labels = [], []
    seen: set[str] = set()  # a copy of a cell counts once: the gate's size is its number of distinct cells
    labelled = calibration = 0
    for path in (Path(p) for p in paths if isinstance(p, (str, Path))):  # arrays carry no label
        if path.parent.name not in class_names:
            continue
        if not path.is_file():
            raise ImageError(f"{path} does not exist or is not a file: check the --images paths.")
        labelled += 1
        digest = sha256_file(path)
        calibration += digest in held_out_from
        if digest not in held_out_from and digest not in seen:
            seen.add(digest)
            sources.append(str(path))
            labels.append(list(class_names).index(path.parent.name))
    if not sources and labelled and labelled == calibration:
        raise ConfigError(f"all {labelled} labelled images given are in the calibration set, which the INT8 gate must "
                          "not score: pass --images with other cells of the same labs.")
    if not sources:
        raise ConfigError(
            f"the INT8 gate needs labelled cells outside the calibration set (files in folders named after "
            f"the classes {', '.join(class_names)}); none of the {len(paths)} images given qualifies: pass --images "
            "with <class>/<image> folders."
        )
    if len(sources) < min_cells:
        raise ConfigError(
            f"the INT8 gate scores at least {min_cells} distinct labelled cells outside the calibration set, and only "
            f"{len(sources)} of the {len(paths)} images given qualify: pass more --images (<class>/<image> folders) "
            "or lower --gate-cells."
        )
    return GateSet(tuple(sources), np.asarray(labels, dtype=np.int64))


def evaluate(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], labels: np.ndarray,
             thresholds: GateThresholds = GateThresholds()) -> GateReport:
    """Compare an INT8 graph's outputs (probs, and mask_logits when present) with FP32's and the labels."""
    ref, cand = reference[PROBS], candidate[PROBS]
    ref_top, cand_top = top1(ref), top1(cand)  # -1 for a row that is not finite
    acc_ref = float((ref_top == labels).mean())
    acc_cand = float((cand_top == labels).mean())
    masks = MASK_LOGITS in reference and MASK_LOGITS in candidate
    iou = float(mask_iou(reference[MASK_LOGITS], candidate[MASK_LOGITS]).mean()) if masks else None
    # total variation per cell; a cell whose probabilities are not finite (an overflowed graph) is as far
    # as a cell can be (1), never NaN, which would poison the mean and the JSON manifest
    finite = (ref_top >= 0) & (cand_top >= 0)
    variation = 0.5 * np.abs(np.where(finite[:, None], ref - cand, 0.0)).sum(axis=1)
    drift = float(np.where(finite, variation, 1.0).mean()) if len(finite) else 0.0
    return GateReport(len(labels), top1_agreement(ref, cand), acc_ref, acc_cand, acc_ref - acc_cand, iou, drift,
                      thresholds)


def check(reports: dict[str, GateReport], advice: str = "") -> None:
    """Raise GateError naming every failed variant, followed by `advice`.

    Args:
        reports: variant name (e.g. "Q/DQ (TensorRT)") -> its report.
        advice: what the user can do (e.g. the sensitivity sweep's findings).
    """
    failed = {name: r for name, r in reports.items() if not r.passed}
    if not failed:
        return
    lines = [f"the INT8 {name} graph fails the gate: {r.describe()}." for name, r in failed.items()]
    raise GateError(" ".join(lines + ([advice] if advice else [])))
