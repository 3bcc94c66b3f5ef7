"""The demo report's summaries, from the manifests and metadata the real steps write."""

from __future__ import annotations

import json
from pathlib import Path

from dorl.demo_report import _export_lines, _manifests, _mask_warning, _training_lines

PARITY = {"reference": "onnx fp32", "images": 20, "max_abs_diff": {"probs": 0.0634}, "top1_agreement": 1.0,
          "mask_iou_mean": 0.453, "mask_iou_min": 0.0}
GATE = {"images": 20, "accuracy_fp32": 0.95, "accuracy_int8": 0.9}


def _artifact(folder: Path, precision: str, parity: dict, gate: dict | None = None) -> Path:
    folder.mkdir()
    manifest = {"precision": precision, "parity": parity, **({"target": "cpu", "gate": gate} if gate else {})}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_export_rows_and_the_int8_mask_warning(tmp_path: Path) -> None:
    fp32 = _artifact(tmp_path / "fp32", "fp32", {**PARITY, "reference": "pytorch", "max_abs_diff": {"probs": 1.2e-5},
                                                 "mask_iou_mean": 1.0, "mask_iou_min": 1.0})
    int8 = _artifact(tmp_path / "int8-cpu", "int8", PARITY, GATE)
    rows = _export_lines(_manifests({"fp32": fp32, "int8-cpu": int8}))
    assert rows[2] == "| `fp32` | fp32  | pytorch | 20 | 1.20e-05 | 100.0 % | 1.000 / 1.000 | - |"
    assert rows[3] == ("| `int8-cpu` | int8 cpu | onnx fp32 | 20 | 6.34e-02 | 100.0 % | 0.453 / 0.000 "
                       "| FP32 95.0 % → INT8 90.0 % on 20 cells |")
    warning = _mask_warning(_manifests({"fp32": fp32, "int8-cpu": int8}))
    assert len(warning) == 2 and "`int8-cpu` agree with FP32's at IoU 0.45" in warning[0]
    assert _mask_warning(_manifests({"fp32": fp32})) == []


def test_training_summary_reads_the_bundle_metadata() -> None:
    meta = {"seg": {"losses": [0.48, 0.18], "train_images": 64, "holdout": {"bccd/pseudo": {"n": 9, "iou": 0.792}}},
            "cae": {"losses": {"loss": [2.36, 1.71], "mmd": [0.019, 0.008]}},
            "head": {"kind": "svm", "train_accuracy": 1.0}}
    assert _training_lines(meta) == [
        "- LoRA-SAM: loss 0.480 → 0.180 over 2 epochs on 64 images; held-out masks: bccd/pseudo IoU 0.792 (n=9).",
        "- CAE: loss 2.360 → 1.710, mmd 0.019 → 0.008 over 2 epochs.",
        "- head: svm, training accuracy 100.0 %.",
    ]
    assert _training_lines({}) == ["- every stage was reused from an earlier run."]
