"""The review gallery: one sheet per label, uncertain cells marked, cells not counted apart, an HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dorl.data.images import load_rgb
from dorl.fields.gallery import THUMB, UNCERTAIN_COLOUR, write_gallery


def record(frame: Path, index: int, label: str | None, box: list[int], **extra: object) -> dict:
    return {"status": "cell", "frame": str(frame), "frame_index": index, "cell": 0, "label": label,
            "confidence": 0.9, "uncertain": False, "edge": False, "error": None, "crop_box": box,
            "probs": {"lymphocyte": 0.1, "neutrophil": 0.9}, **extra}


def test_sheets_per_label_with_uncertain_cells_marked(frame_paths: list[Path], tmp_path: Path) -> None:
    frame = frame_paths[3]  # BloodImage_00098, one neutrophil around (168..360, 128..308)
    box = [160, 120, 370, 330]
    records = [record(frame, 0, "neutrophil", box), record(frame, 1, "neutrophil", box, uncertain=True),
               record(frame, 2, "lymphocyte", box), record(frame, 3, "neutrophil", box, edge=True),
               record(frame, 4, None, box, error="non-finite outputs"),
               {"status": "empty", "frame": "x.jpg", "frame_index": 5}]
    sheets = write_gallery(records, tmp_path / "gallery")
    assert list(sheets) == ["lymphocyte", "neutrophil", "not counted"]
    assert [p.name for p in sheets["neutrophil"]] == ["neutrophil.png"]
    sheet = np.asarray(Image.open(sheets["neutrophil"][0]).convert("RGB"))
    assert sheet.shape[1] == 2 * (THUMB + 4) + 4  # two cells in one row
    first, second = sheet[22:22 + THUMB, 4:4 + THUMB], sheet[22:22 + THUMB, THUMB + 8:2 * THUMB + 8]
    assert (second[:3] == UNCERTAIN_COLOUR).all(axis=-1).mean() > 0.9  # framed in orange
    assert not (first[:3] == UNCERTAIN_COLOUR).all(axis=-1).any()
    crop = load_rgb(frame)[120:330, 160:370]
    thumb = np.asarray(Image.fromarray(crop).resize((THUMB, THUMB), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(first.astype(int) - thumb).mean() < 6  # the cell's own pixels (JPEG thumbnails)
    page = (tmp_path / "gallery" / "index.html").read_text()
    assert page.count("<figure") == 5 and page.count("class='uncertain'") == 1
    assert "not counted: 2 cells" in page and "BloodImage_00098" in page
    assert len(list((tmp_path / "gallery" / "cells").glob("*.jpg"))) == 5
    picture = Image.open(tmp_path / "gallery" / "overview.jpg")  # one row per group
    assert picture.height == sum(Image.open(p[0]).height for p in sheets.values())


def test_many_cells_spread_over_numbered_sheets(frame_paths: list[Path], tmp_path: Path) -> None:
    records = [record(frame_paths[3], i, "neutrophil", [160, 120, 370, 330]) for i in range(5)]
    sheets = write_gallery(records, tmp_path, per_sheet=2)
    assert [p.name for p in sheets["neutrophil"]] == ["neutrophil-1.png", "neutrophil-2.png", "neutrophil-3.png"]


def test_a_missing_frame_leaves_a_grey_square(tmp_path: Path) -> None:
    sheets = write_gallery([record(tmp_path / "gone.jpg", 0, "neutrophil", [0, 0, 50, 50])], tmp_path)
    thumb = np.asarray(Image.open(tmp_path / "cells" / "f00000_c0.jpg"))
    assert sheets["neutrophil"][0].is_file() and abs(int(thumb.mean()) - 200) <= 2
