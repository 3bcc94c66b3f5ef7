"""Engine builder: precision plans per TensorRT version, the engine manifest, the compatibility
check and the `dorl build` command; all pure, so they run without TensorRT or a GPU."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dorl.artifacts import write_manifest
from dorl.commands.build import build
from dorl.errors import ArtifactError, ConfigError, MissingDependencyError
from dorl.runtime.engine import (
    BuildPlan,
    SystemDescription,
    batch_input_spec,
    build_engine,
    check_compatible,
    default_engine_dir,
    engine_manifest_fields,
    engine_mismatches,
    onnx_model_entry,
    plan_build,
    rebuild_command,
    require_tensorrt,
    tensorrt_usable,
    validate_build_options,
)

ORIN = SystemDescription("10.3.0.30", "Orin", "8.7")
THOR = SystemDescription("11.0.0.8", "NVIDIA Thor", "11.0")
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


# -- options and precision plans ------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "FP16", "int4", ""])
def test_unknown_precision_is_refused(precision: str) -> None:
    with pytest.raises(ConfigError, match="choose fp16 or int8"):
        validate_build_options(precision, 8, None, 1024)


@pytest.mark.parametrize(("max_batch", "opt_batch", "workspace", "flag"),
                         [(0, None, 1024, "--max-batch"), (8, 9, 1024, "--opt-batch"), (8, 0, 1024, "--opt-batch"),
                          (8, None, 0, "--workspace")])
def test_impossible_batch_or_workspace_is_refused(max_batch: int, opt_batch: int | None, workspace: int,
                                                  flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        validate_build_options("fp16", max_batch, opt_batch, workspace)


def test_trt10_fp16_from_fp32_graph_uses_flag_and_pins_layernorm() -> None:
    plan = plan_build("10.3.0.30", "fp16", "fp32")
    assert plan == BuildPlan(strongly_typed=False, flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                             pin_layernorm_fp32=True)


def test_trt10_int8_from_qdq_graph_is_explicit_quantization() -> None:
    plan = plan_build("10.3.0.30", "int8", "int8")
    assert plan.flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS", "INT8")
    assert not plan.calibrate and not plan.strongly_typed


def test_trt10_fp16_graph_is_built_strongly_typed() -> None:
    assert plan_build("10.8.0", "fp16", "fp16") == BuildPlan(strongly_typed=True)


def test_trt10_int8_from_fp32_graph_needs_calibration() -> None:
    with pytest.raises(ConfigError, match=r"`dorl export <bundle> --precision int8`.*calibration cache"):
        plan_build("10.3.0", "int8", "fp32")
    plan = plan_build("10.3.0", "int8", "fp32", calibration=True)
    assert plan.calibrate and "INT8" in plan.flags


@pytest.mark.parametrize(("precision", "onnx_precision", "what"),
                         [("fp16", "fp32", "FP16 engine needs the FP16 graph"),
                          ("int8", "fp32", "INT8 calibrators are gone"),
                          ("int8", "fp16", "INT8 calibrators are gone")])
def test_trt11_refuses_graphs_without_the_precision_in_them(precision: str, onnx_precision: str, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_build("11.0.0.8", precision, onnx_precision, calibration=True)
    message = str(info.value)
    assert what in message and "strongly typed" in message
    assert f"`dorl export <bundle> --precision {precision}`" in message


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt11_builds_matching_graph_strongly_typed_without_flags(precision: str) -> None:
    assert plan_build("11.1.0", precision, precision) == BuildPlan(strongly_typed=True)


def test_qdq_graph_cannot_make_an_fp16_engine() -> None:
    with pytest.raises(ConfigError, match="--precision int8"):
        plan_build("10.3.0", "fp16", "int8")


def test_old_tensorrt_and_unknown_onnx_precision_are_refused() -> None:
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old"):
        plan_build("8.6.1", "fp16", "fp32")
    with pytest.raises(ArtifactError, match="unknown precision 'bf16'"):
        plan_build("10.3.0", "fp16", "bf16")


# -- compatibility --------------------------------------------------------------------------------
def test_same_system_is_compatible_even_with_another_build_number() -> None:
    assert engine_mismatches(ORIN, ORIN) == []
    assert engine_mismatches(ORIN, SystemDescription("10.3.0.26", "Orin", "8.7")) == []


def test_mismatches_name_version_and_gpu() -> None:
    problems = engine_mismatches(ORIN, THOR)
    assert problems == [
        "it was built with TensorRT 10.3.0.30, this machine has 11.0.0.8",
        "it was built for GPU 'Orin' (compute capability 8.7), this one is 'NVIDIA Thor' (compute capability 11.0)",
    ]
    other_model = engine_mismatches(ORIN, SystemDescription("10.3.0.30", "NVIDIA A10", "8.7"))
    assert other_model == ["it was built on GPU 'Orin', this one is 'NVIDIA A10'"]


def test_incompatible_engine_error_gives_the_exact_rebuild_command() -> None:
    command = rebuild_command("/data/dorl onnx", "/data/engine", "fp16", 8, None, 512)
    manifest = {"folder": "/data/engine", "tensorrt_version": "10.3.0.30", "gpu_name": "Orin",
                "compute_capability": "8.7", "rebuild_command": command}
    check_compatible(manifest, ORIN)
    with pytest.raises(ArtifactError) as info:
        check_compatible(manifest, THOR)
    message = str(info.value)
    assert f"`{command}`" in message
    assert "`dorl build '/data/dorl onnx' --precision fp16 --max-batch 8 --workspace 512 -o /data/engine`" in message
    assert "TensorRT 10.3.0.30" in message and "11.0.0.8" in message


def test_engine_manifest_without_system_fields_is_refused() -> None:
    with pytest.raises(ArtifactError, match="lacks 'gpu_name'.*dorl build"):
        check_compatible({"folder": "/e", "tensorrt_version": "10.3.0", "compute_capability": "8.7"}, ORIN)


# -- manifest and command -------------------------------------------------------------------------
def test_rebuild_command_round_trips_through_the_shell() -> None:
    command = rebuild_command(Path("/a b/onnx"), Path("/out"), "int8", 4, 2, 256, Path("/c/timing.cache"),
                              Path("/c/calib.cache"))
    assert shlex.split(command) == ["dorl", "build", "/a b/onnx", "--precision", "int8", "--max-batch", "4",
                                    "--opt-batch", "2", "--workspace", "256", "--timing-cache", "/c/timing.cache",
                                    "--calibration-cache", "/c/calib.cache", "-o", "/out"]


def test_engine_manifest_fields_from_a_fake_system() -> None:
    plan = plan_build(ORIN.tensorrt_version, "fp16", "fp32")
    fields = engine_manifest_fields(ONNX_MANIFEST, ORIN, "fp16", 8, 4, 1024, plan, "dorl build x -o y")
    assert (fields["tensorrt_version"], fields["gpu_name"], fields["compute_capability"]) == ("10.3.0.30", "Orin", "8.7")
    assert (fields["precision"], fields["max_batch"], fields["opt_batch"], fields["workspace_mb"]) == ("fp16", 8, 4, 1024)
    assert fields["source_onnx"] == {"folder": "/data/dorl-onnx-fp32", "sha256": "ab" * 32, "precision": "fp32"}
    assert fields["inputs"] == ONNX_MANIFEST["inputs"] and fields["outputs"] == ONNX_MANIFEST["outputs"]
    assert fields["class_names"][0] == "basophil" and fields["image_size"] == 224
    assert fields["builder_flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and fields["strongly_typed"] is False
    assert fields["rebuild_command"] == "dorl build x -o y"
    assert fields["versions"]["tensorrt"] == "10.3.0.30"


def test_input_spec_and_model_entry() -> None:
    assert batch_input_spec(ONNX_MANIFEST) == ("images", (224, 224, 3))
    assert onnx_model_entry(ONNX_MANIFEST) == ("model.onnx", "ab" * 32)
    with pytest.raises(ArtifactError, match="only the batch dimension may be dynamic"):
        batch_input_spec({**ONNX_MANIFEST, "inputs": [{"name": "images", "shape": ["b", "h", 224, 3]}]})
    with pytest.raises(ArtifactError, match="exactly one"):
        batch_input_spec({**ONNX_MANIFEST, "inputs": []})


def test_default_engine_dir_is_beside_the_onnx_artifact(tmp_path: Path) -> None:
    assert default_engine_dir(tmp_path / "cells-onnx", "int8") == tmp_path / "cells-onnx-int8-engine"


# -- without TensorRT -----------------------------------------------------------------------------
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
def test_build_engine_without_tensorrt_says_where_to_get_it(onnx_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="building a TensorRT engine needs TensorRT"):
        build_engine(onnx_artifact, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("build")(build)
    app.command("noop", hidden=True)(lambda: None)  # keeps typer from flattening the one-command app
    return app


@no_tensorrt
def test_cli_without_tensorrt_fails_with_one_sentence(onnx_artifact: Path) -> None:
    result = CliRunner().invoke(_cli(), ["build", str(onnx_artifact), "--precision", "fp16"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: building a TensorRT engine needs TensorRT")
    assert "JetPack" in lines[0] and "pypi.nvidia.com" in lines[0]


@pytest.mark.parametrize(("args", "expected"),
                         [(["--precision", "fp32"], "unknown engine precision 'fp32': choose fp16 or int8"),
                          (["--max-batch", "4", "--opt-batch", "8"], "--opt-batch must be between 1 and"),
                          (["--workspace", "0"], "--workspace must be at least 1 MB")])
def test_cli_refuses_bad_options_before_anything_else(onnx_artifact: Path, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(_cli(), ["build", str(onnx_artifact), *args])
    assert result.exit_code == 1
    assert expected in result.output


def test_cli_refuses_a_missing_or_wrong_artifact(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["build", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "does not exist" in result.output
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "model.engine").write_bytes(b"plan")
    write_manifest(engine, "engine", ["model.engine"])
    result = CliRunner().invoke(_cli(), ["build", str(engine)])
    assert result.exit_code == 1 and "is a 'engine' artifact, but a onnx is needed" in result.output
