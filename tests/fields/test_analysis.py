"""Field analysis with the tiny artifact on the bundled frames: records per cell, order, errors, streaming."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dorl.data.images import load_rgb
from dorl.fields.analysis import FieldConfig, analyze_fields
from dorl.fields.crop import CROP_SCALE, crop_box
from dorl.fields.finder import find_white_cells
from dorl.runtime.analyzer import Analyzer


def test_one_result_per_frame_in_order_with_each_cells_record(tiny, frame_paths: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    red_cells_only = load_rgb(frame_paths[0])[:300]
    frames = [frame_paths[0], broken, red_cells_only, *frame_paths[1:]]
    with Analyzer(tiny.folder, batch_size=3) as analyzer:
        results = list(analyze_fields(frames, analyzer))
        assert [r.index for r in results] == list(range(len(frames)))
        assert results[1].status == "error" and "broken.jpg" in results[1].error and results[1].cells == []
        assert results[2].status == "empty" and results[2].size == (300, 640)
        for result, source in zip(results, frames):
            if result.status != "cell":
                continue
            rgb = load_rgb(source)
            found = find_white_cells(rgb)
            assert [c.box for c in result.cells] == [c.box for c in found]
            for cell, expected in zip(result.cells, found):
                assert cell.crop_box == crop_box(expected.nucleus_box, rgb.shape[:2])
                x0, y0, x1, y1 = cell.crop_box
                assert np.array_equal(cell.crop, rgb[y0:y1, x0:x1])
                (alone,) = analyzer.analyze([cell.crop])
                assert cell.result.label == alone.label
                assert cell.result.probs == pytest.approx(alone.probs, abs=1e-4)  # batched vs alone: float sums differ
                assert cell.mask is not None and cell.mask.shape == (y1 - y0, x1 - x0)
    assert sum(len(r.cells) for r in results) == 8
    assert [c.edge for c in results[0].cells] == [True]


def test_records_stream_with_bounded_memory(tiny, frame_paths: list[Path]) -> None:
    consumed = 0

    def camera() -> Iterator[Path]:
        nonlocal consumed
        for path in itertools.islice(itertools.cycle(frame_paths), 40):
            consumed += 1
            yield path

    ahead = []
    with Analyzer(tiny.folder, batch_size=2) as analyzer:
        for result in analyze_fields(camera(), analyzer):
            ahead.append(consumed - result.index - 1)  # frames read but not yet reported
    assert len(ahead) == 40
    assert max(ahead) <= 2  # a batch of 2 crops spans at most 3 frames, whatever the run's length


def test_crop_scale_is_configurable(tiny, frame_paths: list[Path]) -> None:
    with Analyzer(tiny.folder) as analyzer:
        (small,) = analyze_fields([frame_paths[3]], analyzer, FieldConfig(crop_scale=1.0))
        (large,) = analyze_fields([frame_paths[3]], analyzer)
    side = lambda b: b[2] - b[0]
    assert side(small.cells[0].crop_box) * CROP_SCALE == pytest.approx(side(large.cells[0].crop_box), abs=2)


def test_a_blank_frame_is_empty_a_grey_one_an_error(tiny, frame_paths: list[Path]) -> None:
    grey = load_rgb(frame_paths[0]).mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)
    black, white = np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 255, np.uint8)
    with Analyzer(tiny.folder) as analyzer:
        results = list(analyze_fields([black, white, grey], analyzer))
    assert [r.status for r in results] == ["empty", "empty", "error"]
    assert "greyscale" in str(results[2].error)
