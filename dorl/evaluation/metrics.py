"""Classification scores in numpy: accuracy, balanced accuracy, macro-F1, per-class recall,
confusion matrix, and 95 % intervals over repeated splits.

Labels may be any hashable values (class names or indices). A confusion matrix here may be
rectangular: its rows are the classes a test domain holds, its columns the classes the head
can predict (a head trained on all 8 `pbc` classes can answer `platelet` for a `bccd` cell).
Means and standard deviations over folds use numpy's default (population, ddof=0), as the
paper's released evaluation notebook does. The 95 % interval of a mean over n split values
(seeds x folds) is Student's t: mean ± t(0.975, n-1) · s / sqrt(n) with the sample standard
deviation s (ddof=1). The values of one seed's folds share training cells, so the interval
is an approximation that errs towards too narrow; it is meant to stop a difference within the
split-to-split noise from being read as a win, not as an exact test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions equal to the true label (nan for an empty set)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape.")
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, rows: Sequence[Any], columns: Sequence[Any]) -> np.ndarray:
    """Counts [len(rows), len(columns)]: entry (i, j) = cells of true class rows[i] predicted columns[j].

    Cells whose true label is not in `rows` or whose prediction is not in `columns` are not counted.
    """
    row_index = {label: i for i, label in enumerate(rows)}
    col_index = {label: j for j, label in enumerate(columns)}
    matrix = np.zeros((len(rows), len(columns)), dtype=np.int64)
    for t, p in zip(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist()):
        if t in row_index and p in col_index:
            matrix[row_index[t], col_index[p]] += 1
    return matrix


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any]) -> np.ndarray:
    """Recall of each label in `labels` (nan for a label with no true cell)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = np.full(len(labels), np.nan)
    for i, label in enumerate(labels):
        members = y_true == label
        if members.any():
            out[i] = float(np.mean(y_pred[members] == label))
    return out


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any] | None = None) -> float:
    """Mean recall over `labels` that hold at least one true cell (default: the labels of y_true).

    A constant answer scores 1/k on a test set of k classes, whatever their counts.
    """
    y_true = np.asarray(y_true)
    labels = sorted(set(y_true.tolist())) if labels is None else labels
    recall = per_class_recall(y_true, y_pred, labels)
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def t_critical(n: int) -> float:
    """The two-sided 95 % critical value of Student's t with n - 1 degrees of freedom (nan for n < 2)."""
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95 % interval of the mean of `values` (nan for fewer than 2 values)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float("nan")
    return t_critical(int(data.size)) * float(data.std(ddof=1)) / float(np.sqrt(data.size))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of the per-class F1 over `labels` (default: every label seen in y_true or y_pred).

    A class with no true and no predicted cell scores 0, as scikit-learn's `zero_division=0`.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    scores = []
    for label in labels:
        tp = float(np.sum((y_true == label) & (y_pred == label)))
        denominator = float(np.sum(y_true == label) + np.sum(y_pred == label))
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class MeanStd:
    """A score over folds: its mean, population standard deviation and the per-fold values
    (seeds x folds, seed-major)."""

    mean: float
    std: float
    folds: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanStd:
        data = np.asarray(values, dtype=float)
        if data.size == 0:
            return cls(float("nan"), float("nan"), ())
        return cls(float(data.mean()), float(data.std()), tuple(float(v) for v in data))

    @property
    def ci95(self) -> float:
        """Half-width of the mean's 95 % interval over the split values."""
        return ci95(self.folds)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci95, "folds": list(self.folds)}

    def percent(self, digits: int = 1) -> str:
        """`mean ± std` in percent, e.g. `67.6 ± 1.8`."""
        if not np.isfinite(self.mean):
            return "–"
        return f"{100 * self.mean:.{digits}f} ± {100 * self.std:.{digits}f}"


@dataclass(frozen=True)
class Scores:
    """One head's predictions on one test set, scored."""

    accuracy: float
    macro_f1: float
    recall: np.ndarray  # per class of `rows`
    confusion: np.ndarray  # [rows, columns] counts
    balanced_accuracy: float = float("nan")  # mean recall over the classes of `rows` the test set holds

    @classmethod
    def of(cls, y_true: np.ndarray, y_pred: np.ndarray, rows: Sequence[Any], columns: Sequence[Any]) -> Scores:
        """Score predictions; macro-F1 and recall are over `rows` (the classes the test set holds)."""
        return cls(
            accuracy(y_true, y_pred),
            macro_f1(y_true, y_pred, rows),
            per_class_recall(y_true, y_pred, rows),
            confusion_matrix(y_true, y_pred, rows, columns),
            balanced_accuracy(y_true, y_pred, rows),
        )


@dataclass(frozen=True)
class FoldSummary:
    """Scores of one test set over folds: mean ± std, mean recall per class, confusion summed."""

    accuracy: MeanStd
    macro_f1: MeanStd
    recall: np.ndarray
    confusion: np.ndarray
    rows: tuple[Any, ...]
    columns: tuple[Any, ...]
    balanced_accuracy: MeanStd = MeanStd(float("nan"), float("nan"), ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "balanced_accuracy": self.balanced_accuracy.to_dict(),
            "accuracy": self.accuracy.to_dict(),
            "macro_f1": self.macro_f1.to_dict(),
            "per_class_recall": {str(k): _finite(v) for k, v in zip(self.rows, self.recall.tolist())},
            "confusion": {"rows": [str(r) for r in self.rows], "columns": [str(c) for c in self.columns],
                          "counts": self.confusion.tolist()},
        }


def summarise(folds: Sequence[Scores], rows: Sequence[Any], columns: Sequence[Any]) -> FoldSummary:
    """Combine the per-fold scores of one test set (the same `rows`/`columns` in every fold)."""
    if not folds:
        raise ValueError("summarise needs the scores of at least one fold.")
    recalls = np.stack([f.recall for f in folds])
    with np.errstate(invalid="ignore"):
        mean_recall = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in recalls.T])
    return FoldSummary(
        MeanStd.of([f.accuracy for f in folds]),
        MeanStd.of([f.macro_f1 for f in folds]),
        mean_recall,
        np.sum([f.confusion for f in folds], axis=0),
        tuple(rows),
        tuple(columns),
        MeanStd.of([f.balanced_accuracy for f in folds]),
    )


def majority_scores(y_true: np.ndarray) -> dict[str, Any]:
    """What always answering the test set's own most frequent class scores (the constant to beat).

    Returns:
        {"class", "accuracy" (its count fraction), "balanced_accuracy" (1/k), "macro_f1"}.
    """
    labels, counts = np.unique(np.asarray(y_true), return_counts=True)
    if labels.size == 0:
        return {"class": None, "accuracy": float("nan"), "balanced_accuracy": float("nan"), "macro_f1": float("nan")}
    top = labels[int(np.argmax(counts))]
    constant = np.full(len(y_true), top)
    return {"class": str(top), "accuracy": accuracy(y_true, constant),
            "balanced_accuracy": balanced_accuracy(y_true, constant), "macro_f1": macro_f1(y_true, constant, labels.tolist())}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
