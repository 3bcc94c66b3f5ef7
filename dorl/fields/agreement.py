"""Does finding the cell cost accuracy? The analyzer's label for a cell found in its frame against its
label for the data set's single-cell crop of the same cell, and frame labels against labels.csv."""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dorl.fields.analysis import analyze_fields
from dorl.fields.scoring import HELD_OUT, TUNE, split_of

CONFIDENCE_STEPS = (0.5, 0.6, 0.7, 0.8)  # top-probability thresholds (the analyzer's --threshold) to break agreement by


class FoundCell(NamedTuple):
    """What the benchmark keeps of a cell found in a frame."""

    label: str | None
    edge: bool  # the frame's edge cuts it
    confidence: float | None


def balanced_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Mean over the true classes of each class's recall."""
    recalls = []
    for label in sorted(set(truth)):
        rows = [p for t, p in zip(truth, predicted) if t == label]
        recalls.append(sum(p == label for p in rows) / len(rows))
    return float(np.mean(recalls)) if recalls else 0.0


def agreement_by_confidence(reference: Sequence[str | None], candidate: Sequence[str | None],
                            confidence: Sequence[float | None], thresholds: Sequence[float] = CONFIDENCE_STEPS
                            ) -> list[tuple[float, int, float | None]]:
    """For each threshold: (threshold, the cells whose `confidence` reaches it, the share of those whose
    two labels agree, None for no cell). A cell without a confidence (no label) never reaches one."""
    rows = []
    for threshold in thresholds:
        kept = [a == b for a, b, c in zip(reference, candidate, confidence) if c is not None and c >= threshold]
        rows.append((threshold, len(kept), float(np.mean(kept)) if kept else None))
    return rows


