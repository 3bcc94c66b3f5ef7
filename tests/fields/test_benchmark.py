"""The field benchmark's pieces on the bundled frames: VOC boxes, matching, locating crops, the printout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dorl.data.images import load_rgb
from dorl.errors import ImageError
from dorl.fields import benchmark
from dorl.fields.agreement import agreement_by_confidence, balanced_accuracy
from dorl.fields.scoring import DetectionScore, box_iou, match_boxes
from dorl.fields.voc import read_voc


def test_voc_boxes_are_zero_based_and_exclusive(fields_dir: Path) -> None:
    objects = read_voc(fields_dir / "annotations" / "BloodImage_00001.xml")
    wbc = [o for o in objects if o.name == "WBC"]
    assert len(wbc) == 1 and wbc[0].box == (67, 314, 286, 480) and wbc[0].truncated  # VOC 68..286, 315..480
    assert {o.name for o in objects} == {"WBC", "RBC"}
    with pytest.raises(ImageError, match="VOC annotation"):
        read_voc(fields_dir / "missing.xml")


def test_boxes_match_one_to_one_best_first() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    truth = [(0, 0, 10, 10), (20, 0, 30, 10)]
    found = [(1, 0, 11, 10), (0, 0, 10, 10), (50, 50, 60, 60)]
    assert match_boxes(found, truth) == [(1, 0, 1.0)]  # the second true box has no partner at IoU >= 0.5
    score = DetectionScore()
    score.add(found, truth)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (1, 2, 1)
    assert score.recall == 0.5 and score.precision == pytest.approx(1 / 3) and score.mean_iou == 1.0


def test_locate_finds_an_unscaled_crop(frame_paths: list[Path], tmp_path: Path) -> None:
    rgb = load_rgb(frame_paths[3])
    Image.fromarray(rgb[101:301, 187:387]).save(tmp_path / "crop.jpg", quality=90)  # re-encoded, like the data set
    box, ncc = benchmark.locate(rgb, load_rgb(tmp_path / "crop.jpg"))
    assert box == (187, 101, 387, 301) and ncc > 0.99


def test_balanced_accuracy() -> None:
    assert balanced_accuracy(["a", "a", "a", "b"], ["a", "a", "a", "a"]) == 0.5
    assert balanced_accuracy(["a", "b"], ["a", "b"]) == 1.0


def test_agreement_by_confidence_keeps_the_sure_cells() -> None:
    rows = agreement_by_confidence(["a", "b", "a", "b"], ["a", "a", "a", None], [0.9, 0.55, 0.65, None], (0.5, 0.6, 0.95))
    assert rows[0] == (0.5, 3, pytest.approx(2 / 3))  # the unlabelled cell never counts
    assert rows[1] == (0.6, 2, 1.0)
    assert rows[2] == (0.95, 0, None)


def test_benchmark_prints_every_measurement(tiny, fields_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cells = tmp_path / "cells" / "neutrophil"
    cells.mkdir(parents=True)
    for path in sorted((fields_dir / "images").glob("*.jpg")):
        x0, y0, x1, y1 = next(o.box for o in read_voc(fields_dir / "annotations" / f"{path.stem}.xml") if o.name == "WBC")
        side = min(max(x1 - x0, y1 - y0), 480)
        left, top = min(max(x0, 0), 640 - side), min(max(y0, 0), 480 - side)
        Image.fromarray(load_rgb(path)[top:top + side, left:left + side]).save(cells / f"{path.stem}_1.jpg")
    benchmark.main([str(fields_dir), "--cells", str(cells.parent), "--artifact", str(tiny.folder)])
    out = capsys.readouterr().out
    assert "| all | 1.000 | 1.000 |" in out and "frames/s finding" in out
    assert "single-cell crops located in their frames: 6" in out
    assert "found in the frame (dorl.fields):" in out and "control: that box shifted by 4 px" in out
    assert "by its top probability" in out and ">= 0.5: " in out
    assert np.isfinite(float(out.split("crop side / nucleus box's longer side")[1].split("median ")[1].split(",")[0]))
