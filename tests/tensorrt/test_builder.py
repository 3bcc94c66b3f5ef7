"""Engine builder without TensorRT: options, the engine manifest, the `dorl build` and `trtexec`
command lines, and the errors `dorl build` gives where TensorRT is absent."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dorl.artifacts import write_manifest
from dorl.commands.build import build
from dorl.errors import ArtifactError, ConfigError, MissingDependencyError
from dorl.tensorrt.builder import BuildSettings, build_engine, engine_manifest_fields
from dorl.tensorrt.plan import (
    BuildPlan,
    batch_input_spec,
    default_engine_dir,
    onnx_model_entry,
    rebuild_command,
    trtexec_command,
    validate_build_options,
)
from dorl.tensorrt.system import SystemDescription, require_tensorrt, tensorrt_usable

ORIN = SystemDescription("10.3.0.30", "Orin", "8.7", 16, 64 << 30)
ONNX_MANIFEST = {
    "folder": "/data/dorl-onnx-fp32",
    "kind": "onnx",
    "precision": "fp32",
    "class_names": ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"],
    "image_size": 224,
    "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]},
                {"name": "feature", "dtype": "float32", "shape": ["batch", 768]}],
    "files": {"model.onnx": {"sha256": "ab" * 32, "bytes": 10}},
}
no_tensorrt = pytest.mark.skipif(tensorrt_usable(), reason="checks the error given when TensorRT is absent")


# -- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "FP16", "int4", ""])
def test_unknown_precision_is_refused(precision: str) -> None:
    with pytest.raises(ConfigError, match="choose fp16 or int8"):
        validate_build_options(precision, 8, None, 1024)


@pytest.mark.parametrize(("max_batch", "opt_batch", "workspace", "opt_level", "flag"),
                         [(0, None, 1024, 3, "--max-batch"), (8, 9, 1024, 3, "--opt-batch"),
                          (8, 0, 1024, 3, "--opt-batch"), (8, None, 0, 3, "--workspace"),
                          (8, None, 1024, 6, "--opt-level"), (8, None, 1024, -1, "--opt-level")])
def test_impossible_options_are_refused(max_batch: int, opt_batch: int | None, workspace: int, opt_level: int,
                                        flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        validate_build_options("fp16", max_batch, opt_batch, workspace, opt_level)
    with pytest.raises(ConfigError, match=flag):
        BuildSettings(max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace, opt_level=opt_level)


def test_settings_refuse_a_negative_verification() -> None:
    with pytest.raises(ConfigError, match="--verify must be 0"):
        BuildSettings(verify_cells=-1)
    assert BuildSettings(max_batch=4).opt == 4 and BuildSettings(max_batch=4, opt_batch=2).opt == 2


# -- manifest and commands ---------------------------------------------------------------------------
def test_rebuild_command_round_trips_through_the_shell() -> None:
    command = rebuild_command(Path("/a b/onnx"), Path("/out"), "int8", 4, 2, 256, Path("/c/timing.cache"),
                              Path("/c/calib.cache"), opt_level=5)
    assert shlex.split(command) == ["dorl", "build", "/a b/onnx", "--precision", "int8", "--max-batch", "4",
                                    "--opt-batch", "2", "--workspace", "256", "--opt-level", "5", "--timing-cache",
                                    "/c/timing.cache", "--calibration-cache", "/c/calib.cache", "-o", "/out"]


def test_trtexec_command_for_a_strongly_typed_build() -> None:
    command = trtexec_command("/a b/model.onnx", "/out/model.engine", BuildPlan(strongly_typed=True), "images",
                              (224, 224, 3), 8, 4, 512, 3, timing_cache="/c/t.cache")
    assert shlex.split(command) == [
        "trtexec", "--onnx=/a b/model.onnx", "--saveEngine=/out/model.engine", "--minShapes=images:1x224x224x3",
        "--optShapes=images:4x224x224x3", "--maxShapes=images:8x224x224x3", "--memPoolSize=workspace:512M",
        "--builderOptimizationLevel=3", "--stronglyTyped", "--timingCacheFile=/c/t.cache"]


def test_trtexec_command_for_weakly_typed_builds_with_pins() -> None:
    plan = BuildPlan(strongly_typed=False, flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"), fp32_ops=("Softmax",))
    command = trtexec_command("m.onnx", "e.engine", plan, "images", (224, 224, 3), 8, 8, 1024, 4,
                              pinned_layers=["/softmax", "/norm"])
    parts = shlex.split(command)
    assert "--fp16" in parts and "--precisionConstraints=obey" in parts and "--stronglyTyped" not in parts
    assert "--layerPrecisions=/softmax:fp32,/norm:fp32" in parts
    assert "--layerOutputTypes=/softmax:fp32,/norm:fp32" in parts
    int8 = shlex.split(trtexec_command("m.onnx", "e.engine", BuildPlan(False, ("INT8", "FP16")), "images",
                                       (224, 224, 3), 8, 8, 1024, 3, calibration_cache="/c/calib"))
    assert "--int8" in int8 and "--fp16" in int8 and "--calib=/c/calib" in int8
    assert not any(p.startswith("--precisionConstraints") for p in int8)


def test_engine_manifest_fields_record_the_system_plan_and_commands() -> None:
    settings = BuildSettings(precision="fp16", max_batch=8, opt_batch=4, workspace_mb=1024, opt_level=4)
    plan = BuildPlan(strongly_typed=False, flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"), fp32_ops=("Softmax",))
    fields = engine_manifest_fields(ONNX_MANIFEST, ORIN, settings, plan,
                                    {"dorl": "dorl build x -o y", "trtexec": "trtexec --onnx=x"}, ["/softmax"])
    assert (fields["tensorrt_version"], fields["gpu_name"], fields["compute_capability"]) == ("10.3.0.30", "Orin", "8.7")
    assert (fields["gpu_sm_count"], fields["gpu_total_memory_bytes"]) == (16, 64 << 30)
    assert (fields["precision"], fields["max_batch"], fields["opt_batch"], fields["workspace_mb"],
            fields["opt_level"]) == ("fp16", 8, 4, 1024, 4)
    assert fields["source_onnx"] == {"folder": "/data/dorl-onnx-fp32", "sha256": "ab" * 32, "precision": "fp32"}
    assert fields["inputs"] == ONNX_MANIFEST["inputs"] and fields["outputs"] == ONNX_MANIFEST["outputs"]
    assert fields["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and fields["strongly_typed"] is False
    assert fields["fp32_ops"] == ["Softmax"] and fields["fp32_pinned_layers"] == 1
    assert fields["rebuild_command"] == "dorl build x -o y" and fields["trtexec_command"] == "trtexec --onnx=x"
    assert fields["versions"]["tensorrt"] == "10.3.0.30"
    assert fields["tta"] == "none"  # the ONNX manifest records none: made before dorl recorded it
    assert engine_manifest_fields({**ONNX_MANIFEST, "tta": "flips"}, ORIN, settings, plan,
                                  {"dorl": "", "trtexec": ""}, [])["tta"] == "flips"


def test_input_spec_and_model_entry() -> None:
    assert batch_input_spec(ONNX_MANIFEST) == ("images", (224, 224, 3))
    assert onnx_model_entry(ONNX_MANIFEST) == ("model.onnx", "ab" * 32)
    with pytest.raises(ArtifactError, match="only the batch dimension may be dynamic"):
        batch_input_spec({**ONNX_MANIFEST, "inputs": [{"name": "images", "shape": ["b", "h", 224, 3]}]})
    with pytest.raises(ArtifactError, match="exactly one"):
        batch_input_spec({**ONNX_MANIFEST, "inputs": []})


def test_default_engine_dir_is_beside_the_onnx_artifact(tmp_path: Path) -> None:
    assert default_engine_dir(tmp_path / "cells-onnx", "int8") == tmp_path / "cells-onnx-int8-engine"


# -- without TensorRT ----------------------------------------------------------------------------------
@pytest.fixture()
def onnx_artifact(tmp_path: Path) -> Path:
    """An ONNX artifact folder whose graph is never parsed here (TensorRT is checked first)."""
    folder = tmp_path / "cells-onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x08")  # a ModelProto holding only ir_version 8
    fields = {k: v for k, v in ONNX_MANIFEST.items() if k not in ("folder", "kind", "files")}
    write_manifest(folder, "onnx", ["model.onnx"], **fields)
    return folder


@no_tensorrt
def test_tensorrt_stub_package_is_not_mistaken_for_tensorrt() -> None:
    with pytest.raises(MissingDependencyError, match="needs TensorRT.*JetPack.*pypi.nvidia.com"):
        require_tensorrt("building a TensorRT engine")


@no_tensorrt
@pytest.mark.parametrize("verify", [0, 4])
def test_build_engine_without_tensorrt_says_where_to_get_it(onnx_artifact: Path, tmp_path: Path, verify: int) -> None:
    pytest.importorskip("onnxruntime", reason="verification needs onnxruntime before TensorRT is looked for")
    with pytest.raises(MissingDependencyError, match="building a TensorRT engine needs TensorRT"):
        build_engine(onnx_artifact, tmp_path / "engine", BuildSettings(verify_cells=verify))
    assert not (tmp_path / "engine").exists()


def test_too_few_verification_images_fail_before_the_build(onnx_artifact: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="verification needs onnxruntime")
    with pytest.raises(ConfigError, match="verifying an engine on 500 cells needs at least that many images"):
        build_engine(onnx_artifact, tmp_path / "engine", BuildSettings(verify_cells=500))


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("build")(build)
    app.command("noop", hidden=True)(lambda: None)  # keeps typer from flattening the one-command app
    return app


@no_tensorrt
def test_cli_without_tensorrt_fails_with_one_sentence(onnx_artifact: Path) -> None:
    pytest.importorskip("onnxruntime", reason="verification needs onnxruntime before TensorRT is looked for")
    result = CliRunner().invoke(_cli(), ["build", str(onnx_artifact), "--precision", "fp16", "--verify", "2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: building a TensorRT engine needs TensorRT")
    assert "JetPack" in lines[0] and "pypi.nvidia.com" in lines[0]


@pytest.mark.parametrize(("args", "expected"),
                         [(["--precision", "fp32"], "unknown engine precision 'fp32': choose fp16 or int8"),
                          (["--max-batch", "4", "--opt-batch", "8"], "--opt-batch must be between 1 and"),
                          (["--workspace", "0"], "--workspace must be at least 1 MB"),
                          (["--opt-level", "9"], "--opt-level must be between 0 and 5"),
                          (["--verify", "-2"], "--verify must be 0 (off) or a number of cells")])
def test_cli_refuses_bad_options_before_anything_else(onnx_artifact: Path, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(_cli(), ["build", str(onnx_artifact), *args])
    assert result.exit_code == 1
    assert expected in result.output


def test_cli_refuses_a_missing_or_wrong_artifact(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["build", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(_cli(), ["build", str(tmp_path), "--verify-images", str(tmp_path / "no" / "such")])
    assert result.exit_code == 1 and "no/such does not exist: give --verify-images" in result.output
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "model.engine").write_bytes(b"plan")
    write_manifest(engine, "engine", ["model.engine"])
    result = CliRunner().invoke(_cli(), ["build", str(engine)])
    assert result.exit_code == 1 and "is a 'engine' artifact, but this needs 'onnx'" in result.output
