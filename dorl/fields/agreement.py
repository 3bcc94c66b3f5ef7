"""Does finding the cell cost accuracy? The analyzer's label for a cell found in its frame against its
label for the data set's single-cell crop of the same cell, and frame labels against labels.csv."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.fields.analysis import analyze_fields


def balanced_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Mean over the true classes of each class's recall."""
    recalls = []
    for label in sorted(set(truth)):
        rows = [p for t, p in zip(truth, predicted) if t == label]
        recalls.append(sum(p == label for p in rows) / len(rows))
    return float(np.mean(recalls)) if recalls else 0.0


def read_frame_labels(path: Path) -> dict[str, str]:
    """frame -> white-cell type from a labels.csv with columns frame, wbc_class (empty when unknown)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["frame"]: row["wbc_class"] for row in csv.DictReader(f) if row.get("wbc_class")}


def print_agreement(artifact: Path, fields: Path, frames: Sequence[Any], matches: Sequence[Any], batch_size: int) -> None:
    """Run the analyzer on the frames and on the matched crops; print both agreements."""
    from dorl.runtime.analyzer import Analyzer

    with Analyzer(artifact, batch_size=batch_size) as analyzer:
        field_labels: dict[str, list[tuple[str | None, bool]]] = {}
        for result in analyze_fields((f.rgb for f in frames), analyzer):
            name = frames[result.index].name
            field_labels[name] = [(c.result.label, c.edge) for c in result.cells]
        placed = [m for m in matches if m.cell is not None]
        crop_labels = [r.label for r in analyzer.iter_analyze([m.path for m in placed])]
    pairs = [(crop, *field_labels[m.frame][m.cell], m) for m, crop in zip(placed, crop_labels)]
    _print_pairs(pairs, len(matches))
    _print_frame_labels(read_frame_labels(fields / "labels.csv"), field_labels)


def _print_pairs(pairs: list[tuple[Any, ...]], total: int) -> None:
    agree = sum(crop == field for crop, field, _, _ in pairs)
    whole = [(c, f) for c, f, edge, _ in pairs if not edge]
    print(f"field labels vs single-cell crop labels, same artifact: {agree}/{len(pairs)} matched cells agree "
          f"({100 * agree / max(len(pairs), 1):.1f} %; {total - len(pairs)} crops showed no found cell); "
          f"cells not cut by the edge: {sum(c == f for c, f in whole)}/{len(whole)} "
          f"({100 * sum(c == f for c, f in whole) / max(len(whole), 1):.1f} %)")
    folder = [m.label for _, _, _, m in pairs]
    for name, labels in (("crop", [c for c, _, _, _ in pairs]), ("field", [f for _, f, _, _ in pairs])):
        accuracy = np.mean([a == b for a, b in zip(folder, labels)]) if pairs else 0.0
        print(f"  {name} labels vs the crops' folder labels: accuracy {100 * accuracy:.1f} %, balanced "
              f"{100 * balanced_accuracy(folder, [str(x) for x in labels]):.1f} %")
    confusions = Counter((c, f) for c, f, _, _ in pairs if c != f)
    if confusions:
        print("  disagreements (crop -> field): " + ", ".join(f"{c}->{f} {n}" for (c, f), n in confusions.most_common()))


def _print_frame_labels(truth: dict[str, str], field_labels: dict[str, list[tuple[str | None, bool]]]) -> None:
    """The frame's label = its largest found cell's (the finder lists the largest nucleus first)."""
    names = [n for n in truth if field_labels.get(n)]
    if not names:
        return
    expected = [truth[n] for n in names]
    predicted = [str(field_labels[n][0][0]) for n in names]
    accuracy = np.mean([a == b for a, b in zip(expected, predicted)])
    majority_label, majority = Counter(expected).most_common(1)[0]
    print(f"frame labels (largest cell) vs labels.csv, {len(names)} frames: accuracy {100 * accuracy:.1f} %, "
          f"balanced accuracy {100 * balanced_accuracy(expected, predicted):.1f} % "
          f"(always {majority_label}: {100 * majority / len(names):.1f} %, balanced {100 / len(set(expected)):.1f} %); "
          f"predicted: {dict(Counter(predicted).most_common())}")
