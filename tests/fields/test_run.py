"""`run_fields`, the one call behind `dorl fields` and `dorl predict --fields`: records, tally, exit codes, stop."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from dorl.errors import ArtifactError, ConfigError
from dorl.fields.run import FieldRequest, FieldTally, run_fields
from dorl.runtime.options import AnalyzerOptions
from dorl.runtime.stream import StopFlag


@pytest.fixture()
def frames(frame_paths: list[Path], tmp_path: Path) -> Path:
    """The six bundled frames, a corrupt one and a frame of red cells only (its top rows)."""
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for path in frame_paths:
        shutil.copy(path, folder / path.name)
    (folder / "BloodImage_99999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with Image.open(frame_paths[0]) as image:
        image.crop((0, 0, 640, 120)).save(folder / "red_cells_only.png")
    return folder


def test_records_and_tally(tiny, frames: Path) -> None:
    records: list[dict[str, Any]] = []
    tally = run_fields(FieldRequest(AnalyzerOptions(tiny.folder, batch_size=3), (frames,)), records.append)
    names = [Path(r["frame"]).name for r in records]
    assert names == sorted(names)  # frame order, each frame's cells together
    assert [r["status"] for r in records].count("cell") == tally.cells == 8
    (broken,) = [r for r in records if r["status"] == "error"]
    (empty,) = [r for r in records if r["status"] == "empty"]
    assert broken["frame"].endswith("BloodImage_99999.jpg") and empty["frame"].endswith("red_cells_only.png")
    cells = [r for r in records if r["status"] == "cell"]
    assert (tally.frames, tally.unreadable, tally.empty, tally.edge) == (8, 1, 1, sum(r["edge"] for r in cells))
    labelled = [r for r in cells if r["label"] is not None]
    assert tally.labelled == len(labelled) and tally.no_cell == sum(bool(r["no_cell"]) for r in cells)
    assert tally.labelled + tally.no_cell + tally.failed == tally.cells
    assert tally.exit_code() == 3  # an unreadable frame: partial, as `dorl predict` says of an unreadable image
    assert "8 frames (1 without a white cell, 1 unreadable): 8 white cells" in tally.summary()


def test_no_cell_check_off_labels_every_cell(tiny, frame_paths: list[Path]) -> None:
    records: list[dict[str, Any]] = []
    tally = run_fields(FieldRequest(AnalyzerOptions(tiny.folder, check_cells=False), tuple(frame_paths)), records.append)
    assert tally.cells == tally.labelled == 8 and tally.exit_code() == 0
    assert all(r["label"] in r["probs"] and not r["no_cell"] for r in records)


def test_a_stop_ends_reading_but_finishes_the_frames_read(tiny, frame_paths: list[Path]) -> None:
    stop = StopFlag()
    seen: list[str] = []

    def progress(frame: Any) -> None:
        seen.append(frame.frame)
        stop.signal = signal.SIGTERM  # as the handler does on the first SIGTERM

    records: list[dict[str, Any]] = []
    tally = run_fields(FieldRequest(AnalyzerOptions(tiny.folder, batch_size=1), tuple(frame_paths)), records.append, stop,
                       progress)
    assert 1 <= tally.frames < len(frame_paths) and len(seen) == tally.frames
    assert {r["frame"] for r in records} == set(seen)  # every frame read was emitted whole
    assert tally.exit_code() == 128 + signal.SIGTERM and "stopped early by signal" in tally.summary()


def test_exit_codes() -> None:
    assert FieldTally(frames=3, empty=3).exit_code() == 0  # frames without white cells are a result
    assert FieldTally(frames=2, unreadable=2).exit_code() == 4
    assert FieldTally(frames=2, cells=3, no_cell=3).exit_code() == 4
    assert FieldTally(frames=2, cells=3, labelled=2, no_cell=1).exit_code() == 3
    assert FieldTally(frames=2, cells=3, labelled=3).exit_code() == 0


@pytest.mark.parametrize(("options", "frames", "error", "message"), [
    ({"batch_size": 0}, None, ConfigError, "--batch-size must be a whole number of at least 1"),
    ({"threshold": 1.5}, None, ConfigError, "--threshold must be within [0, 1]"),
    ({"backend": "cuda"}, None, ConfigError, "unknown backend 'cuda'"),
    ({}, (Path("no-such-folder"),), ConfigError, "does not exist"),
    ({}, (), ConfigError, "no frames given"),
    ({}, None, ArtifactError, "not-an-artifact"),
])
def test_bad_requests_fail_before_any_model_is_loaded(tmp_path: Path, frame_paths: list[Path], options: dict,
                                                      frames: tuple | None, error: type, message: str) -> None:
    request = FieldRequest(AnalyzerOptions(tmp_path / "not-an-artifact", **options),
                           (frame_paths[0],) if frames is None else frames)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_fields(request, lambda record: None)
