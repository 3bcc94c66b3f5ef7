"""The white-cell finder on the bundled real frames: every annotated white cell, nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.data.images import load_rgb
from dorl.errors import ConfigError, ImageError
from dorl.fields.finder import FinderConfig, find_white_cells, stain_contrast
from dorl.fields.scoring import DetectionScore, box_iou
from dorl.fields.voc import read_voc, voc_boxes


def test_finds_every_annotated_white_cell_and_nothing_else(fields_dir: Path, frame_paths: list[Path]) -> None:
    score = DetectionScore()
    for path in frame_paths:
        score.add([c.box for c in find_white_cells(load_rgb(path))], voc_boxes(fields_dir / "annotations" / f"{path.stem}.xml"))
    assert score.true_positives == 8 and score.false_negatives == 0 and score.false_positives == 0
    assert score.mean_iou > 0.75


def test_two_lobes_of_one_nucleus_are_one_cell(fields_dir: Path) -> None:
    cells = find_white_cells(load_rgb(fields_dir / "images" / "BloodImage_00123.jpg"))
    assert len(cells) == 1
    assert box_iou(cells[0].box, voc_boxes(fields_dir / "annotations" / "BloodImage_00123.xml")[0]) > 0.7


def test_edge_flag_follows_the_frame_edge(fields_dir: Path) -> None:
    for stem in ("BloodImage_00001", "BloodImage_00031", "BloodImage_00098", "BloodImage_00161"):
        cells = find_white_cells(load_rgb(fields_dir / "images" / f"{stem}.jpg"))
        truth = [o for o in read_voc(fields_dir / "annotations" / f"{stem}.xml") if o.name == "WBC"]
        for obj in truth:
            cell = max(cells, key=lambda c: box_iou(c.box, obj.box))
            assert cell.edge == obj.truncated, (stem, obj)


def test_nucleus_mask_lies_in_the_boxes(fields_dir: Path) -> None:
    rgb = load_rgb(fields_dir / "images" / "BloodImage_00098.jpg")
    (cell,) = find_white_cells(rgb)
    x0, y0, x1, y1 = cell.nucleus_box
    assert cell.nucleus.shape == (y1 - y0, x1 - x0) and cell.nucleus.sum() == cell.area
    mask = cell.frame_mask(rgb.shape[:2])
    ys, xs = np.nonzero(mask)
    bx0, by0, bx1, by1 = cell.box
    assert bx0 <= xs.min() and xs.max() < bx1 and by0 <= ys.min() and ys.max() < by1
    # the nucleus is the blue-violet stain: high contrast there, near zero elsewhere
    stain = stain_contrast(rgb)
    assert stain[mask].mean() > 0.3 and np.median(stain[~mask]) < 0.05


def test_a_field_of_red_cells_only_has_no_white_cell(fields_dir: Path) -> None:
    rgb = load_rgb(fields_dir / "images" / "BloodImage_00001.jpg")[:300]  # above the neutrophil
    assert find_white_cells(rgb) == []
    assert find_white_cells(np.full((480, 640, 3), 220, np.uint8)) == []


def test_platelets_are_too_small(fields_dir: Path) -> None:
    rgb = load_rgb(fields_dir / "images" / "BloodImage_00031.jpg")
    platelets = voc_boxes(fields_dir / "annotations" / "BloodImage_00031.xml", "Platelets")
    assert platelets
    cells = find_white_cells(rgb)
    assert len(cells) == len(voc_boxes(fields_dir / "annotations" / "BloodImage_00031.xml"))
    assert all(box_iou(c.box, p) < 0.2 for c in cells for p in platelets)  # none is a cell of its own
    many = find_white_cells(rgb, FinderConfig(min_area=16, min_piece=16, lobe_gap=0))
    assert len(many) > len(cells)  # they are stained like nuclei: only their size keeps them out


def test_bad_input_and_config() -> None:
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        find_white_cells(np.zeros((10, 10), np.uint8))
    with pytest.raises(ConfigError, match="threshold"):
        FinderConfig(threshold=0)
    with pytest.raises(ConfigError, match="scale"):
        FinderConfig(scale=0)
