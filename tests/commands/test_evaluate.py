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
    args = [bundle, "--domain", f"pbc={domains['pbc']}", "--domain", f"bccd={domains['bccd']}", "-o", out,
            "--heads", "logreg", "--folds", "3", "--repeats", "2", "--device", "cpu", "--cae-variants", "all",
            "--cae-framings", "whole,cell"]
    code, stdout, stderr = invoke(*args)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["source"] == "pbc" and results["targets"] == ["bccd"]
    assert results["protocol"]["seeds"] == [1234, 1235]
    data = results["settings"]["all"]
    methods = [r["method"] for r in data["rows"]]
    features = ["DoRL (CAE CLS)", "CAE without mean-matching", "CLS-aligned CAE", "pooled tokens"]
    assert methods == [f"{f} · {framing}{adapt}" for framing in ("whole", "cell") for f in features
                       for adapt in ("", " + adapt (mean)")]
    # the bundle records the CPU schedule (cell framing): its own CAE is the cell DoRL row, the others are trained
    assert results["info"]["bundle_framing"]["input"] == "cell"
    assert results["info"]["cae"]["DoRL (CAE CLS) · cell"] == "the bundle's CAE"
    assert results["info"]["cae"]["DoRL (CAE CLS) · whole"]["alignment"] == "z"
    assert results["info"]["cae"]["CAE without mean-matching · cell"]["mmd_weight"] == 0.0
    assert results["info"]["cae"]["CLS-aligned CAE · whole"]["alignment"] == "cls_mean"
    assert any("CAEs the bundle does not hold are trained" in note for note in results["notes"])
    assert data["class_counts"] == {"pbc": {c: 4 for c in CLASSES}, "bccd": {"lymphocyte": 3, "neutrophil": 3}}
    assert data["majority"]["bccd"]["accuracy"] == 0.5 and data["majority"]["pbc"]["accuracy"] == pytest.approx(1 / 3)
    assert data["small_classes"] == {"pbc": list(CLASSES), "bccd": ["lymphocyte", "neutrophil"]}
    row = data["rows"][0]
    assert sum(map(sum, row["domains"]["pbc"]["confusion"]["counts"])) == 2 * 12  # every pbc cell once per seed
    assert sum(map(sum, row["domains"]["bccd"]["confusion"]["counts"])) == 6 * 6  # all of bccd, every split
    assert len(row["cross_lab"]["balanced_accuracy"]["folds"]) == 6
    compared = {(c["method"], c["reference"]) for c in data["comparisons"]}
    assert ("DoRL (CAE CLS) · cell", "pooled tokens · cell") in compared
    assert ("pooled tokens · cell", "pooled tokens · whole") in compared
    assert ("pooled tokens · cell + adapt (mean)", "pooled tokens · cell") in compared
    assert all(c["verdict"] in ("better", "worse", "no difference") for c in data["comparisons"])
    assert "| method | head | pbc accuracy (in-domain) | cross-lab balanced accuracy |" in stdout
    assert "majority class of each domain" in stdout
    text = (out / "results.md").read_text()
    assert text.startswith("# Cross-domain evaluation: source `pbc`") and "fewer than 5 cells" in text
    assert (out / "summary_all.png").read_bytes()[:4] == b"\x89PNG" and not (out / "confusion").exists()
    assert {"bccd.safetensors", "pbc.safetensors"} <= {p.name for p in (out / "cache" / "cell").iterdir()}
    # a second run reuses the token caches and the trained CAEs: same numbers
    code, _, stderr = invoke(*args)
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
    code, _, err = invoke(bundle, "-d", pbc, "-o", tmp_path / "o", "--framings", "whole,field")
    assert code == 1 and "unknown framing" in err
    code, _, err = invoke(bundle, "-d", pbc, "-o", tmp_path / "o", "--cae-variants", "dorl (cae cls),MAE")
    assert code == 1 and "unknown CAE variant 'MAE'" in err
    code, _, err = invoke(bundle, "-d", pbc, "-o", tmp_path / "o", "--framings", "cell", "--cae-framings", "whole")
    assert code == 1 and "CAE rows on input 'whole', which is not among the scored framings" in err
    code, _, err = invoke(tmp_path, "-d", pbc, "-o", tmp_path / "o")
    assert code == 1 and "manifest" in err
    one = tmp_path / "one" / "neutrophil"
    one.mkdir(parents=True)
    for image in sorted((domains["pbc"] / "neutrophil").glob("*.jpg"))[:6]:
        (one / image.name).write_bytes(image.read_bytes())
    code, _, err = invoke(bundle, "-d", f"one={tmp_path / 'one'}", "-o", tmp_path / "o1")
    assert code == 1 and "holds fewer than 2 classes" in err and not (tmp_path / "o1").exists()  # nothing computed
    code, _, err = invoke(bundle, "-d", pbc, "-o", bundle)
    assert code == 1 and "is a dorl bundle folder" in err and not (bundle / "cache").exists()


