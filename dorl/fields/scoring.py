"""Score found boxes against annotated boxes: one-to-one matches at an IoU threshold; the tune/held-out split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dorl.fields.finder import Box

TUNE, HELD_OUT = "tune (even frame numbers)", "held out (odd frame numbers)"


def split_of(name: str) -> str:
    """The half of an annotated set a frame belongs to: parameters are tuned on even frame numbers and
    checked on odd ones."""
    digits = "".join(c for c in name if c.isdigit())
    return TUNE if digits and int(digits) % 2 == 0 else HELD_OUT


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1; x1/y1 exclusive)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(found: Sequence[Box], truth: Sequence[Box], min_iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Pair found and true boxes one to one, the highest IoU first, keeping pairs at or above `min_iou`.

    Returns:
        (found index, truth index, IoU) per pair.
    """
    pairs = sorted(((box_iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_found: set[int] = set()
    used_truth: set[int] = set()
    matches = []
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
            matches.append((i, j, iou))
    return matches


@dataclass
class DetectionScore:
    """Counts of matched, spurious and missed boxes over many frames."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    iou_sum: float = 0.0

    def add(self, found: Sequence[Box], truth: Sequence[Box], min_iou: float = 0.5) -> list[tuple[int, int, float]]:
        """Score one frame; returns its matches."""
        matches = match_boxes(found, truth, min_iou)
        self.true_positives += len(matches)
        self.false_positives += len(found) - len(matches)
        self.false_negatives += len(truth) - len(matches)
        self.iou_sum += sum(m[2] for m in matches)
        return matches

    @property
    def recall(self) -> float:
        total = self.true_positives + self.false_negatives
        return self.true_positives / total if total else 1.0

    @property
    def precision(self) -> float:
        total = self.true_positives + self.false_positives
        return self.true_positives / total if total else 1.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs."""
        return self.iou_sum / self.true_positives if self.true_positives else 0.0
