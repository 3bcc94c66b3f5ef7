"""The cell record of /analyze: predict's fields, masks as PNG or COCO RLE that decode to the same mask."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dorl.runtime import records
from dorl.runtime.analyzer import CellResult
from dorl.serve.record import cell_record, mask_rle, rle_to_mask


def a_mask() -> np.ndarray:
    mask = np.zeros((7, 5), bool)
    mask[2:5, 1:4] = True
    mask[6, 4] = True
    return mask


def test_rle_is_coco_column_major_starting_with_background() -> None:
    mask = np.array([[0, 1], [1, 1], [0, 0]], bool)
    assert mask_rle(mask) == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}  # columns: 0,1,0 | 1,1,0
    assert mask_rle(np.ones((2, 2), bool))["counts"] == [0, 4]
    assert mask_rle(np.zeros((2, 3), bool))["counts"] == [6]


@pytest.mark.parametrize("mask", [a_mask(), np.ones((3, 4), bool), np.zeros((4, 3), bool)])
def test_rle_round_trips(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(rle_to_mask(mask_rle(mask)), mask)


def result(mask: np.ndarray | None = None, error: str | None = None, no_cell: tuple[str, ...] = ()) -> CellResult:
    if error is not None:
        return CellResult.failed("<3 bytes>", error)
    return CellResult("cell.jpg", None if no_cell else "b", {"a": 0.25, "b": 0.7500004}, np.zeros(2, np.float32),
                      mask, mask.shape if mask is not None else None, False, no_cell=no_cell, distance=1.25,
                      site="lab2")


def test_record_has_predicts_fields_and_a_png_mask() -> None:
    record = cell_record(result(a_mask()), "png", {"site": "lab2", "method": "mean", "cells": 60})
    assert {k: record[k] for k in ("source", "label", "confidence", "uncertain", "error", "probs")} == {
        "source": "cell.jpg", "label": "b", "confidence": 0.75, "uncertain": False, "error": None,
        "probs": {"a": 0.25, "b": 0.75}}
    assert record["site_profile"] == {"site": "lab2", "method": "mean", "cells": 60}
    png = Image.open(io.BytesIO(base64.b64decode(record["mask"]["png"])))
    np.testing.assert_array_equal(np.asarray(png) > 127, a_mask())


def test_record_is_predicts_record_with_the_mask_itself() -> None:
    cell = result(a_mask())
    served, predicted = cell_record(cell, "rle", None), records.cell_record(cell)
    assert set(served) == {*predicted, "site_profile"}
    assert {k: v for k, v in served.items() if k not in ("mask", "site_profile")} == \
        {k: v for k, v in predicted.items() if k != "mask"}
    assert served["status"] == "ok" and served["distance"] == 1.25 and served["site"] == "lab2"
    empty = cell_record(result(a_mask(), no_cell=("the mask is empty",)), "none", None)
    assert empty["status"] == "no_cell" and empty["label"] is None and empty["confidence"] is None
    assert empty["no_cell"] == ["the mask is empty"]


def test_record_masks_in_rle_or_none_and_errors_without_a_mask() -> None:
    rle = cell_record(result(a_mask()), "rle", None)["mask"]
    assert rle["format"] == "rle"
    np.testing.assert_array_equal(rle_to_mask(rle), a_mask())
    assert cell_record(result(a_mask()), "none", None)["mask"] is None
    failed = cell_record(result(error="not an image"), "png", None)
    assert failed["label"] is None and failed["error"] == "not an image" and failed["mask"] is None
    assert failed["status"] == "failed"
