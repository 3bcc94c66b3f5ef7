"""TensorRT's ONNX parser rules, checked on the CPU: real exports pass, and a small graph built to
break each rule fails with that rule (and the node) named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the compatibility check reads graphs with onnx (export extra)")
from onnx import TensorProto, helper, numpy_helper

from dorl.artifacts import read_manifest
from dorl.export.trt_compat import RULES, TensorRTCompatError, check_file, check_model, require_compatible
from dorl.export.trt_operators import MATRIX, TARGETS


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact's graph (tests/support/tiny_artifact.py): Cast first, Gemm, Conv, Softmax."""
    from tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny") / "tiny").folder / "model.onnx"


def _model(nodes: list, inputs: list, outputs: list, inits: list = (), opset: int = 18):  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "case", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def _value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:  # type: ignore[type-arg]
    return helper.make_tensor_value_info(name, elem, shape)


def _rules(model) -> set[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return {(v.rule, v.node, v.target) for v in check_model(model).violations}


IMAGES = _value("images", TensorProto.UINT8, ["batch", 8, 8, 3])
OUT = _value("out", TensorProto.FLOAT, ["batch", 3, 8, 8])


# -- real graphs pass ------------------------------------------------------------------------------
def test_tiny_artifact_graph_passes(tiny_graph: Path) -> None:
    report = check_file(tiny_graph)
    assert report.passed and report.rules == RULES and report.targets == TARGETS
    assert report.nodes == 10 and report.opset == 17


def test_real_fp32_export_records_a_passing_report(tinyvit_fp32: Path) -> None:
    manifest = read_manifest(tinyvit_fp32, "onnx")
    compat = manifest["tensorrt_compatibility"]
    assert compat["passed"] and compat["violations"] == [] and compat["targets"] == list(TARGETS)
    assert compat["nodes"] == manifest["graph"]["nodes"] > 500
    model = onnx.load(str(tinyvit_fp32 / "model.onnx"))
    first = [n for n in model.graph.node if "images" in n.input]
    assert sorted(n.op_type for n in first) in (["Cast"], ["Cast", "Shape"])  # the cast comes before any layout change


def test_real_fp16_graph_passes(tinyvit_fp32: Path) -> None:
    from dorl.export.fp16 import convert_to_fp16

    fp16 = convert_to_fp16(onnx.load(str(tinyvit_fp32 / "model.onnx")))
    report = check_model(fp16)
    assert report.passed, [v.describe() for v in report.violations[:3]]


def test_qdq_graph_passes_without_int32_biases_and_names_them_with(tiny_graph: Path, tmp_path: Path) -> None:
    """ONNX Runtime's Q/DQ quantizer on a real graph: its default quantizes Conv/Gemm biases to INT32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"images": rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)} for _ in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    def quantize(path: Path, bias: bool) -> Path:
        quantize_static(str(tiny_graph), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Gemm", "Conv"], activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": bias})
        return path

    assert check_file(quantize(tmp_path / "no_bias.onnx", bias=False)).passed
    report = check_file(quantize(tmp_path / "bias.onnx", bias=True))
    assert {v.rule for v in report.violations} == {"dequantize-input"}
    assert {v.target for v in report.violations} == set(TARGETS)
    assert {v.node for v in report.violations} == {"b_feature_DequantizeLinear", "b_head_DequantizeLinear",
                                                   "b_mask_DequantizeLinear"}
    assert "is INT32; TensorRT dequantizes only FP8, INT4, INT8" in report.violations[0].message


# -- each rule, broken on purpose -------------------------------------------------------------------
def test_transpose_of_the_uint8_input_breaks_uint8_boundary() -> None:
    model = _model([helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2], name="layout"),
                    helper.make_node("Cast", ["nchw"], ["out"], to=TensorProto.FLOAT, name="cast")],
                   [IMAGES], [OUT])
    violations = check_model(model).violations
    # (the matrix lists no UINT8 for Transpose either)
    assert {(v.rule, v.node) for v in violations} == {("uint8-boundary", "layout"), ("operator-types", "layout")}
    messages = [v.message for v in violations]
    assert any("makes UINT8 tensor 'nchw', which is not a graph output" in m for m in messages)
    assert any("consumes the UINT8 graph input 'images'" in m for m in messages)


def test_uint8_intermediate_from_a_cast_breaks_uint8_boundary() -> None:
    model = _model([helper.make_node("Cast", ["x"], ["u8"], to=TensorProto.UINT8, name="to_u8"),
                    helper.make_node("Cast", ["u8"], ["y"], to=TensorProto.FLOAT, name="back")],
                   [_value("x", TensorProto.FLOAT, [4])], [_value("y", TensorProto.FLOAT, [4])])
    assert _rules(model) == {("uint8-boundary", "to_u8", "all")}


def test_uint8_output_and_shape_of_the_input_are_allowed() -> None:
    model = _model([helper.make_node("Shape", ["images"], ["shape"], name="shape"),
                    helper.make_node("Cast", ["images"], ["out"], to=TensorProto.FLOAT, name="cast"),
                    helper.make_node("Cast", ["out"], ["back"], to=TensorProto.UINT8, name="to_output")],
                   [IMAGES], [_value("out", TensorProto.FLOAT, ["batch", 8, 8, 3]),
                              _value("back", TensorProto.UINT8, ["batch", 8, 8, 3]),
                              _value("shape", TensorProto.INT64, [4])])
    assert check_model(model).passed


def _dq(x: np.ndarray, zero: np.ndarray | None, name: str = "dq") -> onnx.ModelProto:
    inits = [numpy_helper.from_array(x, "x"), numpy_helper.from_array(np.array(0.5, np.float32), "scale")]
    inputs = ["x", "scale"]
    if zero is not None:
        inits.append(numpy_helper.from_array(zero, "zero"))
        inputs.append("zero")
    return _model([helper.make_node("DequantizeLinear", inputs, ["y"], name=name)], [],
                  [_value("y", TensorProto.FLOAT, list(x.shape))], inits)


def test_int32_dequantize_input_breaks_dequantize_input() -> None:
    assert _rules(_dq(np.arange(4, dtype=np.int32), None, "bias_dq")) == {
        ("dequantize-input", "bias_dq", "10.3"), ("dequantize-input", "bias_dq", "11")}
    assert check_model(_dq(np.arange(4, dtype=np.int8), np.array(0, np.int8))).passed


def test_nonzero_or_computed_zero_point_breaks_zero_point() -> None:
    assert _rules(_dq(np.arange(4, dtype=np.int8), np.array(3, np.int8), "shifted")) == {
        ("zero-point", "shifted", "all")}
    computed = _model([helper.make_node("DequantizeLinear", ["x", "scale", "zero"], ["y"], name="dq")],
                      [_value("zero", TensorProto.INT8, [])], [_value("y", TensorProto.FLOAT, [4])],
                      [numpy_helper.from_array(np.arange(4, dtype=np.int8), "x"),
                       numpy_helper.from_array(np.array(0.5, np.float32), "scale")])
    violations = check_model(computed).violations
    assert [(v.rule, v.node) for v in violations] == [("zero-point", "dq")] and "not a constant" in violations[0].message


def test_unsupported_operators_break_operator_per_release() -> None:
    x = _value("x", TensorProto.FLOAT, [1, 4])
    integer = _model([helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="mmi")],
                     [_value("a", TensorProto.INT8, [2, 3]), _value("b", TensorProto.INT8, [3, 2])],
                     [_value("y", TensorProto.INT32, [2, 2])])
    assert _rules(integer) == {("operator", "mmi", "10.3"), ("operator", "mmi", "11")}
    window = _model([helper.make_node("HannWindow", ["n"], ["y"], name="hann")],
                    [_value("n", TensorProto.INT64, [])], [_value("y", TensorProto.FLOAT, [None])])
    assert _rules(window) == {("operator", "hann", "10.3")}  # added in TensorRT 10.4: fine on 11
    custom = helper.make_model(helper.make_graph([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft",
                                                                   name="ms")], "g", [x], [x]),
                               opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    violations = check_model(custom).violations
    assert {(v.rule, v.node) for v in violations} == {("operator", "ms")}
    assert "of domain 'com.microsoft'" in violations[0].message


def test_types_outside_the_matrix_break_operator_types() -> None:
    model = _model([helper.make_node("Pow", ["a", "b"], ["y"], name="int_pow")],
                   [_value("a", TensorProto.INT64, [3]), _value("b", TensorProto.INT64, [3])],
                   [_value("y", TensorProto.INT64, [3])])
    assert _rules(model) == {("operator-types", "int_pow", "10.3")}  # INT64 Pow arrives with TensorRT 10.15
    matmul = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="int_matmul")],
                    [_value("a", TensorProto.INT32, [2, 3]), _value("b", TensorProto.INT32, [3, 2])],
                    [_value("y", TensorProto.INT32, [2, 2])])
    violations = check_model(matmul).violations
    assert {(v.rule, v.target) for v in violations} == {("operator-types", "10.3"), ("operator-types", "11")}
    assert "tensor 'a' is INT32; the matrix lists MatMul for BF16, FP16, FP32" in violations[0].message


def test_require_compatible_names_node_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(_dq(np.arange(4, dtype=np.int32), None, "bias_dq"), str(path))
    with pytest.raises(TensorRTCompatError, match=r"node 'bias_dq' \(DequantizeLinear\) breaks dequantize-input for "
                                                  r"TensorRT 10.3: its input 'x' is INT32"):
        require_compatible(path, "the test graph")


def test_matrix_holds_what_the_deployed_graph_uses() -> None:
    used = {"Add", "Cast", "Concat", "Conv", "ConvTranspose", "Cos", "Div", "Erf", "Expand", "Gather", "GatherND",
            "Gemm", "LayerNormalization", "MatMul", "Mul", "Pad", "Pow", "ReduceMean", "Relu", "Reshape", "Shape",
            "Sin", "Slice", "Softmax", "Split", "Sqrt", "Sub", "Transpose", "Unsqueeze", "QuantizeLinear",
            "DequantizeLinear"}
    for target in TARGETS:
        assert used <= set(MATRIX[target]), target
    assert MATRIX["10.3"]["DequantizeLinear"] == frozenset({"INT8", "FP8", "INT4"})
    assert MATRIX["11"]["DequantizeLinear"] == frozenset({"INT8", "FP8", "FP4", "INT4"})
    assert "UINT8" in MATRIX["10.3"]["Cast"] and "HannWindow" not in MATRIX["10.3"]
