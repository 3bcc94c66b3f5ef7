"""Metrics against scikit-learn's on real-looking labels (class names, rectangular cases)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from dorl.evaluation.metrics import (
    MeanStd,
    Scores,
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    macro_f1,
    majority_scores,
    per_class_recall,
    summarise,
)

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture()
def labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y_true = rng.choice(CLASSES, size=200, p=[0.05, 0.2, 0.2, 0.15, 0.4])
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.choice(CLASSES + ["platelet"], size=200))
    return y_true, y_pred


def test_accuracy_recall_f1_match_sklearn(labels: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_pred = labels
    assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert 0.55 < accuracy(y_true, y_pred) < 0.8
    np.testing.assert_allclose(per_class_recall(y_true, y_pred, CLASSES),
                               sk.recall_score(y_true, y_pred, labels=CLASSES, average=None, zero_division=0))
    assert macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert macro_f1(y_true, y_pred, CLASSES) == pytest.approx(
        sk.f1_score(y_true, y_pred, labels=CLASSES, average="macro", zero_division=0))


def test_confusion_matrix_square_and_rectangular(labels: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_pred = labels
    every = CLASSES + ["platelet"]
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, every, every),
                                  sk.confusion_matrix(y_true, y_pred, labels=every))
    rect = confusion_matrix(y_true, y_pred, CLASSES, every)  # rows: true classes; columns: what a head can say
    assert rect.shape == (5, 6) and rect.sum() == len(y_true)
    assert rect[:, -1].sum() == np.sum(y_pred == "platelet")


def test_integer_labels_and_absent_class() -> None:
    y_true, y_pred = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 2])
    recall = per_class_recall(y_true, y_pred, [0, 1, 2])
    np.testing.assert_allclose(recall[:2], [0.5, 2 / 3])
    assert np.isnan(recall[2])
    assert macro_f1(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, average="macro", zero_division=0))


def test_mean_std_over_folds_uses_population_std() -> None:
    values = [0.9, 0.8, 0.85, 0.95, 0.7]
    summary = MeanStd.of(values)
    assert summary.mean == pytest.approx(np.mean(values)) and summary.std == pytest.approx(np.std(values, ddof=0))
    assert summary.percent() == f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"
    assert MeanStd.of([]).percent() == "–"


def test_summarise_sums_confusion_and_averages_recall() -> None:
    rows, columns = ["a", "b"], ["a", "b", "c"]
    folds = [Scores.of(np.array(["a", "b", "b"]), np.array(["a", "b", "c"]), rows, columns),
             Scores.of(np.array(["a", "a", "b"]), np.array(["b", "a", "b"]), rows, columns)]
    summary = summarise(folds, rows, columns)
    np.testing.assert_array_equal(summary.confusion, [[2, 1, 0], [0, 2, 1]])
    np.testing.assert_allclose(summary.recall, [(1.0 + 0.5) / 2, (0.5 + 1.0) / 2])
    assert summary.accuracy.folds == pytest.approx((2 / 3, 2 / 3))
    d = summary.to_dict()
    assert d["confusion"]["counts"] == [[2, 1, 0], [0, 2, 1]] and d["per_class_recall"] == {"a": 0.75, "b": 0.75}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # "platelet": a class the head knows
def test_balanced_accuracy_and_the_majority_constant_match_sklearn(labels: tuple[np.ndarray, np.ndarray]) -> None:
    y_true, y_pred = labels
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(sk.balanced_accuracy_score(y_true, y_pred))
    majority = majority_scores(y_true)
    constant = np.full(len(y_true), "neutrophil")
    assert majority["class"] == "neutrophil"
    assert majority["accuracy"] == pytest.approx(np.mean(y_true == "neutrophil"))  # its count fraction
    assert majority["balanced_accuracy"] == pytest.approx(1 / len(set(y_true)))
    assert majority["macro_f1"] == pytest.approx(sk.f1_score(y_true, constant, average="macro", zero_division=0))


def test_interval_is_student_t_and_shrinks_with_more_values() -> None:
    values = [0.5, 0.6, 0.55, 0.45, 0.52]
    half = MeanStd.of(values).ci95
    assert half == pytest.approx(2.7764451 * np.std(values, ddof=1) / np.sqrt(5), rel=1e-6)
    assert MeanStd.of(values * 3).ci95 < half  # the same spread over 15 splits
    assert np.isnan(MeanStd.of([0.5]).ci95) and MeanStd.of(values).to_dict()["ci95"] == half
