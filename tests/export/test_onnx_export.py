"""The FP32 export: the artifact contract, parity on real cells, and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError, ConfigError, ImageError
from dorl.export.onnx_export import export_onnx
from dorl.export.parity import (
    FP32_PROBS_ATOL,
    FP32_TOLERANCES,
    MIN_MASK_IOU,
    ParityError,
    check_fp32,
    compare,
)


def test_fp32_artifact_honours_the_contract(tinyvit_fp32: Path, tinyvit_bundle: tuple[Path, list[str]]) -> None:
    manifest = read_manifest(tinyvit_fp32, "onnx")
    bundle = read_manifest(tinyvit_bundle[0], "bundle")
    assert manifest["precision"] == "fp32" and manifest["image_size"] == 224
    assert manifest["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}]
    assert [(o["name"], o["dtype"], o["shape"]) for o in manifest["outputs"]] == [
        ("logits", "float32", ["batch", 5]), ("probs", "float32", ["batch", 5]),
        ("feature", "float32", ["batch", 320]), ("mask_logits", "float32", ["batch", 2, 56, 56])]
    assert manifest["class_names"] == list(bundle["class_names"])
    assert manifest["source_bundle_sha256"] == bundle["files"]["weights.safetensors"]["sha256"]
    assert manifest["opset"] >= 17 and manifest["graph"]["layer_norm_nodes"] > 0
    assert list(manifest["files"]) == ["model.onnx"]  # one file: no external data below 2 GB
    parity = manifest["parity"]
    assert parity["images"] == 12 and parity["max_abs_diff"]["probs"] <= FP32_PROBS_ATOL
    assert parity["top1_mismatches"] == 0 and parity["mask_iou_min"] >= MIN_MASK_IOU and parity["finite"]


def test_runtime_runner_reads_the_artifact(tinyvit_fp32: Path, cell_batch: np.ndarray) -> None:
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(tinyvit_fp32, providers=["cpu"]) as runner:
        out = runner.infer({"images": cell_batch[:3]})
    assert out["probs"].shape == (3, 5) and out["mask_logits"].shape == (3, 2, 56, 56)
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)
    assert out["probs"].max(axis=1).min() > 0.5  # the fitted head is confident


def test_parity_check_fails_loudly_on_drift() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    masks = rng.normal(size=(4, 2, 56, 56)).astype(np.float32)
    reference = {"probs": probs, "mask_logits": masks}
    check_fp32(compare(reference, {"probs": probs + 5e-5, "mask_logits": masks}, tolerances=FP32_TOLERANCES))
    with pytest.raises(ParityError, match=r"probs is beyond atol 0\.0001 and rtol 0\.002 on 4 of 4 cells"):
        check_fp32(compare(reference, {"probs": probs + 2e-3, "mask_logits": masks}, tolerances=FP32_TOLERANCES))
    flipped = masks.copy()
    flipped[0] = -flipped[0]
    with pytest.raises(ParityError, match="mask IoU"):
        check_fp32(compare(reference, {"probs": probs, "mask_logits": flipped}))


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "out", images=["x.png"])


def test_wrong_precision_is_a_clear_error(tinyvit_bundle: tuple[Path, list[str]], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'.*fp32, fp16, int8"):
        export_onnx(tinyvit_bundle[0], tmp_path / "out", precision="fp8", images=["x.png"])


def test_options_an_export_cannot_use_fail_before_it(tinyvit_bundle: tuple[Path, list[str]], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset 99 is newer than the exporter writes: use 17 to 23"):
        export_onnx(tinyvit_bundle[0], tmp_path / "out", opset=99, images=["x.png"])
    with pytest.raises(ConfigError, match="opset 16 splits LayerNormalization"):
        export_onnx(tinyvit_bundle[0], tmp_path / "out", opset=16, images=["x.png"])
    for given in ({"fp32_artifact": tmp_path / "missing"}, {"calibration": tmp_path / "missing"}):
        with pytest.raises(ConfigError, match="an FP32 export takes neither --fp32 nor --calibration"):
            export_onnx(tinyvit_bundle[0], tmp_path / "out", images=["x.png"], **given)
    from dorl.export.int8 import Int8Settings

    for given in ({"calibration": tmp_path / "missing"}, {"int8": Int8Settings(exclude=("cae*",))}):
        with pytest.raises(ConfigError, match="an FP16 export takes neither --calibration nor --exclude"):
            export_onnx(tinyvit_bundle[0], tmp_path / "out", "fp16", images=["x.png"], **given)
    assert not (tmp_path / "out").exists()


def test_unreadable_images_fail_before_the_export(tinyvit_bundle: tuple[Path, list[str]], tmp_path: Path) -> None:
    bad = tmp_path / "cell.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="cell.jpg"):
        export_onnx(tinyvit_bundle[0], tmp_path / "out", images=[bad])
    with pytest.raises(ConfigError, match="needs real cell images"):
        export_onnx(tinyvit_bundle[0], tmp_path / "out", images=[])
    assert not (tmp_path / "out").exists()
