"""Fixtures shared by every test package: real cell images and shared weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.paths import DECODER_WEIGHTS, TINYVIT_WEIGHTS, find_weights, wbc_data_dir


@pytest.fixture(scope="session")
def wbc_dir() -> Path:
    path = wbc_data_dir()
    if path is None:
        pytest.skip("the shared real cell images (shared/data/wbc) are not beside this checkout")
    return path


@pytest.fixture(scope="session")
def cell_paths(wbc_dir: Path) -> list[Path]:
    """Six real cells: two per lab (pbc, bccd, jtsc), of different classes."""
    picks = []
    for domain, classes in (("pbc", ("neutrophil", "lymphocyte")), ("bccd", ("eosinophil", "neutrophil")),
                            ("jtsc", ("monocyte", "neutrophil"))):
        for cls in classes:
            picks.append(min((wbc_dir / domain / cls).iterdir()))
    return picks


@pytest.fixture(scope="session")
def cell_batch(cell_paths: list[Path]) -> np.ndarray:
    """The six cells as uint8 [6,224,224,3], resized the way training and the runtime do."""
    from dorl.data.images import load_rgb, resize_square

    return np.stack([resize_square(load_rgb(p), 224) for p in cell_paths])


def _shared_weights(name: str, what: str) -> Path:
    path = find_weights(name)
    if path is None:
        pytest.skip(f"the pretrained {what} weights (shared/weights) are not available")
    return path


@pytest.fixture(scope="session")
def tinyvit_weights() -> Path:
    return _shared_weights(TINYVIT_WEIGHTS, "TinyViT")


@pytest.fixture(scope="session")
def decoder_weights() -> Path:
    return _shared_weights(DECODER_WEIGHTS, "SAM decoder")
