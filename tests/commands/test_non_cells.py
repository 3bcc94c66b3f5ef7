"""`dorl non-cells` through typer's CliRunner: the tiny artifact with a head, real platelet images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from headed_artifact import PLATELETS, SAMPLE, with_head
from tiny_artifact import COMMITTED, tiny_weights
from typer.testing import CliRunner

from dorl.artifacts import read_manifest
from dorl.cli import app
from dorl.runtime.cell_check import QUANTILE


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["non-cells", *[str(a) for a in args]], env={"COLUMNS": "400"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def headed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_head(tiny_weights(COMMITTED), tmp_path_factory.mktemp("cli") / "tiny",
                     sorted((SAMPLE / "pbc").rglob("*.jpg")))


def test_writes_a_derived_artifact_that_predict_uses(headed: Path, tmp_path: Path) -> None:
    out = tmp_path / "taught"
    code, stdout, stderr = invoke(headed, "--non-cells", PLATELETS, "--cells", SAMPLE / "pbc", "-o", out)
    assert code == 0, stderr
    assert f"wrote {out}; stain floor 2.77% of the image, from 80 source cells (0 unreadable); non-cell discriminant " \
           "fitted on 12 images (0 unusable), threshold 2.58" in stdout
    assert read_manifest(out)["non_cell"]["discriminant"]["images"] == 12
    assert read_manifest(out)["non_cell"]["quantile"] == QUANTILE  # the command's default is the library's
    result = CliRunner().invoke(app, ["predict", str(out), str(PLATELETS), "--json"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    refused = [r for r in records if r["status"] == "no_cell"]
    assert len(records) == 12 and len(refused) == 12 and result.exit_code == 4  # 4: no image got a label
    assert all(r["label"] is None for r in refused)
    assert all(any("stained (purple) region covers" in why for why in r["no_cell"]) for r in refused)


def test_refuses_bad_inputs_with_a_sentence(headed: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(headed, "--non-cells", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 1 and "no images found in" in err and "give --non-cells image files or folders" in err
    code, _, err = invoke(headed, "--cells", tmp_path / "no" / "such", "--non-cells", PLATELETS, "-o", tmp_path / "out")
    assert code == 1 and "no/such does not exist: give --cells image files or folders" in err
    code, _, err = invoke(headed, "-o", tmp_path / "out")
    assert code == 1 and "give the source lab's white cells (for the stain floor)" in err
    few = [a for p in sorted(PLATELETS.glob("*.jpg"))[:4] for a in ("--non-cells", p)]
    code, _, err = invoke(headed, *few, "-o", tmp_path / "out")
    assert code == 1 and "4 non-cell images given; at least 10 images that hold no white cell" in err
    code, _, err = invoke(headed, "--non-cells", PLATELETS, "-o", headed)
    assert code == 1 and "is, holds or lies inside the input" in err
    code, _, err = invoke(COMMITTED, "--non-cells", PLATELETS, "-o", tmp_path / "out")
    assert code == 1 and "carries no host-side head" in err
    code, _, err = invoke(headed, "--non-cells", PLATELETS, "-o", tmp_path / "out", "--quantile", "1.5")
    assert code == 2 and "quantile" in err
    assert not (tmp_path / "out").exists()
