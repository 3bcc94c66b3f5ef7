"""The INT8 accuracy gate: labelled held-out cells, agreement with FP32 and the accuracy drop.

An INT8 graph ships only if, on labelled cells that were not in its calibration set, its top-1
agrees with the FP32 graph on at least 99 % of cells and its accuracy is at most one point
below FP32's. Labels come from the ImageFolder layout: a cell's parent folder is its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import sha256_file
from dorl.errors import ConfigError, DorlError, ImageError

MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01  # one percentage point


class GateError(DorlError):
    """An INT8 graph falls below the accuracy gate."""


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
    min_agreement: float = MIN_AGREEMENT
    max_accuracy_drop: float = MAX_ACCURACY_DROP

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= self.min_agreement and self.accuracy_drop <= self.max_accuracy_drop

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (f"top-1 agreement with FP32 {self.top1_agreement:.1%} (needs {self.min_agreement:.0%}), accuracy "
                f"{self.accuracy_int8:.1%} vs FP32 {self.accuracy_fp32:.1%}: a drop of {self.accuracy_drop * 100:.1f} "
                f"points (at most {self.max_accuracy_drop * 100:.0f}) on {self.images} held-out cells")


def gate_set(paths: Sequence[Any], class_names: Sequence[str], held_out_from: frozenset[str] = frozenset()) -> GateSet:
    """The labelled cells among `paths` that are not in the calibration set.

    Args:
        paths: image files; a file's parent folder name is its class (anything else is skipped).
        class_names: the model's classes; files under other folders are skipped.
        held_out_from: sha256 of the calibration cells, which the gate must not see.

    Raises:
        ConfigError: no labelled held-out cell remains.
    """
    sources, labels = [], []
    for path in (Path(p) for p in paths if isinstance(p, (str, Path))):  # arrays carry no label
        if path.parent.name in class_names and not path.is_file():
            raise ImageError(f"{path} does not exist or is not a file: check the --images paths.")
        if path.parent.name in class_names and sha256_file(path) not in held_out_from:
            sources.append(str(path))
            labels.append(list(class_names).index(path.parent.name))
    if not sources:
        raise ConfigError(
            f"the INT8 accuracy gate needs labelled cells outside the calibration set (files in folders named after "
            f"the classes {', '.join(class_names)}); none of the {len(paths)} images given qualifies: pass --images "
            "with <class>/<image> folders."
        )
    return GateSet(tuple(sources), np.asarray(labels, dtype=np.int64))


def evaluate(fp32_probs: np.ndarray, int8_probs: np.ndarray, labels: np.ndarray,
             min_agreement: float = MIN_AGREEMENT, max_accuracy_drop: float = MAX_ACCURACY_DROP) -> GateReport:
    """Compare the INT8 graph's predictions with FP32's and with the labels."""
    ref, cand = fp32_probs.argmax(axis=1), int8_probs.argmax(axis=1)
    acc_ref = float((ref == labels).mean())
    acc_cand = float((cand == labels).mean())
    return GateReport(len(labels), float((ref == cand).mean()), acc_ref, acc_cand, acc_ref - acc_cand,
                      min_agreement, max_accuracy_drop)


def check(reports: dict[str, GateReport], costly: Sequence[str] = ()) -> None:
    """Raise GateError naming every failed variant and the node groups that cost the most.

    Args:
        reports: variant name (e.g. "Q/DQ (TensorRT)") -> its report.
        costly: descriptions of the worst node groups from the sensitivity sweep, worst first.
    """
    failed = {name: r for name, r in reports.items() if not r.passed}
    if not failed:
        return
    lines = [f"the INT8 {name} graph fails the accuracy gate: {r.describe()}." for name, r in failed.items()]
    if costly:
        lines.append("Node groups that cost the most when quantized alone: " + "; ".join(costly) +
                     ". Keep them in float with --exclude 'GROUP*' and export again, or calibrate on more cells.")
    raise GateError(" ".join(lines))
