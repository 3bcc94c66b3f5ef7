"""The contract: one preprocessing, one softmax, one agreement rule, the names every side uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dorl import contract
from dorl.errors import ImageError


def test_load_cells_is_pil_bilinear_of_the_rgb_image(cell_paths: list[Path]) -> None:
    cells = contract.load_cells(cell_paths[:3], 96)
    assert cells.shape == (3, 96, 96, 3) and cells.dtype == np.uint8
    with Image.open(cell_paths[2]) as img:
        expected = np.asarray(img.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(cells[2], expected)
    np.testing.assert_array_equal(contract.load_cells(cells, 96), cells)  # an [N,S,S,3] array is N cells
    np.testing.assert_array_equal(contract.load_cells([cell_paths[0].read_bytes()], 96)[0], cells[0])
    assert contract.load_cells([], 32).shape == (0, 32, 32, 3)
    with pytest.raises(ImageError):
        contract.load_cells([b"not an image"], 32)


def test_nchw_float_keeps_every_value_in_place() -> None:
    cells = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    x = contract.to_nchw_float(cells)
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[1, 2, 3, 4] == cells[1, 3, 4, 2] and x.max() == cells.max()


def test_softmax_is_stable_and_sums_to_one() -> None:
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]])
    probs = contract.softmax(logits)
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-6)
    assert probs.dtype == np.float32


def test_agreement_and_near_ties() -> None:
    reference = np.array([[0.9, 0.1], [0.52, 0.48], [0.2, 0.8]])
    candidate = np.array([[0.8, 0.2], [0.47, 0.53], [0.6, 0.4]])
    assert contract.top1_matches(reference, candidate).tolist() == [True, False, False]
    assert contract.top1_agreement(reference, candidate) == pytest.approx(1 / 3)
    np.testing.assert_allclose(contract.top2_margin(reference), [0.8, 0.04, 0.6])
    assert contract.top2_margin(reference)[1] < contract.NEAR_TIE_MARGIN
    assert contract.top1_agreement(np.zeros((0, 2)), np.zeros((0, 2))) == 1.0


def test_a_row_that_is_not_finite_names_no_class_and_never_agrees() -> None:
    reference = np.array([[0.9, 0.1], [0.3, 0.7], [np.nan, np.nan]])
    overflowed = np.array([[np.nan, np.nan], [0.2, np.inf], [np.nan, np.nan]])  # argmax would say class 0, 1, 0
    assert contract.top1(overflowed).tolist() == [-1, -1, -1] and contract.top1(reference).tolist() == [0, 1, -1]
    assert contract.top1_matches(reference, overflowed).tolist() == [False, False, False]
    assert contract.top1_agreement(reference, reference) == pytest.approx(2 / 3)


def test_mask_iou_counts_every_non_background_channel() -> None:
    ref = np.zeros((2, 3, 4, 4))
    ref[:, 1, :2, :] = 1.0  # top half is cell (channel 1)
    cand = np.zeros((2, 3, 4, 4))
    cand[0, 2, :2, :2] = 1.0  # a quarter, as channel 2: still cell
    np.testing.assert_allclose(contract.mask_iou(ref, cand), [0.5, 0.0])
    np.testing.assert_allclose(contract.mask_iou(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4))), [1.0])


def test_the_export_wrapper_and_the_model_speak_the_contract(cell_batch: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from dorl.config import ModelConfig
    from dorl.export.wrapper import INPUT_NAME, OUTPUT_NAMES, ExportWrapper
    from dorl.models.registry import build_model

    assert (INPUT_NAME, OUTPUT_NAMES) == (contract.INPUT_NAME, contract.OUTPUT_NAMES)
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)).eval()
    with torch.no_grad():
        wrapped = ExportWrapper(model)(torch.from_numpy(cell_batch[:2]))
        direct = model(torch.from_numpy(contract.to_nchw_float(cell_batch[:2])))
    for name, value in zip(contract.OUTPUT_NAMES, wrapped):
        torch.testing.assert_close(value, direct[name])
    np.testing.assert_allclose(direct[contract.PROBS].numpy(), contract.softmax(direct[contract.LOGITS].numpy()),
                               atol=1e-6)


def test_the_contract_needs_no_torch() -> None:
    code = "import sys, dorl.contract; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
