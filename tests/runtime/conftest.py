"""Runtime fixtures: the tiny artifact (built by tests/support/tiny_artifact.py) and real cells."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_data import MASKED
from tiny_artifact import TinyArtifact, build_tiny_artifact


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    """The tiny artifact, built once per session; copy its folder before changing it."""
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package (export extra)")
    return build_tiny_artifact(tmp_path_factory.mktemp("tiny_artifact") / "tiny")


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
