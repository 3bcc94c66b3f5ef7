"""`dorl predict --fields` through typer's CliRunner: whole frames, the field analysis's records and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from tiny_artifact import build_tiny_artifact
from typer.testing import CliRunner

from dorl.commands.fields import fields
from dorl.commands.predict import predict
from dorl.paths import ASSETS_DIR

FRAMES = ASSETS_DIR / "fields" / "bccd" / "images"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    pytest.importorskip("onnxruntime", reason="the field analysis runs the tiny artifact with onnxruntime")
    return build_tiny_artifact(tmp_path_factory.mktemp("predict-fields") / "tiny").folder


def invoke(command: typer.models.CommandFunctionType, *args: object) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # no wrapping
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_json_records_are_those_of_dorl_fields(artifact: Path) -> None:
    two = [FRAMES / "BloodImage_00010.jpg", FRAMES / "BloodImage_00098.jpg"]
    code, stdout, stderr = invoke(predict, artifact, *two, "--fields", "--json", "--no-cell-check")
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [(r["frame_index"], r["cell"]) for r in records] == [(0, 0), (0, 1), (1, 0)]
    assert all(r["label"] in r["probs"] and len(r["box"]) == 4 and r["mask"]["size"] for r in records)
    assert "2 frames (0 without a white cell, 0 unreadable): 3 white cells" in stderr
    code, same, _ = invoke(fields, artifact, *two)
    assert [json.loads(line)["box"] for line in same.splitlines()] == [r["box"] for r in records]


def test_text_lines_and_partial_exit_code(artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    shutil.copytree(FRAMES, folder)
    (folder / "BloodImage_99999.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, stdout, stderr = invoke(predict, artifact, folder, "--fields", "--no-cell-check")
    assert code == 3, stderr  # one unreadable frame, the others labelled: as for single-cell images
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert len(lines) == 9
    (broken,) = [f for f in lines if f[0].endswith("BloodImage_99999.jpg")]
    assert broken[1:3] == ["-", "error"] and "could not be decoded" in broken[3]
    cells = [f for f in lines if f[1] != "-"]
    assert len(cells) == 8 and {f[5] for f in cells} == {"edge", "whole"}
    assert all(len(f[4].split(",")) == 4 and float(f[3]) > 0 for f in cells)


def test_no_frame_readable_exits_4(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, _, stderr = invoke(predict, artifact, tmp_path / "broken.jpg", "--fields")
    assert code == 4 and "1 unreadable" in stderr


@pytest.mark.parametrize("option", [["--csv"], ["--save-masks", "masks"]])
def test_single_cell_outputs_are_refused(artifact: Path, tmp_path: Path, option: list[str]) -> None:
    code, _, stderr = invoke(predict, artifact, FRAMES, "--fields", *option)
    assert code == 2 and "--csv and --save-masks are for single-cell images" in stderr


def test_a_bad_artifact_exits_1(tmp_path: Path) -> None:
    code, stdout, stderr = invoke(predict, tmp_path / "no-artifact", FRAMES, "--fields")
    assert code == 1 and "error:" in stderr and stdout == ""
