"""The INT8 gate: held-out labelled cells, agreement, accuracy drop and mask IoU, a helpful failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from int8_graphs import CLASSES, sample_cells

from dorl.artifacts import sha256_file
from dorl.errors import ConfigError
from dorl.export.int8_gate import MIN_GATE_CELLS, GateError, GateThresholds, check, evaluate, gate_set


def _outputs(top: list[int], mask_rows: int = 0) -> dict[str, np.ndarray]:
    """probs with the given top-1, and masks whose first `mask_rows` rows (of 8) are cell."""
    probs = np.full((len(top), 5), 0.1, dtype=np.float32)
    probs[np.arange(len(top)), top] = 0.6
    masks = np.zeros((len(top), 2, 8, 8), dtype=np.float32)
    masks[:, 1, :mask_rows] = 1.0
    return {"probs": probs, "mask_logits": masks}


def test_evaluate_counts_agreement_accuracy_drop_and_mask_iou() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 20)
    fp32 = labels.copy()
    fp32[:10] = (labels[:10] + 1) % 5  # FP32 right on 90 of 100
    int8 = fp32.copy()
    int8[10:12] = (labels[10:12] + 1) % 5  # INT8 flips 2 right answers
    report = evaluate(_outputs(list(fp32), 4), _outputs(list(int8), 4), labels)
    assert report.images == 100 and report.top1_agreement == pytest.approx(0.98)
    assert report.accuracy_fp32 == pytest.approx(0.90) and report.accuracy_int8 == pytest.approx(0.88)
    assert report.accuracy_drop == pytest.approx(0.02) and report.mask_iou_mean == 1.0 and not report.passed
    assert report.probs_drift == pytest.approx(0.02 * 0.5)  # 2 cells moved 0.5 of their probability mass
    assert "a drop of 2.0 points (a drop of at most 1)" in report.describe()
    fixed = fp32.copy()
    fixed[:2] = labels[:2]  # INT8 right where FP32 was wrong: a gain, which the agreement still gates
    gain = evaluate(_outputs(list(fp32), 4), _outputs(list(fixed), 4), labels)
    assert gain.accuracy_drop == pytest.approx(-0.02) and "a gain of 2.0 points" in gain.describe()
    same = evaluate(_outputs(list(fp32), 4), _outputs(list(fp32), 4), labels)
    assert same.passed and same.probs_drift == 0.0


def test_drifting_masks_fail_the_gate_though_every_label_agrees() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 4)
    fp32, int8 = _outputs(list(labels), 4), _outputs(list(labels), 3)  # 3 of 4 cell rows left: IoU 0.75
    report = evaluate(fp32, int8, labels)
    assert report.top1_agreement == 1.0 and report.accuracy_drop == 0.0
    assert report.mask_iou_mean == pytest.approx(0.75) and not report.passed
    with pytest.raises(GateError, match=r"mask IoU 0\.750 \(needs 0\.90\)"):
        check({"Q/DQ (TensorRT)": report})
    assert evaluate(fp32, int8, labels, GateThresholds(min_mask_iou=0.7)).passed
    no_masks = evaluate({"probs": fp32["probs"]}, {"probs": int8["probs"]}, labels)
    assert no_masks.mask_iou_mean is None and no_masks.passed  # a graph without masks is gated on labels


def test_failure_names_the_variant_and_the_advice() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 20)
    good = evaluate(_outputs(list(labels)), _outputs(list(labels)), labels)
    worse = labels.copy()
    worse[:5] = (labels[:5] + 2) % 5
    bad = evaluate(_outputs(list(labels)), _outputs(list(worse)), labels)
    check({"Q/DQ (TensorRT)": good})
    with pytest.raises(GateError, match=r"Q/DQ \(TensorRT\) graph fails.*95\.0%.*5\.0 points.*Kept in float: cae"):
        check({"Q/DQ (TensorRT)": bad, "dynamic (CPU)": good}, "Kept in float: cae.")
    assert bad.to_dict()["passed"] is False and bad.to_dict()["min_mask_iou"] == 0.9


def test_thresholds_are_fractions_and_the_gate_scores_200_cells_by_default() -> None:
    assert GateThresholds().min_cells == MIN_GATE_CELLS == 200
    with pytest.raises(ConfigError, match="min_mask_iou is 1.5: give a fraction"):
        GateThresholds(min_mask_iou=1.5)
    with pytest.raises(ConfigError, match="at least one cell"):
        GateThresholds(min_cells=0)


def test_gate_set_labels_by_folder_and_skips_calibration_cells(tmp_path: Path) -> None:
    files = []
    for name in ("neutrophil", "monocyte", "masks"):
        folder = tmp_path / name
        folder.mkdir()
        source = next(p for p in sample_cells("bccd") if Path(p).parent.name == ("neutrophil" if name == "masks"
                                                                                 else name))
        files.append(shutil.copy(source, folder / f"{name}.jpg"))
    second = [p for p in sample_cells("bccd") if Path(p).parent.name == "neutrophil"][1]
    extra = shutil.copy(second, tmp_path / "neutrophil" / "b.jpg")
    gate = gate_set(files + [extra], CLASSES, held_out_from=frozenset({sha256_file(extra)}))
    assert [Path(s).name for s in gate.sources] == ["neutrophil.jpg", "monocyte.jpg"]
    assert list(gate.labels) == [4, 3]


def test_too_few_held_out_cells_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs labelled cells outside the calibration set"):
        gate_set([tmp_path / "cells" / "x.jpg"], CLASSES)
    cells = sample_cells("pbc")
    with pytest.raises(ConfigError, match=f"at least 200 distinct labelled cells .* only {len(cells)} of the "
                                          f"{len(cells)} images given qualify.*--gate-cells"):
        gate_set(cells, CLASSES, min_cells=MIN_GATE_CELLS)
    assert len(gate_set(cells, CLASSES, min_cells=len(cells)).sources) == len(cells)
    copies = tmp_path / "copies"
    shutil.copytree(Path(cells[0]).parents[1], copies)  # the same lab again: no new cell for the gate
    assert len(gate_set([*cells, *map(str, sorted(copies.rglob("*.jpg")))], CLASSES).sources) == len(cells)
