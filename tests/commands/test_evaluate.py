"""`dorl evaluate` through typer's CliRunner: a tiny bundle on two small domains of real cells."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from dorl.bundle import save_bundle
from dorl.commands.evaluate import evaluate
from dorl.config import ModelConfig
from dorl.models.registry import build_model
from dorl.training.config import CaeTrainConfig, cpu_schedule, train_config_to_dict

CLASSES = ("eosinophil", "lymphocyte", "neutrophil")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1, class_names=CLASSES, lora=None)
    # 0 epochs: the baseline CAE path runs (built, cached, reused) without the cost of a training step,
    # which tests/training/test_features.py and the training tests cover
    train = dataclasses.replace(cpu_schedule(config), cae=CaeTrainConfig(epochs=0))
    folder = tmp_path_factory.mktemp("evaluate") / "bundle"
    save_bundle(build_model(config), folder, {"train_config": train_config_to_dict(train)})
    return folder


@pytest.fixture(scope="module")
def domains(wbc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pbc with 4 cells of each of 3 classes; another lab with 3 cells of 2 classes (one class fewer)."""
    root = tmp_path_factory.mktemp("domains")
    for name, classes, count in (("pbc", CLASSES, 4), ("bccd", CLASSES[1:], 3)):
        for cls in classes:
            (root / name / cls).mkdir(parents=True)
            for path in sorted((wbc_dir / name / cls).iterdir())[:count]:
                shutil.copy(path, root / name / cls / path.name)
    return {"pbc": root / "pbc", "bccd": root / "bccd"}


def invoke(*args: object) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(evaluate)
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_evaluate_writes_results_and_prints_the_table(bundle: Path, domains: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code, stdout, stderr = invoke(bundle, "--domain", f"pbc={domains['pbc']}", "--domain", f"bccd={domains['bccd']}",
                                  "-o", out, "--heads", "logreg", "--folds", "3", "--device", "cpu")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["source"] == "pbc" and results["targets"] == ["bccd"]
    methods = [r["method"] for r in results["settings"]["all"]["rows"]]
    assert methods == ["DoRL (CAE CLS)", "DoRL + site adaptation (mean)", "CAE without mean-matching",
                       "pooled encoder tokens", "pooled tokens, each domain standardised"]
    assert results["settings"]["shared"]["classes"] == ["lymphocyte", "neutrophil"]
    assert "the bundle's CAE schedule (cpu), mmd_weight 0" in results["notes"][0]
    assert results["info"]["cae_baseline_schedule"]["mmd_weight"] == 0.0
    row = results["settings"]["all"]["rows"][0]
    assert sum(map(sum, row["domains"]["pbc"]["confusion"]["counts"])) == 12
    assert sum(map(sum, row["domains"]["bccd"]["confusion"]["counts"])) == 3 * 6  # all of bccd, every fold
    assert "| method | head | pbc→pbc | pbc→bccd | cross-domain avg | avg (all columns) |" in stdout
    assert (out / "results.md").read_text().startswith("# Cross-domain evaluation: source `pbc`")
    assert len(list((out / "confusion").glob("*.png"))) == 10  # 2 settings x 5 methods x 1 head
    assert {"bccd.safetensors", "pbc.safetensors"} <= {p.name for p in (out / "tokens").iterdir()}
    # a second run reuses the token cache and the trained baseline CAE: same numbers
    code, _, stderr = invoke(bundle, "-d", f"pbc={domains['pbc']}", "-d", f"bccd={domains['bccd']}", "-o", out,
                             "--heads", "logreg", "--folds", "3", "--device", "cpu", "--no-confusion")
    assert code == 0, stderr
    assert "read from" in stderr
    assert json.loads((out / "results.json").read_text())["settings"] == results["settings"]


def test_bad_inputs_give_clear_errors(bundle: Path, domains: dict[str, Path], tmp_path: Path) -> None:
    pbc = f"pbc={domains['pbc']}"
    code, _, err = invoke(tmp_path / "nope", "-d", pbc, "-o", tmp_path / "o")
    assert code == 1 and "does not exist" in err
    code, _, err = invoke(bundle, "-d", str(domains["pbc"]), "-o", tmp_path / "o")
    assert code == 1 and "has no '='" in err
    (tmp_path / "empty" / "neutrophil").mkdir(parents=True)
    code, _, err = invoke(bundle, "-d", pbc, "-d", f"lab={tmp_path / 'empty'}", "-o", tmp_path / "o")
    assert code == 1 and "no usable images" in err
    code, _, err = invoke(bundle, "-d", pbc, "-o", tmp_path / "o", "--heads", "svm,rf")
    assert code == 1 and "unknown heads" in err
    code, _, err = invoke(bundle, "-d", pbc, "-o", tmp_path / "o", "--adapt-methods", "mean,zca")
    assert code == 1 and "unknown site-adaptation method 'zca'" in err
    code, _, err = invoke(tmp_path, "-d", pbc, "-o", tmp_path / "o")
    assert code == 1 and "manifest" in err
