"""`dorl train` through typer's CliRunner, on a few real cells copied into a temporary domain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dorl.bundle import read_bundle_manifest
from dorl.commands.train import train


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command()(train)
    return app


def copy_domain(wbc_dir: Path, name: str, target: Path, per_class: int, classes: tuple[str, ...]) -> Path:
    for cls in classes:
        (target / cls).mkdir(parents=True)
        for path in sorted((wbc_dir / name / cls).iterdir())[:per_class]:
            shutil.copy(path, target / cls / path.name)
    return target


def test_a_tiny_run_writes_a_bundle_of_the_shared_classes(app: typer.Typer, wbc_dir: Path, tmp_path: Path) -> None:
    pbc = copy_domain(wbc_dir, "pbc", tmp_path / "pbc", 2, ("lymphocyte", "neutrophil", "monocyte"))
    bccd = copy_domain(wbc_dir, "bccd", tmp_path / "bccd", 2, ("lymphocyte", "neutrophil"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "--domain", f"pbc={pbc}", "-d", f"bccd={bccd}", "-o", str(out), "--encoder", "sam_vit_test",
        "--epochs-seg", "1", "--epochs-cae", "1", "--cpu-schedule", "--head", "svm", "--device", "cpu",
        "--framing", "cell", "--crop-mask", "pseudo", "--alignment", "cls_mean", "--tta", "none",
        "--mmd-weight", "0",
    ])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out / "bundle"))
    manifest = read_bundle_manifest(out / "bundle")
    assert manifest["class_names"] == ["lymphocyte", "neutrophil"]  # monocyte is not in this bccd copy
    assert manifest["metadata"]["schedule"] == "cpu" and manifest["metadata"]["head"]["kind"] == "svm"
    assert manifest["metadata"]["deviations_from_paper"] and manifest["config"]["cae_depth"] == 4
    meta = manifest["metadata"]
    assert meta["framing"] == {"input": "cell", "mask": "pseudo", "margin": 0.1}
    assert meta["train_config"]["cae"]["alignment"] == "cls_mean" and meta["train_config"]["cae"]["mmd_weight"] == 0
    assert meta["tta"] == meta["train_config"]["tta"] == "none"
    assert meta["inputs"]["pbc"]["target_masks"] == {"pseudo": 4} and meta["inputs"]["pbc"]["empty_crop_masks"] == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--domain", "pbc"], "has no '='"),
    (["--domain", "pbc=/nonexistent/folder"], "does not exist"),
    (["--domain", "{pbc}", "--stages", "seg,export"], "unknown stages"),
    (["--domain", "{pbc}", "--head", "forest"], "unknown head"),
    (["--domain", "{pbc}", "--device", "tpu"], "unknown device"),
    (["--domain", "{pbc}", "--framing", "field"], "framing input must be one of"),
    (["--domain", "{pbc}", "--alignment", "mmd"], "alignment must be one of"),
    (["--domain", "{pbc}", "--tta", "rotations"], "unknown test-time augmentation 'rotations'"),
    (["--domain", "{pbc}", "--mmd-weight", "-1"], "CAE loss weights must be >= 0"),
])
def test_user_errors_are_one_sentence_and_exit_1(app: typer.Typer, wbc_dir: Path, tmp_path: Path, args: list[str],
                                                 message: str) -> None:
    pbc = copy_domain(wbc_dir, "pbc", tmp_path / "pbc", 1, ("lymphocyte", "neutrophil"))
    args = [a.replace("{pbc}", f"pbc={pbc}") for a in args]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out"), "--encoder", "sam_vit_test"])
    assert result.exit_code == 1 and message in result.output


def test_the_run_folder_is_never_an_artifact_or_under_a_file(app: typer.Typer, wbc_dir: Path, tmp_path: Path) -> None:
    from dorl.artifacts import write_manifest

    pbc = copy_domain(wbc_dir, "pbc", tmp_path / "pbc", 1, ("lymphocyte", "neutrophil"))
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.bin").write_bytes(b"x")
    write_manifest(artifact, "onnx", ["model.bin"])
    (tmp_path / "afile").write_text("x")
    for out, message in ((artifact, "is a dorl onnx folder"), (artifact / "run", "lies inside the dorl artifact"),
                         (tmp_path / "afile" / "run", "is a file, not a folder")):
        result = CliRunner().invoke(app, ["--domain", f"pbc={pbc}", "-o", str(out), "--encoder", "sam_vit_test"])
        assert result.exit_code == 1 and message in result.output, result.output
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "manifest.sha256", "model.bin"]
