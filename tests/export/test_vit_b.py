"""SAM ViT-B (random weights) through `dorl export` in a child process: one ONNX file, parity with
PyTorch on real cells, peak memory under 10 GB, and an FP16 graph that runs."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dorl.artifacts import read_manifest
from dorl.export.fp16 import convert_to_fp16
from dorl.export.parity import FP32_PROBS_ATOL, prepare_images, run_onnx

PEAK_LIMIT_GB = 10.0
CLI = "import sys, typer; from dorl.commands.export import export; app = typer.Typer(); app.command()(export); app()"


@pytest.mark.slow
def test_vit_b_export_matches_pytorch_within_10_gb(tmp_path: Path, cell_paths: list[Path],
                                                   record_property: pytest.RecordProperty) -> None:
    import torch

    from dorl.bundle import save_bundle
    from dorl.config import ModelConfig
    from dorl.models.registry import build_model

    torch.manual_seed(0)
    save_bundle(build_model(ModelConfig(encoder="sam_vit_b", cae_depth=1, cae_decoder_depth=1)), tmp_path / "bundle")
    images = [a for p in cell_paths for a in ("--images", str(p))]
    result = subprocess.run([sys.executable, "-c", CLI, str(tmp_path / "bundle"), "-o", str(tmp_path / "fp32"), *images],
                            check=False, capture_output=True, text=True, timeout=1800)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB -> GB, the largest child so far
    record_property("vit_b_export_peak_rss_gb", round(peak_gb, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert peak_gb < PEAK_LIMIT_GB
    manifest = read_manifest(tmp_path / "fp32", "onnx")
    assert list(manifest["files"]) == ["model.onnx"] and manifest["outputs"][2]["shape"] == ["batch", 768]
    parity = manifest["parity"]
    assert parity["images"] == 6 and parity["max_abs_diff"]["probs"] <= FP32_PROBS_ATOL
    assert parity["top1_mismatches"] == parity["near_ties"] and parity["mask_iou_min"] >= 0.99
    fp16_path = tmp_path / "fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(tmp_path / "fp32" / "model.onnx"))), str(fp16_path))
    onnx.checker.check_model(str(fp16_path))
    out = run_onnx(fp16_path, prepare_images([str(p) for p in cell_paths[:2]], 224))
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())
