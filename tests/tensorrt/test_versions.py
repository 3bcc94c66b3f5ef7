"""What differs between TensorRT releases: one pure function of the version, and the build plans it
leads to, for the releases dorl targets (10.3 = JetPack 6, 10.13 = JetPack 7.0/7.1, 11.x)."""

from __future__ import annotations

import pytest

from dorl.errors import ArtifactError, ConfigError
from dorl.export.fp16 import FP32_OPS
from dorl.tensorrt.builder import FP32_LAYER_KINDS
from dorl.tensorrt.plan import BuildPlan, plan_build
from dorl.tensorrt.versions import TensorRTVersion, tensorrt_features, trt_major

RELEASES = ("10.3.0.30", "10.13.3.9", "11.0.0.114", "11.4.0.7")


def test_versions_keep_all_four_parts() -> None:
    assert TensorRTVersion.parse("10.3.0.30") == TensorRTVersion(10, 3, 0, 30)
    assert str(TensorRTVersion.parse("11.0")) == "11.0.0.0"
    assert TensorRTVersion.parse("10.13.3.9") > TensorRTVersion.parse("10.3.0.30")
    assert TensorRTVersion.parse("10.3.0.30") != TensorRTVersion.parse("10.3.0.26")
    assert trt_major("11.4.0.7") == 11
    with pytest.raises(ConfigError, match="'ten' is not a TensorRT version"):
        TensorRTVersion.parse("ten")


@pytest.mark.parametrize(("version", "weak", "flags", "calibrators", "matrix"), [
    ("10.3.0.30", True, True, True, "10.3"),  # JetPack 6
    ("10.13.3.9", False, True, True, "10.3"),  # JetPack 7.0/7.1: weak typing deprecated since 10.12
    ("11.0.0.114", False, False, False, "11"),  # JetPack 7.2.2: flags and calibrators removed
    ("11.4.0.7", False, False, False, "11"),
])
def test_features_per_release(version: str, weak: bool, flags: bool, calibrators: bool, matrix: str) -> None:
    features = tensorrt_features(version)
    assert (features.weak_typing, features.precision_flags, features.calibrators) == (weak, flags, calibrators)
    assert features.strongly_typed_only is (not weak)
    assert features.strongly_typed_flag is flags  # 11 builds every network strongly typed, the flag is ignored
    assert features.onnx_matrix == matrix


def test_old_tensorrt_is_refused() -> None:
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old"):
        tensorrt_features("8.6.1")


# -- build plans ----------------------------------------------------------------------------------------
def plan(version: str, precision: str, onnx_precision: str, calibration: bool = False) -> BuildPlan:
    return plan_build(tensorrt_features(version), precision, onnx_precision, calibration, FP32_OPS)


@pytest.mark.parametrize("version", RELEASES)
def test_fp16_engine_from_the_fp16_graph_is_strongly_typed_everywhere(version: str) -> None:
    assert plan(version, "fp16", "fp16") == BuildPlan(strongly_typed=True)


def test_trt10_3_fp16_from_the_fp32_graph_pins_the_fp16_graphs_fp32_ops() -> None:
    result = plan("10.3.0.30", "fp16", "fp32")
    assert result == BuildPlan(strongly_typed=False, flags=("FP16", "OBEY_PRECISION_CONSTRAINTS"), fp32_ops=FP32_OPS)
    assert {"LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Sin", "Cos"} <= set(result.fp32_ops)


def test_every_fp32_op_of_the_fp16_graph_maps_to_a_tensorrt_layer() -> None:
    assert set(FP32_OPS) <= set(FP32_LAYER_KINDS)


def test_trt10_3_int8_from_qdq_graph_is_explicit_quantization_without_precision_constraints() -> None:
    result = plan("10.3.0.30", "int8", "int8")
    assert result == BuildPlan(strongly_typed=False, flags=("INT8", "FP16"))
    assert "OBEY_PRECISION_CONSTRAINTS" not in result.flags and not result.calibrate


@pytest.mark.parametrize("version", RELEASES[1:])
def test_int8_from_qdq_graph_is_strongly_typed_from_10_12(version: str) -> None:
    assert plan(version, "int8", "int8") == BuildPlan(strongly_typed=True)


@pytest.mark.parametrize("version", RELEASES[1:])
def test_fp32_graph_cannot_make_an_fp16_engine_once_weak_typing_is_gone(version: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan(version, "fp16", "fp32")
    message = str(info.value)
    assert "strongly typed networks only (an FP16 engine needs the FP16 graph" in message
    assert "`dorl export <bundle> --precision fp16`" in message
    assert ("deprecates weak typing" if version.startswith("10.") else "has no precision flags") in message


@pytest.mark.parametrize("version", RELEASES[:2])
def test_trt10_legacy_calibration_from_the_fp32_graph(version: str) -> None:
    with pytest.raises(ConfigError, match=r"`dorl export <bundle> --precision int8`"):
        plan(version, "int8", "fp32")
    result = plan(version, "int8", "fp32", calibration=True)
    assert result.calibrate and "INT8" in result.flags and result.fp32_ops == FP32_OPS


@pytest.mark.parametrize("version", RELEASES[2:])
def test_trt11_has_no_calibrators(version: str) -> None:
    with pytest.raises(ConfigError, match="an INT8 engine needs the Q/DQ graph"):
        plan(version, "int8", "fp32", calibration=True)


@pytest.mark.parametrize("version", RELEASES)
def test_graph_and_engine_precision_must_fit(version: str) -> None:
    with pytest.raises(ConfigError, match="build it with --precision int8"):
        plan(version, "fp16", "int8")
    with pytest.raises(ConfigError, match="cannot be built from the FP16 graph"):
        plan(version, "int8", "fp16")
    with pytest.raises(ArtifactError, match="unknown precision 'bf16'"):
        plan(version, "fp16", "bf16")
