"""The INT8 + FP16 graph for TensorRT's strongly typed networks: FP16 between the Q/DQ pairs,
the fragile ops and the head in FP32, checked in ONNX Runtime against FP32 on real cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from int8_graphs import calibration_cells, fitted_biases, gate_cells, mini_dorl
from onnx import TensorProto

from dorl.contract import load_cells
from dorl.export.int8 import _beyond
from dorl.export.int8_fp16 import emulate_fp16_remainder, with_fp16_remainder
from dorl.export.int8_groups import excluded_nodes, head_nodes
from dorl.export.int8_ort import cell_reader, quantize_qdq
from dorl.export.int8_qdq import keep_float, qdq_facts, run_as_tensorrt
from dorl.export.parity import compare, prepare_images, run_onnx


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The FP32 graph, its Q/DQ graph, the INT8 + FP16 graph and its emulation, as files."""
    folder = tmp_path_factory.mktemp("int8fp16")
    paths = {name: folder / f"{name}.onnx" for name in ("fp32", "qdq", "fp16", "emulated")}
    fp32 = mini_dorl(fitted=fitted_biases())
    onnx.save(fp32, str(paths["fp32"]))
    quantize_qdq(paths["fp32"], paths["qdq"], cell_reader(load_cells(calibration_cells(), 224), "images"), excluded_nodes(fp32))
    qdq = keep_float(onnx.load(str(paths["qdq"])), fp32, _beyond(fp32, excluded_nodes(fp32)))
    onnx.save(qdq, str(paths["qdq"]))
    onnx.save(with_fp16_remainder(qdq, head_nodes(fp32)), str(paths["fp16"]))
    onnx.save(emulate_fp16_remainder(qdq, head_nodes(fp32)), str(paths["emulated"]))
    return paths


def test_fp16_between_the_qdq_pairs_fp32_where_fragile(graphs: dict[str, Path]) -> None:
    model = onnx.load(str(graphs["fp16"]))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19  # FP16 Q/DQ scales
    inits = {t.name: t for t in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dequantize and {inits[n.input[1]].data_type for n in dequantize} == {TensorProto.FLOAT16}
    typed = onnx.shape_inference.infer_shapes(model)
    values = list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMean") or node.name in head_nodes(model):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
        if node.op_type == "MatMul" and node.name in ("node_hidden", "node_wide", "node_cae_mlp"):
            assert types[node.input[0]] == TensorProto.FLOAT16, node.name
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("images", TensorProto.UINT8)]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {TensorProto.FLOAT}
    assert qdq_facts(model)["int32_dequantize_inputs"] == 0 and qdq_facts(model)["nonzero_zero_points"] == 0


def test_int8_fp16_graph_keeps_fp32_labels_and_masks(graphs: dict[str, Path]) -> None:
    cells = prepare_images(gate_cells()[::2], 224)
    reference = run_onnx(graphs["fp32"], cells)
    runtime = compare(reference, run_onnx(graphs["fp16"], cells))
    emulated = compare(reference, run_as_tensorrt(graphs["emulated"], cells))
    int8 = compare(reference, run_as_tensorrt(graphs["qdq"], cells))
    for report in (runtime, emulated):
        assert report.finite and report.top1_agreement >= 0.95 and report.mask_iou_mean > 0.9
    # FP16 rounding adds little to the INT8 error: the emulation stays near the FP32-remainder graph
    assert emulated.max_abs_diff["probs"] < 2 * int8.max_abs_diff["probs"] + 0.05
    assert abs(emulated.top1_agreement - int8.top1_agreement) <= 0.05
    assert np.isfinite(list(runtime.max_abs_diff.values())).all()
