"""Site adaptation end to end: a bundle's head and source statistics travel into the ONNX artifact, and the
adapted ONNX Runtime path gives the same labels as the PyTorch reference with the same profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dorl.bundle import load_bundle, save_bundle
from dorl.config import ModelConfig
from dorl.data.images import load_rgb, resize_square
from dorl.export.onnx_export import export_onnx
from dorl.pretrained import build_pretrained
from dorl.runtime.adapt import adapt_site
from dorl.runtime.analyzer import Analyzer


def test_adapted_onnx_labels_equal_pytorch_with_the_same_profile(wbc_dir, tmp_path):
    torch.manual_seed(0)
    model, _ = build_pretrained(ModelConfig(cae_depth=1, cae_decoder_depth=1))
    model.eval()
    source_cells = [p for c in ("lymphocyte", "neutrophil", "eosinophil") for p in
                    sorted((wbc_dir / "pbc" / c).glob("*.jpg"))[:8]]
    pixels = np.stack([resize_square(load_rgb(p), 224) for p in source_cells])
    with torch.no_grad():
        features = model(torch.from_numpy(pixels).permute(0, 3, 1, 2).float())["feature"]
    save_bundle(model, tmp_path / "bundle", source_features=features)
    export_onnx(tmp_path / "bundle", tmp_path / "onnx", "fp32", images=source_cells[:4])
    assert (tmp_path / "onnx" / "head.safetensors").is_file()
    from dorl.runtime.cell_check import calibrate_threshold

    with Analyzer(tmp_path / "onnx") as analyzer:  # the "no cell" threshold travelled from the bundle
        assert analyzer.cell_check is not None and analyzer.cell_check.distance is not None
        assert "recorded with the bundle" in analyzer.cell_check.distance.calibration
        assert analyzer.cell_check.distance.threshold == pytest.approx(calibrate_threshold(features.numpy()), rel=1e-5)

    site_cells = sorted((wbc_dir / "bccd").rglob("*.jpg"))[:24]
    profile = adapt_site(tmp_path / "onnx", site_cells, "bccd", min_cells=20)
    from dorl.runtime.site_profile import save_profile

    save_profile(profile, tmp_path / "site")
    with Analyzer(tmp_path / "onnx", site=tmp_path / "site", check_cells=False) as analyzer:  # labels only
        onnx_labels = [r.label for r in analyzer.analyze(site_cells)]

    reference = load_bundle(tmp_path / "bundle")
    site_pixels = np.stack([resize_square(load_rgb(p), 224) for p in site_cells])
    with torch.no_grad():
        feature = reference(torch.from_numpy(site_pixels).permute(0, 3, 1, 2).float())["feature"]
        mapped = torch.from_numpy(profile.apply(feature.numpy()))
        logits = reference.head(mapped)
    torch_labels = [reference.config.class_names[i] for i in logits.argmax(-1).tolist()]
    assert onnx_labels == torch_labels
