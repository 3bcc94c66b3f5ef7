"""Reproducible splits: DoRL's stratified k-fold protocol and a held-out split for segmentation.

The paper's code splits each source domain with
`StratifiedKFold(n_splits=5, shuffle=True, random_state=1234).split(X, y)`; `stratified_kfold`
calls exactly that (scikit-learn, imported late). Labels here are class-name strings, while the
paper's were integers: scikit-learn encodes labels in sorted order, so the folds equal the
paper's only when both orders agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dorl.deps import require
from dorl.errors import ConfigError

DEFAULT_FOLDS = 5
DEFAULT_SEED = 1234


def _as_labels(labels: Sequence[str] | Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}.")
    return array


def stratified_kfold(labels: Sequence[str] | Sequence[int] | np.ndarray, n_splits: int = DEFAULT_FOLDS,
                     seed: int = DEFAULT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled k-fold split of one domain's samples (the paper's protocol).

    Args:
        labels: the class label of each sample.
        n_splits: number of folds (5 in the paper).
        seed: shuffling seed (1234 in the paper).

    Returns:
        n_splits pairs (train indices, test indices); each sample is tested exactly once.

    Raises:
        ConfigError: fewer than 2 folds, or some class with fewer samples than folds (its
            samples could not reach every fold; merge or drop that class, or use fewer folds).
    """
    y = _as_labels(labels)
    if n_splits < 2:
        raise ConfigError(f"stratified k-fold needs at least 2 folds, got {n_splits}.")
    classes, counts = np.unique(y, return_counts=True)
    small = {str(c): int(n) for c, n in zip(classes, counts) if n < n_splits}
    if small:
        raise ConfigError(f"classes {small} have fewer samples than the {n_splits} folds: drop them from "
                          "the class list, or use fewer folds.")
    require("sklearn", "the stratified k-fold split")
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y)]


def holdout_split(labels: Sequence[str] | Sequence[int] | np.ndarray, fraction: float = 0.2,
                  seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified held-out split (e.g. validation masks for segmentation training).

    Each class gives round(fraction x its count) samples to the held-out part, at least one when
    it has two or more samples and never all of them.

    Args:
        labels: the class label of each sample.
        fraction: the held-out share, in (0, 1).
        seed: the seed of numpy's default generator.

    Returns:
        (train indices, held-out indices), each sorted.

    Raises:
        ConfigError: fraction outside (0, 1) or empty labels.
    """
    y = _as_labels(labels)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be between 0 and 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    held_out = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        count = len(members)
        take = 0 if count < 2 else min(count - 1, max(1, round(fraction * count)))
        held_out.append(members[:take])
    test = np.sort(np.concatenate(held_out)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(y)), test).astype(np.int64)
    return train, test
