"""The committed tiny artifact (runtime tests and CI's Python 3.10 `dorl predict` use it without the
onnx package) is exactly what tests/support/tiny_artifact.py generates, and runs as its numpy reference says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_artifact import COMMITTED, build_tiny_artifact, tiny_weights

from dorl.artifacts import read_manifest

VARYING = ("created", "versions")  # when and with which onnx it was written


def test_committed_artifact_is_what_the_generator_writes(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="regenerating the tiny artifact needs the onnx package (export extra)")
    build_tiny_artifact(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model.onnx").read_bytes() == (COMMITTED / "model.onnx").read_bytes()
    fresh, kept = (json.loads((folder / "manifest.json").read_text()) for folder in (tmp_path / "tiny", COMMITTED))
    assert {k: v for k, v in fresh.items() if k not in VARYING} == {k: v for k, v in kept.items() if k not in VARYING}
    assert sorted(p.name for p in COMMITTED.iterdir()) == ["manifest.json", "manifest.sha256", "model.onnx"]


def test_committed_artifact_runs_as_its_reference(tiny_artifact, cell_batch_from_sample: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime", reason="the runner needs onnxruntime")
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    read_manifest(COMMITTED, "onnx")  # hashes match
    assert tiny_weights(COMMITTED).w_head.shape == (8, 5)
    with OnnxRuntimeRunner(tiny_artifact.folder, providers=["cpu"]) as runner:
        outputs = runner.infer({"images": cell_batch_from_sample})
    expected = tiny_artifact.reference(cell_batch_from_sample)
    for name, value in outputs.items():
        np.testing.assert_allclose(value, expected[name], atol=5e-4, rtol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def cell_batch_from_sample() -> np.ndarray:
    """Four bundled real cells (dorl/assets/sample), resized as the runtime does."""
    from dorl.tensorrt.verify import verification_cells

    return verification_cells(4, 224)[0].pixels
