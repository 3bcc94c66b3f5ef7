"""Field fixtures: the six bundled camera frames with their VOC boxes, and the tiny artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_artifact import TinyArtifact, build_tiny_artifact

from dorl.paths import ASSETS_DIR

FIELDS = ASSETS_DIR / "fields" / "bccd"


@pytest.fixture(scope="session")
def fields_dir() -> Path:
    """The bundled frames: images/*.jpg and annotations/*.xml (shipped with the package)."""
    return FIELDS


@pytest.fixture(scope="session")
def frame_paths() -> list[Path]:
    return sorted((FIELDS / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package (export extra)")
    pytest.importorskip("onnxruntime", reason="the field analysis runs the tiny artifact with onnxruntime")
    return build_tiny_artifact(tmp_path_factory.mktemp("fields") / "tiny")
