"""`dorl report` and `dorl fields` through typer's CliRunner, on the bundled frames and the tiny artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from tiny_artifact import build_tiny_artifact
from typer.testing import CliRunner

from dorl.commands.fields import fields
from dorl.commands.report import report
from dorl.paths import ASSETS_DIR

FRAMES = ASSETS_DIR / "fields" / "bccd" / "images"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    pytest.importorskip("onnxruntime", reason="the field analysis runs the tiny artifact with onnxruntime")
    return build_tiny_artifact(tmp_path_factory.mktemp("report") / "tiny").folder


@pytest.fixture()
def frames(tmp_path: Path) -> Path:
    """The bundled frames plus a corrupt one."""
    folder = tmp_path / "frames"
    shutil.copytree(FRAMES, folder)
    (folder / "BloodImage_99999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def invoke(command: typer.models.CommandFunctionType, *args: object) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_report_from_frames_end_to_end(artifact: Path, frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = invoke(report, frames, "--artifact", artifact, "-o", out)
    assert code == 3, stderr  # written, and partial: one frame unreadable, cells rejected
    records = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records].count("cell") == 8
    (broken,) = [r for r in records if r["status"] == "error"]
    assert broken["frame"].endswith("BloodImage_99999.jpg") and "could not be decoded" in broken["error"]
    data = json.loads((out / "differential.json").read_text())
    assert data["frames"] == {"analysed": 7, "without_white_cell": 0, "failed": 1}
    edge = sum(r["status"] == "cell" and r["edge"] for r in records)
    assert data["cells"]["found"] == 8 and data["cells"]["edge_cut"] == edge == 2
    # the tiny graph's mask (darker than mid-grey) holds no cell in 4 of the 6 whole crops: "no cell", not counted
    assert data["cells"]["rejected"] == 4
    assert data["cells"]["counted"] == 2 == sum(d["count"] for d in data["differential"])
    assert any("only 2 cells were counted" in w for w in data["warnings"])
    assert "| **counted** | **2** |" in stdout and "Warning" in stdout
    assert (out / "differential.md").read_text() in stdout + "\n"
    assert (out / "gallery" / "index.html").is_file() and (out / "gallery" / "not-counted.png").is_file()


def test_report_from_records_matches(artifact: Path, frames: Path, tmp_path: Path) -> None:
    records = tmp_path / "run" / "cells.jsonl"
    code, _, stderr = invoke(fields, artifact, frames, "-o", records)
    assert code == 3, stderr  # one frame unreadable and cells without a label: partial, as in `dorl predict`
    assert "7 frames (0 without a white cell, 1 unreadable): 8 white cells (2 cut by the edge), 2 labelled" in stderr
    code, _, stderr = invoke(report, records, "-o", tmp_path / "from-records", "--no-gallery", "--min-cells", "2")
    assert code == 3, stderr
    data = json.loads((tmp_path / "from-records" / "differential.json").read_text())
    assert data["cells"]["counted"] == 2 and data["cells"]["rejected"] == 4 and len(data["warnings"]) == 1 and "1 of 7 frames" in data["warnings"][0]
    assert not (tmp_path / "from-records" / "gallery").exists()


def test_fields_streams_json_lines(artifact: Path, tmp_path: Path) -> None:
    two = [FRAMES / "BloodImage_00010.jpg", FRAMES / "BloodImage_00098.jpg"]
    code, stdout, _ = invoke(fields, artifact, *two)
    assert code == 4  # the tiny graph finds no white cell in any of the three crops: nothing labelled
    code, labelled, _ = invoke(fields, artifact, *two, "--no-cell-check")
    assert code == 0 and all(json.loads(line)["label"] for line in labelled.splitlines())
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [(r["frame_index"], r["cell"]) for r in lines] == [(0, 0), (0, 1), (1, 0)]
    assert all((r["label"] in r["probs"]) != bool(r["no_cell"]) and len(r["box"]) == 4 and r["mask"]["size"]
               for r in lines)  # a label, or the reasons there is no cell


@pytest.mark.parametrize(("args", "message"), [
    (["missing-folder"], "does not exist"),
    (["empty"], "no image files found"),
])
def test_frame_errors(artifact: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    code, _, stderr = invoke(report, *[tmp_path / a for a in args], "--artifact", artifact, "-o", tmp_path / "out")
    assert code == 1 and message in stderr


def test_frames_need_an_artifact(tmp_path: Path) -> None:
    code, _, stderr = invoke(report, FRAMES, "-o", tmp_path / "out")
    assert code == 1 and "needs --artifact" in stderr


def test_bad_records_file(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    path.write_text("not json\n")
    code, _, stderr = invoke(report, path, "-o", tmp_path / "out")
    assert code == 1 and "line 1 is not JSON" in stderr


def _records(tmp_path: Path, lines: list[dict]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cells.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


CELL = {"frame": "a.jpg", "frame_index": 0, "cells_in_frame": 1, "status": "cell", "cell": 0, "edge": False,
        "label": "neutrophil", "uncertain": False, "no_cell": False, "probs": {"neutrophil": 0.9, "lymphocyte": 0.1}}


def test_report_exit_codes_follow_what_was_counted(tmp_path: Path) -> None:
    unreadable = {"frame": "b.jpg", "frame_index": 1, "cells_in_frame": 0, "status": "error", "error": "truncated"}
    rejected = {**CELL, "frame": "c.jpg", "frame_index": 2, "label": None, "no_cell": True}
    for name, lines, expected in (("all", [CELL], 0), ("partial", [CELL, unreadable], 3),
                                  ("rejected", [CELL, rejected], 3), ("none read", [unreadable], 4),
                                  ("none countable", [rejected], 4)):
        code, _, stderr = invoke(report, _records(tmp_path / name, lines), "-o", tmp_path / name / "out", "--no-gallery")
        assert code == expected, (name, stderr)


def test_report_replaces_only_an_earlier_report(tmp_path: Path) -> None:
    records = _records(tmp_path, [CELL])
    out = tmp_path / "slide"
    assert invoke(report, records, "-o", out)[0] == 0
    stale = out / "gallery" / "basophil.png"
    stale.write_bytes(b"an older slide's sheet")
    code, _, stderr = invoke(report, records, "-o", out)
    assert code == 1 and "already holds a report: pass --overwrite" in stderr and stale.exists()
    assert invoke(report, records, "-o", out, "--overwrite")[0] == 0
    assert not stale.exists() and (out / "gallery" / "neutrophil.png").is_file()  # replaced whole
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, _, stderr = invoke(report, records, "-o", other, "--overwrite")
    assert code == 1 and "not a dorl report" in stderr and (other / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, _, stderr = invoke(report, records, "-o", afile)
    assert code == 1 and "not a folder" in stderr and afile.read_text() == "keep me"
    shutil.copy(records, out / "cells.jsonl")
    code, _, stderr = invoke(report, out / "cells.jsonl", "-o", out, "--overwrite")
    assert code == 1 and "input" in stderr and (out / "cells.jsonl").is_file()  # records inside it are an input


def test_report_is_never_written_among_the_frames(artifact: Path, frames: Path) -> None:
    code, _, stderr = invoke(report, frames, "--artifact", artifact, "-o", frames / "slide")
    assert code == 1 and "input" in stderr and not (frames / "slide").exists()


def test_fields_output_is_checked_before_anything_is_written(artifact: Path, frames: Path, tmp_path: Path) -> None:
    out = tmp_path / "cells.jsonl"
    out.write_text("an earlier run\n")
    code, _, stderr = invoke(fields, artifact, tmp_path / "missing.jpg", "-o", out)
    assert code == 1 and "does not exist" in stderr and out.read_text() == "an earlier run\n"
    frame = frames / "BloodImage_00010.jpg"
    before = frame.read_bytes()
    code, _, stderr = invoke(fields, artifact, frame, "-o", frame)
    assert code == 1 and "input" in stderr and frame.read_bytes() == before
    (tmp_path / "a-folder").mkdir()
    code, _, stderr = invoke(fields, artifact, frame, "-o", tmp_path / "a-folder")
    assert code == 1 and "is a folder, not a file" in stderr


def test_frames_that_cannot_be_analysed_are_records(artifact: Path, frames: Path, tmp_path: Path) -> None:
    (frames / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    from PIL import Image

    Image.open(frames / "BloodImage_00010.jpg").convert("L").save(frames / "grey.png")
    code, stdout, stderr = invoke(fields, artifact, frames, "--no-cell-check")
    errors = {Path(r["frame"]).name: r["error"] for r in map(json.loads, stdout.splitlines()) if r["status"] == "error"}
    assert code == 3 and "3 unreadable" in stderr
    assert set(errors) == {"gone.jpg", "grey.png", "BloodImage_99999.jpg"}
    assert "greyscale" in errors["grey.png"] and "link" in errors["gone.jpg"]


def test_a_frame_name_that_is_not_utf8_is_kept_exactly(artifact: Path, tmp_path: Path) -> None:
    import base64
    import os

    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(FRAMES / "BloodImage_00010.jpg", os.path.join(os.fsencode(folder), b"frame\xff.jpg"))
    code, _, stderr = invoke(report, folder, "--artifact", artifact, "-o", tmp_path / "slide", "--min-cells", "1")
    assert code in (0, 3, 4) and "Traceback" not in stderr and (tmp_path / "slide" / "gallery" / "index.html").is_file()
    records = [json.loads(line) for line in (tmp_path / "slide" / "cells.jsonl").read_text().splitlines()]
    assert records and all(r["frame"].endswith("frame\\xff.jpg") for r in records)
    assert {base64.b64decode(r["frame_b64"]) for r in records} == {os.fsencode(folder) + b"/frame\xff.jpg"}
