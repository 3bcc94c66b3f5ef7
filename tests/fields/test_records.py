"""Field records: JSON Lines of cells, empty and failed frames; run-length masks; reading them back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from dorl.errors import ConfigError
from dorl.fields.finder import FoundCell
from dorl.fields.records import (
    FieldCell,
    FrameResult,
    decode_mask,
    encode_mask,
    frame_records,
    read_records,
    write_records,
)
from dorl.runtime.analyzer import CellResult


@pytest.mark.parametrize("mask", [
    np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(5, dtype=bool),
    np.random.default_rng(0).random((17, 23)) > 0.5,
])
def test_mask_code_round_trips(mask: np.ndarray) -> None:
    code = encode_mask(mask)
    assert sum(code["counts"]) == mask.size
    assert np.array_equal(decode_mask(json.loads(json.dumps(code))), mask)


def test_corrupt_mask_code_is_refused() -> None:
    with pytest.raises(ConfigError, match="corrupt"):
        decode_mask({"size": [2, 2], "counts": [1, 2]})


def field_cell(edge: bool = False) -> FieldCell:
    found = FoundCell(box=(10, 10, 60, 60), nucleus_box=(20, 20, 50, 50), nucleus=np.ones((30, 30), bool),
                      area=900, stain=0.4, edge=edge)
    mask = np.zeros((45, 45), bool)
    mask[5:40, 5:40] = True
    result = CellResult(source="<array 45x45x3 uint8>", label="neutrophil",
                        probs={"lymphocyte": 0.2, "neutrophil": 0.8}, feature=None, mask_lowres=mask, size_hw=mask.shape,
                        uncertain=False)
    return FieldCell(frame="a.jpg", frame_index=3, index=0, found=found, crop_box=(12, 12, 57, 57), result=result)


def test_cell_lines_carry_position_mask_and_the_analyzer_record() -> None:
    frame = FrameResult("a.jpg", 3, (100, 120), [field_cell()])
    (record,) = frame_records(frame, {0: "crops/a_0.png"})
    assert record["status"] == "cell" and record["frame"] == "a.jpg" and record["frame_index"] == 3
    assert record["box"] == [10, 10, 60, 60] and record["crop_box"] == [12, 12, 57, 57] and record["edge"] is False
    assert record["label"] == "neutrophil" and record["confidence"] == 0.8 and record["uncertain"] is False
    assert record["probs"] == {"lymphocyte": 0.2, "neutrophil": 0.8} and record["crop"] == "crops/a_0.png"
    assert decode_mask(record["mask"]).sum() == 35 * 35
    full = frame.cells[0].frame_mask((100, 120))
    assert full.sum() == 35 * 35 and full[17:52, 17:52].all()


def test_empty_and_failed_frames_say_so() -> None:
    (empty,) = frame_records(FrameResult("b.jpg", 1, (100, 120)))
    assert empty["status"] == "empty" and empty["cells_in_frame"] == 0 and empty["error"] is None
    (failed,) = frame_records(FrameResult("c.jpg", 2, None, error="c.jpg could not be decoded"))
    assert failed["status"] == "error" and failed["error"] == "c.jpg could not be decoded"


def test_written_lines_read_back(tmp_path: Path) -> None:
    frames = [FrameResult("a.jpg", 0, (100, 120), [field_cell(), field_cell(edge=True)]), FrameResult("b.jpg", 1, (9, 9))]
    out = io.StringIO()
    assert list(write_records(iter(frames), out)) == frames
    path = tmp_path / "cells.jsonl"
    path.write_text(out.getvalue())
    records = list(read_records(path))
    assert [r["status"] for r in records] == ["cell", "cell", "empty"] and records[1]["edge"] is True


def test_reading_bad_records_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_records(tmp_path / "missing.jsonl"))
    path = tmp_path / "cells.jsonl"
    path.write_text('{"status": "empty", "frame": "a"}\n{"status": "cell"\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        list(read_records(path))
    path.write_text('{"label": "x"}\n')
    with pytest.raises(ConfigError, match="line 1 is not a field record"):
        list(read_records(path))
