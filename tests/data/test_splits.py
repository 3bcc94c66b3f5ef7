from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dorl.data.domains import Domain
from dorl.data.splits import holdout_split, stratified_kfold
from dorl.errors import ConfigError


def test_kfold_on_pbc_is_stratified_and_covers_every_sample(pbc_domain: Domain) -> None:
    labels = np.array(pbc_domain.labels)
    folds = stratified_kfold(labels)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(labels)))
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(labels)
        counts = Counter(labels[test])  # 16 cells of each class over 5 folds: 3 or 4 per fold
        assert set(counts) == set(pbc_domain.class_names) and set(counts.values()) <= {3, 4}


def test_kfold_is_the_papers_sklearn_call_and_reproducible() -> None:
    from sklearn.model_selection import StratifiedKFold

    labels = np.array(["a"] * 13 + ["b"] * 9 + ["c"] * 6)
    ours = stratified_kfold(labels)
    theirs = StratifiedKFold(n_splits=5, shuffle=True, random_state=1234).split(np.zeros(len(labels)), labels)
    for (train, test), (their_train, their_test) in zip(ours, theirs, strict=True):
        assert np.array_equal(train, their_train) and np.array_equal(test, their_test)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ours, stratified_kfold(labels)))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(ours, stratified_kfold(labels, seed=7)))


def test_kfold_errors() -> None:
    with pytest.raises(ConfigError, match=r"\{'b': 3\} have fewer samples than the 5 folds"):
        stratified_kfold(["a"] * 10 + ["b"] * 3)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        stratified_kfold(["a"] * 10, n_splits=1)
    with pytest.raises(ConfigError, match="non-empty"):
        stratified_kfold([])


def test_holdout_is_stratified_seeded_and_disjoint() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 20 + ["c"] * 3 + ["d"])
    train, held = holdout_split(labels, 0.2, seed=3)
    assert Counter(labels[held]) == {"a": 10, "b": 4, "c": 1}  # "d" alone stays in training
    assert sorted(np.concatenate([train, held])) == list(range(len(labels)))
    again_train, again_held = holdout_split(labels, 0.2, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert not np.array_equal(held, holdout_split(labels, 0.2, seed=4)[1])
    assert np.all(np.diff(held) > 0) and held.dtype == np.int64


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_fraction_must_be_inside_zero_one(fraction: float) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        holdout_split(["a", "b"], fraction)