def test_cae_variants_default_to_dorl_and_all_names_every_one() -> None:
    from dorl.commands.evaluate import CAE_VARIANT_NAMES, _variants
    from dorl.evaluation.run import CAE_VARIANTS, EvaluationOptions

    assert CAE_VARIANT_NAMES == tuple(CAE_VARIANTS)  # the CLI's copy of the names stays the library's
    assert EvaluationOptions().cae_variants == ("DoRL (CAE CLS)",)
    assert _variants("All") == CAE_VARIANT_NAMES
    assert _variants("") == ()
    assert _variants("cls-aligned cae, dorl (cae cls)") == ("CLS-aligned CAE", "DoRL (CAE CLS)")


def test_by_default_only_the_bundles_own_cae_is_scored(bundle: Path, domains: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """The default rows train no CAE: DoRL's on the bundle's input (cell), pooled tokens on both inputs."""
    out = tmp_path / "eval"
    code, _, stderr = invoke(bundle, "-d", f"pbc={domains['pbc']}", "-d", f"bccd={domains['bccd']}", "-o", out,
                             "--heads", "logreg", "--folds", "2", "--repeats", "1", "--device", "cpu",
                             "--adapt-methods", "")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["settings"]["all"]["rows"]]
    assert methods == ["pooled tokens · whole", "DoRL (CAE CLS) · cell", "pooled tokens · cell"]
    assert results["info"]["cae"] == {"DoRL (CAE CLS) · cell": "the bundle's CAE"}
    assert not list((out / "cache").glob("cae_*.safetensors"))
    assert not any("CAEs the bundle does not hold" in note for note in results["notes"])


def test_flip_rows_beside_the_plain_ones_with_their_paired_difference(bundle: Path, domains: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [bundle, "-d", f"pbc={domains['pbc']}", "-d", f"bccd={domains['bccd']}", "-o", out, "--heads", "logreg",
            "--folds", "2", "--repeats", "1", "--device", "cpu", "--adapt-methods", "", "--framings", "cell"]
    code, _, stderr = invoke(*args, "--tta", "none,flips")
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    rows = results["settings"]["all"]["rows"]
    assert [r["method"] for r in rows] == ["DoRL (CAE CLS) · cell", "DoRL (CAE CLS) · cell + TTA flips",
                                           "pooled tokens · cell", "pooled tokens · cell + TTA flips"]
    assert [r["tags"]["tta"] for r in rows] == ["none", "flips", "none", "flips"]
    flips = [c for c in results["settings"]["all"]["comparisons"] if c["compared"] == "tta: flips vs none"]
    assert [c["method"] for c in flips] == ["DoRL (CAE CLS) · cell + TTA flips", "pooled tokens · cell + TTA flips"]
    assert sorted(p.name for p in (out / "cache").iterdir() if p.is_dir()) == [
        "cell", "cell.flip_h", "cell.flip_hv", "cell.flip_v"]
    code, _, err = invoke(*args, "--tta", "flips,rot90")
    assert code == 1 and "unknown test-time augmentation ['rot90']" in err


def test_by_default_the_bundles_own_flips_are_scored_on_its_input_only(domains: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    """A bundle recording flips (as `dorl train` does): the default table holds the shipped pipeline's rows."""
    torch.manual_seed(0)
    config = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1, class_names=CLASSES, lora=None)
    train = dataclasses.replace(cpu_schedule(config), cae=CaeTrainConfig(epochs=0))
    save_bundle(build_model(config), tmp_path / "bundle", {"train_config": train_config_to_dict(train), "tta": "flips"})
    out = tmp_path / "eval"
    code, _, stderr = invoke(tmp_path / "bundle", "-d", f"pbc={domains['pbc']}", "-d", f"bccd={domains['bccd']}",
                             "-o", out, "--heads", "logreg", "--folds", "2", "--repeats", "1", "--device", "cpu",
                             "--adapt-methods", "")
    assert code == 0, stderr
    rows = json.loads((out / "results.json").read_text())["settings"]["all"]["rows"]
    assert [r["method"] for r in rows] == ["pooled tokens · whole", "DoRL (CAE CLS) · cell",
                                           "DoRL (CAE CLS) · cell + TTA flips", "pooled tokens · cell",
                                           "pooled tokens · cell + TTA flips"]
    assert not list((out / "cache").glob("whole.*"))  # no flipped whole images were encoded