def read_frame_labels(path: Path) -> dict[str, str]:
    """frame -> white-cell type from a labels.csv with columns frame, wbc_class (empty when unknown)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["frame"]: row["wbc_class"] for row in csv.DictReader(f) if row.get("wbc_class")}


def print_agreement(artifact: Path, fields: Path, frames: Sequence[Any], matches: Sequence[Any], batch_size: int,
                    site: Path | None = None) -> None:
    """Run the analyzer on the frames and on the matched crops; print the agreements.

    Two controls bound what any finder can reach with this artifact: the data set crop's own box
    cut from the frame (the same pixels, only the crop file's JPEG re-encoding differs) and
    that box shifted by 4 px (IoU about 0.95 with it). The labels compared are the classifier's
    (the analyzer's "no cell" check is off: it withholds labels, and the question here is whether
    finding the cell changes the label). The field run reads the frame files, so its time is the
    whole path: decoding, finding, cutting and classifying.
    """
    from dorl.runtime.analyzer import Analyzer

    by_name = {f.name: f for f in frames}
    placed = [m for m in matches if m.cell is not None]
    with Analyzer(artifact, batch_size=batch_size, site=site, check_cells=False) as analyzer:
        field_labels: dict[str, list[FoundCell]] = {}
        start, cpu = time.perf_counter(), time.process_time()
        for result in analyze_fields((fields / "images" / f"{f.name}.jpg" for f in frames), analyzer):
            field_labels[frames[result.index].name] = [FoundCell(c.result.label, c.edge, c.result.confidence)
                                                       for c in result.cells]
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        crop = _labels(analyzer, [m.path for m in placed])
        same_box = _labels(analyzer, [_cut(by_name[m.frame].rgb, m.box) for m in placed])
        shifted = _labels(analyzer, [_cut(by_name[m.frame].rgb, _shift(m.box, by_name[m.frame].rgb.shape, 4))
                                     for m in placed])
    cells = sum(len(v) for v in field_labels.values())
    print(f"field analysis end to end (decode, find, cut, classify; batch {analyzer.batch_size}): "
          f"{len(frames) / seconds:.2f} frames/s, {cells / seconds:.2f} cells/s ({len(frames)} frames, {cells} cells); "
          f"CPU time {1000 * cpu / len(frames):.0f} ms per frame, all threads")
    field = [field_labels[m.frame][m.cell].label for m in placed]
    edge = [field_labels[m.frame][m.cell].edge for m in placed]
    print(f"labels of the same cells, {len(placed)} single-cell crops matched to found cells "
          f"({len(matches) - len(placed)} unmatched); agreement with the label of the crop file:")
    for name, labels in (("found in the frame (dorl.fields)", field),
                         ("control: the crop file's own box cut from the frame", same_box),
                         ("control: that box shifted by 4 px", shifted)):
        agree = [a == b for a, b in zip(crop, labels)]
        print(f"  {name}: {_share(agree)} (cells not cut by the edge: {_share([a for a, e in zip(agree, edge) if not e])}"
              f"; cut by it: {_share([a for a, e in zip(agree, edge) if e])})")
        for split in (TUNE, HELD_OUT):
            rows = [i for i, m in enumerate(placed) if split_of(m.frame) == split]
            print(f"    {split}: {_share([agree[i] for i in rows])} (not cut by the edge: "
                  f"{_share([agree[i] for i in rows if not edge[i]])})")
    confidence = [field_labels[m.frame][m.cell].confidence for m in placed]
    print("  found in the frame, by its top probability (cells counted as sure at that --threshold): " + "; ".join(
        f">= {t:.1f}: {n} cells, {'-' if share is None else f'{100 * share:.1f} %'} agree"
        for t, n, share in agreement_by_confidence(crop, field, confidence)))
    confusions = Counter((c, f) for c, f in zip(crop, field) if c != f)
    print("  disagreements (crop file -> field): " + ", ".join(f"{c}->{f} {n}" for (c, f), n in confusions.most_common()))
    folder = [m.label for m in placed]
    for name, labels in (("crop file", crop), ("field", field)):
        accuracy = np.mean([a == b for a, b in zip(folder, labels)])
        print(f"  {name} labels vs the crops' folder labels: accuracy {100 * accuracy:.1f} %, balanced "
              f"{100 * balanced_accuracy(folder, [str(x) for x in labels]):.1f} %")
    _print_frame_labels(read_frame_labels(fields / "labels.csv"), field_labels)


def _share(agree: Sequence[bool]) -> str:
    return f"{100 * np.mean(agree):.1f} % ({sum(agree)}/{len(agree)})" if agree else "-"


def _labels(analyzer: Any, images: Sequence[Any]) -> list[str | None]:
    return [r.label for r in analyzer.iter_analyze(images)]


def _cut(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def _shift(box: tuple[int, int, int, int], shape: tuple[int, ...], step: int) -> tuple[int, int, int, int]:
    """The box moved by `step` px right and down, or left and up where the frame ends."""
    dx = step if box[2] + step <= shape[1] else -step
    dy = step if box[3] + step <= shape[0] else -step
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def _print_frame_labels(truth: dict[str, str], field_labels: dict[str, list[FoundCell]]) -> None:
    """The frame's label = its largest found cell's (the finder lists the largest nucleus first)."""
    names = [n for n in truth if field_labels.get(n)]
    if not names:
        return
    expected = [truth[n] for n in names]
    predicted = [str(field_labels[n][0].label) for n in names]
    accuracy = np.mean([a == b for a, b in zip(expected, predicted)])
    majority_label, majority = Counter(expected).most_common(1)[0]
    print(f"frame labels (largest cell) vs labels.csv, {len(names)} frames: accuracy {100 * accuracy:.1f} %, "
          f"balanced accuracy {100 * balanced_accuracy(expected, predicted):.1f} % "
          f"(always {majority_label}: {100 * majority / len(names):.1f} %, balanced {100 / len(set(expected)):.1f} %); "
          f"predicted: {dict(Counter(predicted).most_common())}")
