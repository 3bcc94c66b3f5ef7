"""The INT8 accuracy gate: held-out labelled cells, agreement and accuracy drop, a helpful failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED

from dorl.artifacts import sha256_file
from dorl.calibration.gate import GateError, check, evaluate, gate_set
from dorl.errors import ConfigError

CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def _probs(top: list[int]) -> np.ndarray:
    probs = np.full((len(top), 5), 0.1, dtype=np.float32)
    probs[np.arange(len(top)), top] = 0.6
    return probs


def test_evaluate_counts_agreement_and_accuracy_drop() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 20)
    fp32 = labels.copy()
    fp32[:10] = (labels[:10] + 1) % 5  # FP32 right on 90 of 100
    int8 = fp32.copy()
    int8[10:12] = (labels[10:12] + 1) % 5  # INT8 flips 2 right answers
    report = evaluate(_probs(list(fp32)), _probs(list(int8)), labels)
    assert report.images == 100 and report.top1_agreement == pytest.approx(0.98)
    assert report.accuracy_fp32 == pytest.approx(0.90) and report.accuracy_int8 == pytest.approx(0.88)
    assert report.accuracy_drop == pytest.approx(0.02) and not report.passed
    assert evaluate(_probs(list(fp32)), _probs(list(fp32)), labels).passed


def test_failure_names_the_variant_and_the_costliest_groups() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 20)
    good = evaluate(_probs(list(labels)), _probs(list(labels)), labels)
    worse = labels.copy()
    worse[:5] = (labels[:5] + 2) % 5
    bad = evaluate(_probs(list(labels)), _probs(list(worse)), labels)
    check({"Q/DQ (TensorRT)": good})
    with pytest.raises(GateError, match=r"Q/DQ \(TensorRT\) graph fails.*95\.0%.*5\.0 points.*cae \(6 nodes"):
        check({"Q/DQ (TensorRT)": bad, "dynamic (CPU)": good}, ["cae (6 nodes: 90.0% agreement)"])


def test_gate_set_labels_by_folder_and_skips_calibration_cells(wbc_dir: Path, tmp_path: Path) -> None:
    files = []
    for name in ("neutrophil", "monocyte", "masks"):
        folder = tmp_path / name
        folder.mkdir()
        source = min((wbc_dir / MASKED / ("neutrophil" if name == "masks" else name)).iterdir())
        files.append(shutil.copy(source, folder / f"{name}.jpg"))
    extra = shutil.copy(sorted((wbc_dir / MASKED / "neutrophil").iterdir())[1], tmp_path / "neutrophil" / "b.jpg")
    gate = gate_set(files + [extra], CLASSES, held_out_from=frozenset({sha256_file(extra)}))
    assert [Path(s).name for s in gate.sources] == ["neutrophil.jpg", "monocyte.jpg"]
    assert list(gate.labels) == [4, 3]


def test_no_labelled_held_out_cell_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs labelled cells outside the calibration set"):
        gate_set([tmp_path / "cells" / "x.jpg"], CLASSES)
