"""The export checks run a graph as the analyzer runs it: a cell-centric artifact through both passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from framed_artifact import with_framing

from dorl.data.framing import FramingConfig
from dorl.errors import ConfigError
from dorl.export.check_cells import CheckCells
from dorl.export.parity import onnx_infer, run_onnx
from dorl.runtime import postprocess
from dorl.runtime.analyzer import Analyzer

PSEUDO = {"input": "cell", "mask": "pseudo", "margin": 0.1}
SEGMENTER = {"input": "cell", "mask": "segmenter", "margin": 0.1}


def analyzer_outputs(artifact: Path, cells: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The FP32 analyzer's probabilities and masks on `cells` (no "no cell" check: every cell labelled)."""
    with Analyzer(artifact, batch_size=4, check_cells=False) as analyzer:
        results = analyzer.analyze(cells)
    assert all(r.error is None for r in results)
    probs = np.array([[r.probs[name] for name in analyzer.class_names] for r in results])
    return probs, [r.mask_lowres for r in results]


@pytest.mark.parametrize("framing", [PSEUDO, SEGMENTER], ids=["pseudo", "segmenter"])
def test_cell_centric_check_scores_what_the_analyzer_records(framing: dict, tinyvit_fp32: Path,
                                                             held_out_cells: list[str], tmp_path: Path) -> None:
    artifact = with_framing(tinyvit_fp32, tmp_path / "framed", framing)
    cells = held_out_cells[:6]
    checked = CheckCells.load(cells, 224, FramingConfig(**framing))
    assert checked.two_pass and len(checked) == 6
    outputs = checked.run(onnx_infer(artifact / "model.onnx"))
    probs, masks = analyzer_outputs(artifact, cells)
    np.testing.assert_allclose(outputs["probs"], probs, atol=1e-5)
    for logits, mask in zip(outputs["mask_logits"], masks):
        np.testing.assert_array_equal(postprocess.low_res_mask(logits), mask)
    whole = run_onnx(artifact / "model.onnx", checked.pixels)  # pass 1 alone classifies the field, not the cell
    np.testing.assert_array_equal(whole["mask_logits"], outputs["mask_logits"])
    assert np.abs(whole["probs"] - outputs["probs"]).max() > 1e-3


def test_whole_image_check_is_one_pass(tinyvit_fp32: Path, held_out_cells: list[str]) -> None:
    checked = CheckCells.load(held_out_cells[:3], 224)
    assert not checked.two_pass and checked.crops is None and checked.decoded == ()
    outputs = checked.run(onnx_infer(tinyvit_fp32 / "model.onnx"))
    expected = run_onnx(tinyvit_fp32 / "model.onnx", checked.pixels)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
    np.testing.assert_array_equal(checked.inputs(), checked.pixels)


def test_calibration_inputs_hold_the_whole_images_and_the_cells(tinyvit_fp32: Path, held_out_cells: list[str]) -> None:
    pseudo = CheckCells.load(held_out_cells[:4], 224, FramingConfig(**PSEUDO))
    inputs = pseudo.inputs()
    assert inputs.shape == (8, 224, 224, 3) and inputs.dtype == np.uint8
    np.testing.assert_array_equal(inputs[:4], pseudo.pixels)
    np.testing.assert_array_equal(inputs[4:], pseudo.crops)
    assert (inputs[4:] == 128).mean() > (inputs[:4] == 128).mean()  # the crops' background is grey

    segmenter = CheckCells.load(held_out_cells[:4], 224, FramingConfig(**SEGMENTER))
    with pytest.raises(ValueError, match="need the graph"):
        segmenter.inputs()
    infer = onnx_infer(tinyvit_fp32 / "model.onnx")
    cut = segmenter.inputs(infer)
    np.testing.assert_array_equal(cut[4:], segmenter.cut(infer(segmenter.pixels)["mask_logits"]))


def test_rows_keep_each_cell_with_its_crop(held_out_cells: list[str], tinyvit_fp32: Path) -> None:
    for framing in (PSEUDO, SEGMENTER):
        checked = CheckCells.load(held_out_cells[:5], 224, FramingConfig(**framing))
        subset = checked.rows(np.array([1, 4]))
        assert subset.names == (checked.names[1], checked.names[4])
        infer = onnx_infer(tinyvit_fp32 / "model.onnx")
        np.testing.assert_allclose(subset.run(infer)["probs"], checked.run(infer)["probs"][[1, 4]], atol=1e-6)


def test_no_images_is_a_clear_error() -> None:
    for framing in (None, FramingConfig(**PSEUDO)):
        with pytest.raises(ConfigError, match="pass --images"):
            CheckCells.load([], 224, framing)
