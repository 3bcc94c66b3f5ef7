"""The demo report's summaries, from the manifests the real export steps write and the metadata of a
real training run's bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dorl.demo_report import MASK_IOU_WARNING, _export_lines, _manifests, _mask_warning, _training_lines
from dorl.evaluation.domain_maps import standardise_per_domain
from dorl.evaluation.protocol import Protocol, evaluate
from dorl.evaluation.report import SAME_TITLE, SETTING_TITLES, markdown
from dorl.manifests import read_onnx


def test_export_rows_from_the_real_manifests(tinyvit_fp32: Path, tinyvit_fp16: Path, tinyvit_int8: Path) -> None:
    cpu = tinyvit_int8.with_name("int8-cpu")  # the CPU variant of the default INT8 export
    manifests = _manifests({"fp32": tinyvit_fp32, "fp16": tinyvit_fp16, "int8-cpu": cpu})
    rows = _export_lines(manifests)
    fp32, fp16, int8 = (read_onnx(folder) for folder in (tinyvit_fp32, tinyvit_fp16, cpu))
    assert rows[2] == (f"| `fp32` | fp32  | pytorch | 12 | {fp32.parity['max_abs_diff']['probs']:.2e} | 100.0 % "
                       f"| {fp32.parity['mask_iou_mean']:.3f} / {fp32.parity['mask_iou_min']:.3f} | - |")
    assert rows[3].startswith(f"| `fp16` | fp16  | onnx fp32 | 24 | {fp16.parity['max_abs_diff']['probs']:.2e} |")
    gate = int8.data["gate"]
    assert rows[4].startswith("| `int8-cpu` | int8 cpu | onnx fp32 |")
    assert rows[4].endswith(f"| FP32 {100 * gate['accuracy_fp32']:.1f} % → INT8 {100 * gate['accuracy_int8']:.1f} % "
                            f"on {gate['images']} cells |")
    warned = bool(_mask_warning(manifests))
    assert warned == (int8.parity["mask_iou_mean"] < MASK_IOU_WARNING)
    assert _mask_warning(_manifests({"fp32": tinyvit_fp32, "fp16": tinyvit_fp16})) == []


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


def _evaluation(target_classes: list[str]) -> dict:
    rng = np.random.default_rng(0)
    classes = ["eosinophil", "lymphocyte", "neutrophil"]

    def domain(n: int, shift: float, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(names, n)
        x = rng.normal(0, 1, (len(y), 4)) + np.array([names.index(c) if c in names else 0 for c in y])[:, None] + shift
        return x, y

    data = {"pbc": domain(10, 0.0, classes), "bccd": domain(6, 1.0, target_classes)}
    return evaluate([("pooled", data), ("standardised", standardise_per_domain(data))],
                    Protocol("pbc", heads=("logreg",), folds=3)).to_dict()


def test_the_report_shows_one_table_when_both_class_settings_are_the_same() -> None:
    same = _evaluation(["eosinophil", "lymphocyte", "neutrophil"])
    assert same["settings"]["all"]["rows"] == same["settings"]["shared"]["rows"]
    text = markdown(same)
    assert text.count("**Cells per class**") == 1 and f"## {SAME_TITLE}" in text
    assert SETTING_TITLES["shared"] not in text
    different = markdown(_evaluation(["eosinophil", "lymphocyte", "neutrophil", "platelet"][1:]))
    assert different.count("**Cells per class**") == 2
    assert f"## {SETTING_TITLES['all']}" in different and f"## {SETTING_TITLES['shared']}" in different
