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


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["non-cells", *[str(a) for a in args]], env={"COLUMNS": "400"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def headed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_head(tiny_weights(COMMITTED), tmp_path_factory.mktemp("cli") / "tiny",
                     sorted((SAMPLE / "pbc").rglob("*.jpg")))


def test_writes_a_derived_artifact_that_predict_uses(headed: Path, tmp_path: Path) -> None:
    out = tmp_path / "taught"
    code, stdout, stderr = invoke(headed, PLATELETS, "-o", out, "--quantile", "0.9")
    assert code == 0, stderr
    assert f"wrote {out}: the non-cell discriminant fitted on 12 images (0 unusable), threshold 1.28" in stdout
    assert read_manifest(out)["non_cell"]["images"] == 12
    result = CliRunner().invoke(app, ["predict", str(out), str(PLATELETS), "--json"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    refused = [r for r in records if r["status"] == "no_cell"]
    assert len(records) == 12 and len(refused) >= 9 and result.exit_code == 3  # 3: some images hold no cell
    assert all(r["label"] is None for r in refused)
    assert any("towards the images without a white cell" in why for r in refused for why in r["no_cell"])


def test_refuses_bad_inputs_with_a_sentence(headed: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(headed, tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 1 and "no images found in" in err and "hold no white cell" in err
    code, _, err = invoke(headed, *sorted(PLATELETS.glob("*.jpg"))[:4], "-o", tmp_path / "out")
    assert code == 1 and "4 non-cell images given; at least 10 images that hold no white cell" in err
    code, _, err = invoke(headed, PLATELETS, "-o", headed)
    assert code == 1 and "is, holds or lies inside the input" in err
    code, _, err = invoke(COMMITTED, PLATELETS, "-o", tmp_path / "out")
    assert code == 1 and "carries no host-side head" in err
    code, _, err = invoke(headed, PLATELETS, "-o", tmp_path / "out", "--quantile", "1.5")
    assert code == 2 and "quantile" in err
    assert not (tmp_path / "out").exists()
