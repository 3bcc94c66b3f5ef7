"""Serve fixtures: real artifacts, the bundled real cells, and `dorl serve` running on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import client_for, running
from slow_artifact import build_slow_artifact
from tiny_artifact import TinyArtifact, build_tiny_artifact

from dorl.paths import ASSETS_DIR

pytest.importorskip("onnxruntime", reason="dorl serve runs the test artifacts with onnxruntime")
pytest.importorskip("uvicorn", reason="dorl serve needs the serve extra (starlette, uvicorn)")


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    return build_tiny_artifact(tmp_path_factory.mktemp("serve_tiny") / "tiny")


@pytest.fixture(scope="session")
def slow_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the slow artifact needs the onnx package")
    return build_slow_artifact(tmp_path_factory.mktemp("serve_slow") / "slow")


@pytest.fixture(scope="session")
def sample_cells() -> list[Path]:
    """Twelve real cells bundled with the package: six pbc and six bccd, across classes."""
    cells = []
    for lab in ("pbc", "bccd"):
        files = sorted((ASSETS_DIR / "sample" / lab).rglob("*.jpg"))
        cells += files[:: max(1, len(files) // 6)][:6]
    assert len(cells) == 12
    return cells


@pytest.fixture(scope="session")
def sample_batch(sample_cells: list[Path]) -> np.ndarray:
    """The sample cells as the graph's uint8 [12, 224, 224, 3] input (the runtime's own preprocessing)."""
    from dorl.data.images import load_rgb, resize_square

    return np.stack([resize_square(load_rgb(p), 224) for p in sample_cells])


@pytest.fixture(scope="module")
def tiny_server(tiny_artifact: TinyArtifact) -> Iterator[Any]:
    with running(tiny_artifact.folder) as server:
        yield server


@pytest.fixture()
def client(tiny_server: Any) -> Any:
    c = client_for(tiny_server)
    yield c
    c.close()
