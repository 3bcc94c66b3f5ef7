"""A cell-centric bundle end to end: the export records its framing, the ONNX FP32 analyzer (two
passes, the crop on the host) gives the labels of the PyTorch model run the same way, and the INT8
export is calibrated and gated on the cells the analyzer classifies, not on the whole images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.artifacts import read_manifest
from dorl.bundle import load_bundle, save_bundle
from dorl.data.framing import FramingConfig, crop_cell
from dorl.data.images import load_rgb, resize_square
from dorl.export.int8 import Int8Settings
from dorl.export.int8_gate import GateThresholds
from dorl.export.onnx_export import export_onnx
from dorl.export.parity import run_torch
from dorl.manifests import read_artifact
from dorl.paths import ASSETS_DIR
from dorl.runtime import postprocess
from dorl.runtime.analyzer import Analyzer

FRAMING = {"input": "cell", "mask": "segmenter", "margin": 0.1}
AGREEMENT = 0.99
CELLS = sorted((ASSETS_DIR / "sample").rglob("*.jpg"))[::4][:30]  # pbc and bccd, every class


def torch_two_pass(model, images: list[np.ndarray]) -> tuple[np.ndarray, list]:  # type: ignore[no-untyped-def]
    """PyTorch: the whole images -> masks -> crops (dorl.data.framing) -> the crops' probabilities."""
    whole = run_torch(model, np.stack([resize_square(rgb, 224) for rgb in images]))
    crops = [crop_cell(rgb, postprocess.low_res_mask(logits), 224, FRAMING["margin"])
             for rgb, logits in zip(images, whole["mask_logits"])]
    return run_torch(model, np.stack([c.image for c in crops]))["probs"], crops


@pytest.fixture(scope="module")
def framed(tinyvit_bundle: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """The TinyViT model saved as a cell-centric bundle (segmenter's mask) and its verified FP32 export."""
    model = load_bundle(tinyvit_bundle[0])
    folder = tmp_path_factory.mktemp("framed")
    save_bundle(model, folder / "bundle", metadata={"framing": FRAMING, "tta": "flips"})
    export_onnx(folder / "bundle", folder / "onnx", "fp32", images=CELLS[:4])
    return model, folder


def test_cell_centric_onnx_agrees_with_pytorch(framed: tuple[object, Path]) -> None:
    model, folder = framed
    cells = CELLS
    assert read_artifact(folder / "onnx").framing == FramingConfig(**FRAMING)
    assert read_artifact(folder / "onnx").tta == "flips"  # the bundle's choice travels with the graph
    assert read_manifest(folder / "onnx")["parity"]["images"] == 4

    with Analyzer(folder / "onnx", batch_size=8, check_cells=False, tta="none") as analyzer:
        results = analyzer.analyze(cells)
    probs, crops = torch_two_pass(model, [load_rgb(p) for p in cells])
    onnx_probs = np.array([[r.probs[n] for n in analyzer.class_names] for r in results])
    assert [r.crop_box for r in results] == [c.box for c in crops]  # the same cells were cut out
    agreement = float(np.mean(onnx_probs.argmax(1) == probs.argmax(1)))
    assert agreement >= AGREEMENT, f"top-1 agreement {agreement:.1%} on {len(cells)} cells"
    assert np.abs(onnx_probs - probs).max() < 1e-3
    labelled = [r for r in results if r.label is not None]
    assert len(labelled) >= len(cells) - sum(c.empty for c in crops)


def test_int8_of_a_cell_centric_bundle_is_calibrated_and_gated_on_its_cells(
        framed: tuple[object, Path], calibration_dir: Path, held_out_cells: list[str]) -> None:
    _, folder = framed
    anything = GateThresholds(min_agreement=0.0, max_accuracy_drop=1.0, min_mask_iou=0.0, min_cells=len(held_out_cells))
    manifest = export_onnx(folder / "bundle", folder / "int8", "int8", images=held_out_cells, calibration=calibration_dir,
                           fp32_artifact=folder / "onnx", int8=Int8Settings(gate=anything, auto_float=False, cpu_variant=False))
    calibration = manifest["calibration"]
    assert calibration["inputs"] == "whole images and their cells" and calibration["images"] == 2 * calibration["cells"]
    assert manifest["framing"] == FRAMING and manifest["tta"] == "flips"

    # the gate's FP32 accuracy is the FP32 analyzer's, on the cells it cut out (not on the whole images); the
    # gate checks the graph's numbers on one view, so the analyzer runs without the recorded flips here
    with Analyzer(folder / "onnx", batch_size=8, check_cells=False, tta="none") as analyzer:
        results = analyzer.analyze(held_out_cells)
    labels = [Path(p).parent.name for p in held_out_cells]
    top1 = [max(r.probs, key=r.probs.__getitem__) for r in results]  # also where the record says "no cell"
    analyzer_accuracy = np.mean([name == label for name, label in zip(top1, labels)])
    gate = manifest["gate"]
    assert gate["images"] == len(held_out_cells)
    assert gate["accuracy_fp32"] == pytest.approx(analyzer_accuracy)
