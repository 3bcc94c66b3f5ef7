"""Q/DQ graph surgery and facts: nodes put back in float read exactly their FP32 inputs, and the
facts catch what TensorRT rejects (INT32 dequantize inputs, non-zero zero points)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from int8_graphs import calibration_cells, gate_cells, mini_dorl
from onnx import TensorProto, helper, numpy_helper

from dorl.contract import load_cells
from dorl.export.int8_groups import excluded_nodes
from dorl.export.int8_ort import cell_reader, quantize_qdq
from dorl.export.int8_qdq import keep_float, qdq_facts, quantized_nodes, run_as_tensorrt
from dorl.export.parity import prepare_images, run_onnx


def test_keep_float_restores_fp32_exactly_and_prunes_what_nothing_reads(tmp_path: Path) -> None:
    fp32 = mini_dorl()
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))
    quantize_qdq(tmp_path / "fp32.onnx", tmp_path / "q.onnx", cell_reader(load_cells(calibration_cells()[:4], 224), "images"),
                 excluded_nodes(fp32))
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    every = quantized_nodes(qdq)
    restored = keep_float(qdq, fp32, every)
    assert quantized_nodes(restored) == [] and qdq_facts(restored)["qdq_nodes"] == 0
    assert {t.name for t in restored.graph.initializer} <= {t.name for t in fp32.graph.initializer}
    onnx.save(restored, str(tmp_path / "restored.onnx"))
    cells = prepare_images(gate_cells()[:4], 224)
    expected, got = run_onnx(tmp_path / "fp32.onnx", cells), run_as_tensorrt(tmp_path / "restored.onnx", cells)
    assert all(np.array_equal(expected[name], got[name]) for name in expected)
    partly = keep_float(qdq, fp32, ["node_wide"])
    assert set(quantized_nodes(partly)) == set(every) - {"node_wide"}
    assert len(qdq.graph.node) == len(onnx.load(str(tmp_path / "q.onnx")).graph.node)  # the input is not modified


def _dequantize_graph(x_type: int, zero_point: int) -> onnx.ModelProto:
    x = numpy_helper.from_array(np.array([1, 2], dtype=helper.tensor_dtype_to_np_dtype(x_type)), "x")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(zero_point, dtype=helper.tensor_dtype_to_np_dtype(x_type)), "zp")
    nodes = [helper.make_node("DequantizeLinear", ["x", "scale", "zp"], ["w"]),
             helper.make_node("Mul", ["a", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [x, scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_facts_catch_int32_biases_and_asymmetric_zero_points() -> None:
    assert qdq_facts(_dequantize_graph(TensorProto.INT8, 0))["int32_dequantize_inputs"] == 0
    int32 = qdq_facts(_dequantize_graph(TensorProto.INT32, 0))  # what QuantizeBias on writes for a bias
    assert int32["int32_dequantize_inputs"] == 1 and int32["qdq_nodes"] == 1 and int32["quantized_nodes"] == {"Mul": 1}
    assert qdq_facts(_dequantize_graph(TensorProto.INT8, 3))["nonzero_zero_points"] == 1
