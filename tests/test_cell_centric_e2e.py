"""A cell-centric bundle end to end: the export records its framing, and the ONNX FP32 analyzer
(two passes, the crop on the host) gives the labels of the PyTorch model run the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dorl.bundle import load_bundle, save_bundle
from dorl.data.framing import FramingConfig, crop_cell
from dorl.data.images import load_rgb, resize_square
from dorl.export.onnx_export import export_onnx
from dorl.export.parity import run_torch
from dorl.manifests import read_artifact
from dorl.paths import ASSETS_DIR
from dorl.runtime import postprocess
from dorl.runtime.analyzer import Analyzer

FRAMING = {"input": "cell", "mask": "segmenter", "margin": 0.1}
AGREEMENT = 0.99


def torch_two_pass(model, images: list[np.ndarray]) -> tuple[np.ndarray, list]:  # type: ignore[no-untyped-def]
    """PyTorch: the whole images -> masks -> crops (dorl.data.framing) -> the crops' probabilities."""
    whole = run_torch(model, np.stack([resize_square(rgb, 224) for rgb in images]))
    crops = [crop_cell(rgb, postprocess.low_res_mask(logits), 224, FRAMING["margin"])
             for rgb, logits in zip(images, whole["mask_logits"])]
    return run_torch(model, np.stack([c.image for c in crops]))["probs"], crops


def test_cell_centric_onnx_agrees_with_pytorch(tinyvit_bundle: tuple[Path, list[str]], tmp_path: Path) -> None:
    model = load_bundle(tinyvit_bundle[0])
    save_bundle(model, tmp_path / "bundle", metadata={"framing": FRAMING})
    cells = sorted((ASSETS_DIR / "sample").rglob("*.jpg"))[::4][:30]  # pbc and bccd, every class
    export_onnx(tmp_path / "bundle", tmp_path / "onnx", "fp32", images=cells[:4])
    assert read_artifact(tmp_path / "onnx").framing == FramingConfig(**FRAMING)

    with Analyzer(tmp_path / "onnx", batch_size=8, check_cells=False) as analyzer:
        results = analyzer.analyze(cells)
    probs, crops = torch_two_pass(model, [load_rgb(p) for p in cells])
    onnx_probs = np.array([[r.probs[n] for n in analyzer.class_names] for r in results])
    assert [r.crop_box for r in results] == [c.box for c in crops]  # the same cells were cut out
    agreement = float(np.mean(onnx_probs.argmax(1) == probs.argmax(1)))
    assert agreement >= AGREEMENT, f"top-1 agreement {agreement:.1%} on {len(cells)} cells"
    assert np.abs(onnx_probs - probs).max() < 1e-3
    labelled = [r for r in results if r.label is not None]
    assert len(labelled) >= len(cells) - sum(c.empty for c in crops)
