"""Host postprocessing: softmax, connected components, the cell mask, the label decision."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from dorl.runtime.postprocess import (
    cell_mask,
    decide,
    finite_rows,
    label_components,
    largest_component,
    softmax,
)

NAMES = ["basophil", "eosinophil", "lymphocyte"]


def bfs_labels(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Reference labelling: breadth-first search, components numbered in raster order."""
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels


def test_softmax_matches_definition_and_is_stable() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]], np.float32)
    probs = softmax(logits)
    np.testing.assert_allclose(probs[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)
    np.testing.assert_allclose(probs[1], [0.5, 0.5, 0.0], atol=1e-7)
    assert probs.dtype == np.float32


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_label_components_matches_bfs(connectivity: int, density: float) -> None:
    rng = np.random.default_rng(int(density * 100) + connectivity)
    for _ in range(5):
        mask = rng.random((56, 56)) < density
        labels, count = label_components(mask, connectivity)
        expected = bfs_labels(mask, connectivity)
        assert count == expected.max()
        np.testing.assert_array_equal(labels, expected)


def test_label_components_on_a_serpentine_and_empty_map() -> None:
    snake = np.zeros((56, 56), bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    labels, count = label_components(snake)
    assert count == 1 and (labels[snake] == 1).all()
    labels, count = label_components(np.zeros((56, 56), bool))
    assert count == 0 and not labels.any()
    with pytest.raises(ValueError, match="4 or 8"):
        label_components(snake, connectivity=6)


def test_largest_component_and_connectivity() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:4, 1:4] = True  # 9 px
    mask[4:7, 4:7] = True  # 9 px touching the first only at a corner
    mask[8:12, 0:3] = True  # 12 px
    np.testing.assert_array_equal(largest_component(mask, 4), np.pad(np.ones((4, 3), bool), ((8, 0), (0, 9))))
    merged = largest_component(mask, 8)
    assert merged.sum() == 18 and merged[1, 1] and merged[6, 6] and not merged[10, 1]


def test_largest_component_tie_keeps_the_first() -> None:
    mask = np.zeros((6, 6), bool)
    mask[0, 0:2] = True
    mask[5, 4:6] = True
    kept = largest_component(mask)
    assert kept[0, 0] and kept[0, 1] and kept.sum() == 2


def synthetic_logits() -> tuple[np.ndarray, np.ndarray]:
    """Mask logits [2, 56, 56] with a 20x24 cell and a 3x3 speck, and the expected low-res mask."""
    cell = np.zeros((56, 56), bool)
    cell[10:30, 20:44] = True
    speck = np.zeros((56, 56), bool)
    speck[48:51, 2:5] = True
    score = np.where(cell | speck, 2.0, -2.0).astype(np.float32)
    return np.stack([-score, score]), cell


def test_cell_mask_keeps_the_largest_component_at_low_res() -> None:
    logits, expected = synthetic_logits()
    mask = cell_mask(logits, (56, 56))
    assert mask is not None and mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


def test_cell_mask_resizes_nearest_to_the_original_size() -> None:
    logits, expected = synthetic_logits()
    mask = cell_mask(logits, (112, 168))  # 2x taller, 3x wider
    assert mask is not None and mask.shape == (112, 168)
    np.testing.assert_array_equal(mask, np.repeat(np.repeat(expected, 2, axis=0), 3, axis=1))


def test_cell_mask_ties_go_to_background_and_non_finite_gives_none() -> None:
    assert not cell_mask(np.zeros((2, 56, 56), np.float32), (56, 56)).any()  # type: ignore[union-attr]
    logits, _ = synthetic_logits()
    logits[1, 0, 0] = np.nan
    assert cell_mask(logits, (56, 56)) is None
    with pytest.raises(ValueError, match=r"\[2, h, w\]"):
        cell_mask(np.zeros((3, 56, 56), np.float32), (56, 56))


def test_decide_labels_and_flags_uncertainty() -> None:
    assert decide(np.array([0.1, 0.7, 0.2]), NAMES, 0.5) == ("eosinophil", False)
    assert decide(np.array([0.4, 0.35, 0.25]), NAMES, 0.5) == ("basophil", True)
    assert decide(np.array([0.4, 0.35, 0.25]), NAMES, 0.3) == ("basophil", False)
    assert decide(np.array([np.nan, 0.5, 0.5]), NAMES, 0.5) == (None, True)
    assert decide(np.array([0.1, 0.8, 0.1]), NAMES, 0.5, finite=False) == (None, True)


def test_finite_rows_looks_at_every_float_output() -> None:
    outputs = {
        "probs": np.full((3, 2), 0.5, np.float32),
        "mask_logits": np.zeros((3, 2, 4, 4), np.float32),
        "index": np.zeros((3,), np.int64),
    }
    outputs["mask_logits"][2, 1, 3, 3] = np.inf
    outputs["probs"][0, 1] = np.nan
    assert finite_rows(outputs).tolist() == [False, True, False]
