"""FLOPs of hand-built graphs equal the textbook formulas; the matmul peak is a finite rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dorl.benchmarks.flops import count_flops, matmul_peak_gflops

onnx = pytest.importorskip("onnx", reason="counting FLOPs reads ONNX graphs")
from onnx import TensorProto, helper, numpy_helper


def graph(nodes: list, inputs: list, output: tuple[str, list], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A one-output model; inputs are (name, shape) with "batch" as the dynamic dimension."""
    model = helper.make_model(
        helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
            [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_gemm_with_transposed_weight() -> None:
    k, n = 48, 20
    model = graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], [("x", ["batch", k])],
                  ("y", ["batch", n]), {"w": np.zeros((n, k)), "b": np.zeros(n)})
    count = count_flops(model, batch=3)
    assert count.per_cell == 2 * k * n
    assert count.total == 3 * 2 * k * n and count.by_op == {"Gemm": 3 * 2 * k * n}


def test_batched_matmul_and_elementwise_note() -> None:
    heads, m, k, n = 4, 14, 32, 10
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    model = graph(nodes, [("x", ["batch", heads, m, k])], ("y", ["batch", heads, m, n]), {"w": np.zeros((k, n))})
    count = count_flops(model)
    assert count.per_cell == 2 * heads * m * n * k
    assert count.elementwise == heads * m * n  # the Relu, noted but not in the total


def test_grouped_strided_conv() -> None:
    c_in, c_out, groups, kernel, size = 8, 12, 4, 3, 15
    out = (size + 2 * 1 - kernel) // 2 + 1  # pad 1, stride 2
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=[2, 2], pads=[1, 1, 1, 1])
    model = graph([node], [("x", ["batch", c_in, size, size])], ("y", ["batch", c_out, out, out]),
                  {"w": np.zeros((c_out, c_in // groups, kernel, kernel))})
    assert count_flops(model).per_cell == 2 * c_out * out * out * (c_in // groups) * kernel * kernel


def test_conv_transpose_counts_input_positions() -> None:
    c_in, c_out, kernel, size = 6, 4, 2, 7
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = graph([node], [("x", ["batch", c_in, size, size])], ("y", ["batch", c_out, 2 * size, 2 * size]),
                  {"w": np.zeros((c_in, c_out, kernel, kernel))})
    assert count_flops(model).per_cell == 2 * c_in * size * size * c_out * kernel * kernel


def test_einsum_attention_scores() -> None:
    heads, q, d = 2, 9, 16
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bhqd,bhkd->bhqk")
    model = graph([node], [("a", ["batch", heads, q, d]), ("b", ["batch", heads, q, d])],
                  ("y", ["batch", heads, q, q]), {})
    assert count_flops(model).per_cell == 2 * heads * q * q * d


def test_dynamic_int8_matmul_counts_like_float(tmp_path) -> None:
    quantization = pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime's quantizer")
    k, n = 64, 32
    model = graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", ["batch", 5, k])], ("y", ["batch", 5, n]),
                  {"w": np.random.default_rng(0).normal(size=(k, n))})
    onnx.save(model, tmp_path / "fp32.onnx")
    quantization.quantize_dynamic(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", weight_type=quantization.QuantType.QInt8)
    count = count_flops(tmp_path / "int8.onnx")
    assert "MatMulInteger" in count.by_op and count.per_cell == 2 * 5 * k * n


def test_tiny_artifact_graph(tiny_artifact_path) -> None:
    count = count_flops(tiny_artifact_path / "model.onnx")
    gemms = 2 * (3 * 8 + 8 * 5)  # colour -> feature, feature -> logits
    conv = 2 * (2 * 56 * 56) * 3  # 1x1 conv, 3 -> 2 channels at 56x56
    assert count.per_cell == gemms + conv and not count.unresolved


def test_matmul_peak_is_a_positive_rate() -> None:
    peak = matmul_peak_gflops(size=128, repeats=2, threads=1)
    assert math.isfinite(peak["gflops"]) and peak["gflops"] > 0
    assert peak["engine"] in ("onnxruntime", "numpy") and peak["size"] == 128


@pytest.fixture(scope="module")
def tiny_artifact_path(tmp_path_factory: pytest.TempPathFactory):
    from tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("flops") / "tiny").folder
