"""Paired differences: an interval holding 0 is "no difference", whatever the means."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.evaluation.compare import NO_DIFFERENCE, compare_rows, paired_difference, verdict
from dorl.evaluation.metrics import ci95


def test_verdict_reads_the_interval() -> None:
    assert verdict(0.03, 0.05) == NO_DIFFERENCE  # larger mean, but inside the noise
    assert verdict(0.06, 0.05) == "better" and verdict(-0.06, 0.05) == "worse"
    assert verdict(0.2, float("nan")) == NO_DIFFERENCE  # one split: no interval, no claim


def test_paired_difference_is_the_mean_of_per_split_differences() -> None:
    a = [0.60, 0.62, 0.58, 0.61, 0.59]
    b = [0.50, 0.51, 0.49, 0.52, 0.48]
    d = paired_difference(a, b)
    diffs = np.subtract(a, b)
    assert d["mean"] == pytest.approx(diffs.mean())
    assert d["ci95"] == pytest.approx(2.7764451 * diffs.std(ddof=1) / np.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert d["verdict"] == "better"
    # the same means with split-to-split noise larger than the gap: no difference
    noisy = paired_difference([0.9, 0.3, 0.8, 0.35, 0.7], [0.5, 0.5, 0.5, 0.5, 0.5])
    assert noisy["mean"] > 0 and noisy["verdict"] == NO_DIFFERENCE
    with pytest.raises(ValueError, match="same splits"):
        paired_difference([0.1, 0.2], [0.1])


def test_ci95_matches_student_t() -> None:
    assert np.isnan(ci95([0.5]))
    assert ci95([0.0, 1.0]) == pytest.approx(12.7062047 * np.std([0, 1], ddof=1) / np.sqrt(2), rel=1e-6)


def _row(method: str, head: str, folds: list[float], **tags: str) -> dict:
    return {"method": method, "head": head, "tags": tags,
            "cross_lab": {"balanced_accuracy": {"folds": folds}}}


def test_compare_rows_pairs_rows_that_differ_in_one_tag() -> None:
    rows = [_row("cae cell", "svm", [0.6, 0.62, 0.61], feature="cae", framing="cell"),
            _row("pooled cell", "svm", [0.5, 0.51, 0.52], feature="pooled", framing="cell"),
            _row("cae whole", "svm", [0.3, 0.2, 0.25], feature="cae", framing="whole"),
            _row("pooled whole", "svm", [0.3, 0.25, 0.2], feature="pooled", framing="whole")]
    by_feature = compare_rows(rows, "feature", "pooled")
    assert [(c["method"], c["reference"]) for c in by_feature] == [("cae cell", "pooled cell"),
                                                                   ("cae whole", "pooled whole")]
    assert by_feature[0]["verdict"] == "better" and by_feature[1]["verdict"] == NO_DIFFERENCE
    by_framing = compare_rows(rows, "framing", "whole")
    assert {c["method"] for c in by_framing} == {"cae cell", "pooled cell"}
    assert all(c["verdict"] == "better" for c in by_framing)
