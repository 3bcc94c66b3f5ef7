"""The parity rule (Polygraphy's elementwise atol/rtol per output, top-1, mask IoU) and the cells it runs on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED

from dorl.artifacts import sha256_file
from dorl.errors import ConfigError
from dorl.export.parity import (
    FP32_PROBS_ATOL,
    FP32_TOLERANCES,
    ParityError,
    Tolerance,
    check_fp32,
    compare,
    tolerances_from,
)
from dorl.export.parity_cells import default_cells, sample_cells


def outputs(seed: int = 0, cells: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (cells, 5)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {"logits": logits, "probs": probs, "feature": rng.normal(0, 1, (cells, 8)).astype(np.float32),
            "mask_logits": rng.normal(0, 5, (cells, 2, 8, 8)).astype(np.float32)}


def test_an_element_fails_only_beyond_both_atol_and_rtol() -> None:
    rule = Tolerance(atol=1e-4, rtol=1e-3)
    reference = np.array([0.9, 0.9, 0.01, 0.01, np.nan])
    candidate = np.array([0.9 + 5e-4, 0.9 + 2e-3, 0.01 + 5e-5, 0.01 + 2e-4, 0.5])
    assert (rule.excess(reference, candidate) > 0).tolist() == [False, True, False, True, True]
    with pytest.raises(ConfigError, match="zero or positive"):
        Tolerance(-1.0, 0.0)


def test_float32_round_off_on_a_confident_cell_passes() -> None:
    reference = outputs()
    candidate = {k: v.copy() for k, v in reference.items()}
    top = int(np.argmax(reference["probs"][3]))
    candidate["probs"][3, top] = reference["probs"][3, top] * (1 + 1.9e-3)  # beyond atol 1e-4, within rtol 2e-3
    report = compare(reference, candidate, tolerances=FP32_TOLERANCES)
    check_fp32(report)
    assert report.outputs["probs"].mismatched_cells == 0 and report.max_abs_diff["probs"] > FP32_PROBS_ATOL


def test_a_refusal_names_the_output_the_cell_and_the_values() -> None:
    reference = outputs()
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["feature"][4, 2] += 0.5
    names = [f"/data/lab/neutrophil/cell{i}.jpg" for i in range(6)]
    report = compare(reference, candidate, tolerances=FP32_TOLERANCES, cells=names)
    assert report.outputs["feature"].mismatched_cells == 1 and report.outputs["feature"].worst_cell == names[4]
    with pytest.raises(ParityError, match=r"feature is beyond atol 0\.001 and rtol 0\.001 on 1 of 6 cells "
                                          r"\(worst: /data/lab/neutrophil/cell4\.jpg, "):
        check_fp32(report)


def test_a_flipped_label_and_a_lost_mask_name_their_cells() -> None:
    reference = outputs()
    candidate = {k: v.copy() for k, v in reference.items()}
    candidate["probs"][1] = candidate["probs"][1][::-1]
    candidate["mask_logits"][5] = -candidate["mask_logits"][5]
    names = [f"c{i}" for i in range(6)]
    report = compare(reference, candidate, tolerances={}, cells=names)
    assert report.decisive_mismatch_cells == ("c1",) and report.worst_mask_cell == "c5"
    with pytest.raises(ParityError, match=r"top-1 differs on 1 of 6 cells \(first: c1\).*mask IoU falls to 0\.0000 "
                                          r"on c5"):
        check_fp32(report)


def test_tolerance_options() -> None:
    custom = tolerances_from(["2e-4", "mask_logits=0.5"], ["probs=1e-2"])
    assert custom["logits"] == Tolerance(2e-4, FP32_TOLERANCES["logits"].rtol)
    assert custom["mask_logits"].atol == 0.5 and custom["probs"] == Tolerance(2e-4, 1e-2)
    assert tolerances_from([], []) == FP32_TOLERANCES
    with pytest.raises(ConfigError, match="names no output: use one of logits, probs"):
        tolerances_from(["scores=1"], [])
    with pytest.raises(ConfigError, match="not a number"):
        tolerances_from([], ["lots"])


def test_parity_cells_are_bounded_and_stratified(wbc_dir: Path) -> None:
    cells = [str(p) for lab in ("pbc", "bccd") for p in sorted((wbc_dir / lab).rglob("*.jpg"))]
    assert len(cells) == 131
    picked = sample_cells(cells, 20)
    assert len(picked) == 20 and picked == sample_cells(cells, 20) and picked == [c for c in cells if c in picked]
    strata = {(Path(c).parent.parent.name, Path(c).parent.name) for c in picked}
    assert len(strata) == 10  # every lab and class: 2 cells of each
    assert sample_cells(cells, 0) == cells and sample_cells(cells, 500) == cells
    arrays = [np.zeros((8, 8, 3), np.uint8)] * 5
    assert len(sample_cells(arrays, 3)) == 3


def test_default_cells_come_from_the_training_domains_or_the_bundled_sample(wbc_dir: Path) -> None:
    recorded = {"domains": [{"name": "pbc", "root": str(wbc_dir / "pbc")}, {"name": MASKED, "root": str(wbc_dir / MASKED)},
                            {"name": "gone", "root": "/no/such/lab"}]}
    cells, where = default_cells(recorded, 30)
    assert len(cells) == 30 and where == f"the bundle's training domains (pbc, {MASKED})"
    assert {Path(c).parent.parent.name for c in cells} == {"pbc", MASKED}
    assert all(Path(c).parent.name != "masks" for c in cells)
    cells, where = default_cells({"domains": [{"name": "x", "root": "/no/such/lab"}]}, 0)
    assert where == "the sample bundled with dorl (pbc, bccd)" and len(cells) == 131
    assert cells[0] not in default_cells({}, 0, exclude=frozenset([sha256_file(cells[0])]))[0]
    # the INT8 gate's default cells: the model's classes only (a lab's other classes cannot be scored)
    cells, _ = default_cells(recorded, 30, classes=["lymphocyte", "monocyte"])
    assert len(cells) == 30 and {Path(c).parent.name for c in cells} == {"lymphocyte", "monocyte"}
