"""The quantizers on the small graph fed with real bundled cells: ONNX Runtime's Q/DQ graph as
TensorRT takes it, the dynamic CPU graph, and Model Optimizer's Q/DQ graph (the TinyViT end to
end is in test_int8.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from int8_graphs import calibration_cells, fitted_biases, gate_cells, mini_dorl
from onnx import numpy_helper

from dorl.contract import load_cells
from dorl.errors import MissingDependencyError
from dorl.export.int8 import _beyond
from dorl.export.int8_groups import attention_matmuls, excluded_nodes
from dorl.export.int8_modelopt import quantize_modelopt, require_modelopt
from dorl.export.int8_ort import cell_reader, quantize_cpu, quantize_qdq
from dorl.export.int8_qdq import keep_float, qdq_facts, quantized_nodes, run_as_tensorrt
from dorl.export.parity import compare, prepare_images, run_onnx


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mini") / "model.onnx"
    onnx.save(mini_dorl(fitted=fitted_biases()), str(path))
    return path


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return prepare_images(gate_cells()[::3], 224)


@pytest.fixture(scope="module")
def ort_qdq(mini: Path) -> onnx.ModelProto:
    """ONNX Runtime's raw Q/DQ graph of the small graph (before dorl puts the float nodes back)."""
    out = mini.with_name("ort.onnx")
    quantize_qdq(mini, out, cell_reader(load_cells(calibration_cells(), 224), "images"), excluded_nodes(onnx.load(str(mini))))
    return onnx.load(str(out))


def test_ort_qdq_is_what_tensorrt_takes(mini: Path, ort_qdq: onnx.ModelProto, cells: np.ndarray,
                                        tmp_path: Path) -> None:
    fp32 = onnx.load(str(mini))
    facts = qdq_facts(ort_qdq)
    assert facts["int32_dequantize_inputs"] == 0  # QuantizeBias off: biases stay float
    assert facts["nonzero_zero_points"] == 0  # symmetric int8
    conv = next(n for n in ort_qdq.graph.node if n.op_type == "Conv")
    inits = {t.name: numpy_helper.to_array(t) for t in ort_qdq.graph.initializer}
    assert inits[conv.input[2]].dtype == np.float32  # the Conv's bias: a float initializer
    weight_scales = [inits[n.input[1]] for n in ort_qdq.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert {s.size for s in weight_scales} >= {8, 16}  # one scale per output channel
    # ONNX Runtime shares each activation's Q/DQ with every reader: the attention's Q·Kᵀ reads the
    # quantized copy of the tokens the V projection quantizes. dorl puts such readers back in float.
    assert facts["quantized_attention_matmuls"] == 1
    fixed = keep_float(ort_qdq, fp32, _beyond(fp32, excluded_nodes(fp32)))
    assert qdq_facts(fixed)["quantized_attention_matmuls"] == 0
    assert set(quantized_nodes(fixed)) == {"node_patches", "node_hidden", "node_hidden2", "node_values", "node_wide",
                                           "node_narrow", "node_cae_mlp", "node_mask_wide", "node_mask_hidden"}
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    report = compare(run_onnx(mini, cells), run_as_tensorrt(tmp_path / "fixed.onnx", cells))
    assert report.top1_agreement >= 0.95 and report.mask_iou_mean > 0.9


def test_unfused_qdq_follows_fp32_closer_than_the_cpu_integer_kernels(mini: Path, ort_qdq: onnx.ModelProto,
                                                                      cells: np.ndarray, tmp_path: Path) -> None:
    """What TensorRT computes (exact int8 products) is what the unfused Q/DQ pairs compute; ONNX
    Runtime's fused CPU kernels add their own 16-bit saturation on CPUs without VNNI."""
    fp32 = onnx.load(str(mini))
    onnx.save(keep_float(ort_qdq, fp32, _beyond(fp32, excluded_nodes(fp32))), str(tmp_path / "q.onnx"))
    reference = run_onnx(mini, cells)
    unfused = compare(reference, run_as_tensorrt(tmp_path / "q.onnx", cells)).max_abs_diff["feature"]
    fused = compare(reference, run_onnx(tmp_path / "q.onnx", cells)).max_abs_diff["feature"]
    assert 0 < unfused <= fused


def test_cpu_variant_quantizes_matmuls_dynamically_with_7_bit_weights(mini: Path, cells: np.ndarray,
                                                                      tmp_path: Path) -> None:
    model = onnx.load(str(mini))
    out = tmp_path / "cpu.onnx"
    quantize_cpu(mini, out, excluded_nodes(model))
    q = onnx.load(str(out))
    ops = {n.name: n.op_type for n in q.graph.node}
    assert "DynamicQuantizeLinear" in ops.values() and "QuantizeLinear" not in ops.values()
    assert ops["node_hidden_quant"] == "MatMulInteger"
    # the head (a Gemm, rewritten as MatMul + Add), the mask's output matmul and attention stay float
    assert ops["node_logits_MatMul"] == "MatMul" and ops["node_mask_tokens"] == "MatMul"
    assert {ops[n] for n in attention_matmuls(model)} == {"MatMul"}
    weights = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert weights and max(int(np.abs(w).max()) for w in weights.values()) <= 64  # 7 bits
    report = compare(run_onnx(mini, cells), run_onnx(out, cells))
    assert report.top1_agreement >= 0.95 and report.mask_iou_mean > 0.9


def test_quantizer_advice_is_not_printed(mini: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        quantize_cpu(mini, tmp_path / "cpu.onnx", [])
    assert (tmp_path / "cpu.onnx").is_file()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    logging.getLogger().warning("Please consider pre-processing before quantization.")  # filter removed again
    assert [r for r in caplog.records if "pre-processing" in r.getMessage()]


def test_modelopt_qdq_is_what_tensorrt_takes(mini: Path, cells: np.ndarray, tmp_path: Path) -> None:
    fp32 = onnx.load(str(mini))
    out = tmp_path / "modelopt.onnx"
    quantize_modelopt(mini, out, load_cells(calibration_cells(), 224), "images", excluded_nodes(fp32))
    q = onnx.load(str(out))
    facts = qdq_facts(q)
    assert facts["qdq_nodes"] > 0 and facts["int32_dequantize_inputs"] == 0 and facts["nonzero_zero_points"] == 0
    assert facts["quantized_attention_matmuls"] == 0
    assert not set(quantized_nodes(q)) & set(excluded_nodes(fp32))
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays dynamic
    report = compare(run_onnx(mini, cells), run_as_tensorrt(out, cells))
    assert report.top1_agreement >= 0.95 and report.mask_iou_mean > 0.9


def test_missing_modelopt_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from dorl.export import int8_modelopt

    monkeypatch.setattr(int8_modelopt, "is_available", lambda module: module != "onnxslim")
    with pytest.raises(MissingDependencyError, match=r"onnxslim is not installed: run `pip install 'dorl\[modelopt\]'`"
                                                     r" \(not nvidia-modelopt\[onnx\]"):
        require_modelopt()
