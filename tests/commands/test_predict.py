"""`dorl predict` through typer's CliRunner, on the tiny artifact and real cell images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from sample_data import MASKED
from tiny_artifact import CLASS_NAMES, build_tiny_artifact
from typer.testing import CliRunner

from dorl.commands.predict import predict
from dorl.runtime.records import CSV_COLUMNS

pytest.importorskip("onnxruntime", reason="predict runs the tiny artifact with onnxruntime")

@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    return build_tiny_artifact(tmp_path_factory.mktemp("predict") / "tiny").folder


@pytest.fixture(scope="module")
def cells(wbc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree of real cells: pbc/a.jpg, pbc/b.jpg, nested/lab/c.bmp, plus a README.txt."""
    root = wbc_dir
    folder = tmp_path_factory.mktemp("cells")
    (folder / "pbc").mkdir()
    (folder / "nested" / "lab").mkdir(parents=True)
    pbc = sorted((root / "pbc" / "neutrophil").glob("*.jpg"))[:2]
    shutil.copy(pbc[0], folder / "pbc" / "a.jpg")
    shutil.copy(pbc[1], folder / "pbc" / "b.jpg")
    shutil.copy(min((root / MASKED / "neutrophil").glob("*.bmp")), folder / "nested" / "lab" / "c.bmp")
    (folder / "README.txt").write_text("not an image\n")
    return folder


def invoke(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(predict)
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})  # no table wrapping
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_json_lines_for_a_folder_tree(artifact: Path, cells: Path) -> None:
    code, out, err = invoke(str(artifact), str(cells), "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["source"]).relative_to(cells).as_posix() for r in records] == [
        "nested/lab/c.bmp", "pbc/a.jpg", "pbc/b.jpg"]
    for r in records:
        assert r["error"] is None and r["label"] in CLASS_NAMES and r["mask"] is None and r["status"] == "ok"
        assert abs(sum(r["probs"].values()) - 1.0) < 1e-4 and r["confidence"] == max(r["probs"].values())
        assert r["site"] is None and r["no_cell"] == [] and len(r["size"]) == 2
    assert "3 images: 3 labelled (0 uncertain), 0 no cell, 0 failed; 1 non-image files ignored." in err
    assert "ignored (not an image file)" in err and "README.txt" in err


def test_csv_and_masks(artifact: Path, cells: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    code, out, err = invoke(str(artifact), str(cells / "pbc"), str(cells / "nested" / "lab" / "c.bmp"),
                            "--csv", "--save-masks", str(masks), "--batch-size", "2")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["source"]).name for r in rows] == ["a.jpg", "b.jpg", "c.bmp"]
    assert list(rows[0])[len(CSV_COLUMNS):] == CLASS_NAMES
    for row in rows:
        assert row["error"] == "" and row["label"] in CLASS_NAMES
        mask = np.asarray(Image.open(row["mask"]))
        with Image.open(row["source"]) as img:
            assert mask.shape == (img.height, img.width)
        assert set(np.unique(mask)) <= {0, 255}
    assert sorted(p.name for p in masks.iterdir()) == ["a.png", "b.png", "c.png"]


def test_table_with_a_bad_file_still_succeeds(artifact: Path, cells: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes((cells / "pbc" / "a.jpg").read_bytes()[:500])
    code, out, err = invoke(str(artifact), str(cells / "pbc" / "a.jpg"), str(tmp_path / "broken.jpg"))
    assert code == 3, err  # some images failed, the others are labelled
    assert "broken.jpg\tfailed" in out and "truncated" in out and "a.jpg\tok\t" in out
    assert "2 images: 1 labelled" in err and "1 failed" in err


def test_nothing_readable_exits_non_zero(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("text")
    (tmp_path / "empty.jpg").write_bytes(b"")
    code, out, err = invoke(str(artifact), str(tmp_path / "notes.png"), str(tmp_path / "empty.jpg"), "--json")
    assert code == 4
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["failed", "failed"]
    assert "no image got a label" in err


def test_empty_folder_bad_artifact_and_conflicting_formats(artifact: Path, cells: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(str(artifact), str(tmp_path / "empty"))
    assert code == 1 and "no image files found" in err
    code, _, err = invoke(str(tmp_path / "empty"), str(cells))
    assert code == 1 and "has no manifest.json" in err
    code, _, err = invoke(str(artifact), str(cells), "--json", "--csv")
    assert code == 2 and "exclude each other" in err  # a usage error
    code, _, err = invoke(str(artifact), str(cells), "--backend", "tensorrt")
    assert code == 1 and "dorl build" in err


def test_help_documents_the_exit_codes() -> None:
    from dorl.cli import app

    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for code in ("0 every image labelled", "3 some images failed", "4 no image labelled", "130/143 stopped"):
        assert code in text
