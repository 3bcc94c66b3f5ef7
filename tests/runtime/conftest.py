"""Runtime fixtures: the tiny artifact (committed, from tests/support/tiny_artifact.py) and real cells."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sample_data import MASKED
from tiny_artifact import COMMITTED, TinyArtifact, tiny_weights


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    """A copy of the committed tiny artifact (no onnx package needed); copy its folder before changing it."""
    folder = Path(shutil.copytree(COMMITTED, tmp_path_factory.mktemp("tiny_artifact") / "tiny"))
    return tiny_weights(folder)


@pytest.fixture(scope="session")
def wbc_root(wbc_dir: Path) -> Path:
    """The tests' labs of real white-blood-cell images (see tests/conftest.py)."""
    return wbc_dir


@pytest.fixture(scope="session")
def cell_images(wbc_root: Path) -> list[Path]:
    """Two real cell images from each lab: pbc (JPEG), bccd (JPEG), the lab with masks (BMP)."""
    picked: list[Path] = []
    for lab, pattern in (("pbc", "neutrophil/*.jpg"), ("bccd", "neutrophil/*.jpg"), (MASKED, "neutrophil/*.bmp")):
        picked.extend(sorted((wbc_root / lab).glob(pattern))[:2])
    return picked
