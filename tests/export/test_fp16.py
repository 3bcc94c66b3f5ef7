"""The FP16 graph: LayerNorm/Softmax/reductions kept in FP32, I/O unchanged, and a check that
catches an FP16 overflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError
from dorl.export.fp16 import FP32_OPS, emulate_fp16, export_fp16
from dorl.export.onnx_export import export_onnx
from dorl.export.parity import (
    FP16_MIN_AGREEMENT,
    FP16_TIE_MARGIN,
    ParityError,
    check_reduced,
    compare,
    run_onnx,
)


def test_fp16_artifact_agrees_with_fp32(tinyvit_fp16: Path, tinyvit_fp32: Path) -> None:
    manifest = read_manifest(tinyvit_fp16, "onnx")
    fp32 = read_manifest(tinyvit_fp32, "onnx")
    assert manifest["precision"] == "fp16"
    assert manifest["inputs"] == fp32["inputs"] and manifest["outputs"] == fp32["outputs"]
    assert manifest["source_fp32_sha256"] == fp32["files"]["model.onnx"]["sha256"]
    parity = manifest["parity"]
    assert parity["images"] == 24 and parity["finite"]
    assert parity["top1_agreement"] >= FP16_MIN_AGREEMENT
    assert parity["max_abs_diff"]["probs"] < 0.02
    size = manifest["files"]["model.onnx"]["bytes"]
    assert size < 0.6 * fp32["files"]["model.onnx"]["bytes"]  # FP16 weights


def test_fp16_is_derived_from_fp32_only(tinyvit_fp16: Path, cell_paths: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="derive FP16 from the FP32 export"):
        export_fp16(tinyvit_fp16, tmp_path / "again", cell_paths)


def test_fp16_graph_pins_norms_to_fp32_and_keeps_io(tinyvit_fp16: Path, cell_batch: np.ndarray) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tinyvit_fp16 / "model.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert norms and all(types[n.input[0]] == TensorProto.FLOAT for n in norms)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert sum(types.get(n.output[0]) == TensorProto.FLOAT16 for n in matmuls) > 0.8 * len(matmuls)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    out = run_onnx(tinyvit_fp16 / "model.onnx", cell_batch[:2])
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


def test_fp32_export_of_another_bundle_is_refused(tinyvit_fp32: Path, cell_paths: list[Path], tmp_path: Path) -> None:
    from dorl.bundle import save_bundle
    from dorl.config import ModelConfig
    from dorl.models.registry import build_model

    other = tmp_path / "other"
    save_bundle(build_model(ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)), other)
    with pytest.raises(ArtifactError, match="not an FP32 export of this bundle"):
        export_onnx(other, tmp_path / "fp16", "fp16", images=cell_paths, fp32_artifact=tinyvit_fp32)
    assert not (tmp_path / "fp16").exists()


def test_near_ties_may_flip_decisive_cells_may_not() -> None:
    probs = np.array([[0.51, 0.47, 0.02], [0.9, 0.05, 0.05]] * 100, dtype=np.float32)
    near_tie_flipped = probs.copy()
    near_tie_flipped[0] = [0.48, 0.50, 0.02]  # FP32 margin 0.04 < FP16_TIE_MARGIN
    report = compare({"probs": probs}, {"probs": near_tie_flipped}, FP16_TIE_MARGIN)
    assert report.top1_mismatches == 1 and report.near_ties == 1 and report.decisive_agreement == 1.0
    check_reduced(report, "fp16", FP16_MIN_AGREEMENT)
    decisive_flipped = probs.copy()
    decisive_flipped[1:4:2] = [0.05, 0.9, 0.05]  # two cells FP32 was sure of
    with pytest.raises(ParityError, match=r"99\.00% of 200 cells.*0 near ties"):
        check_reduced(compare({"probs": probs}, {"probs": decisive_flipped}, FP16_TIE_MARGIN), "fp16",
                      FP16_MIN_AGREEMENT)


def _norm_graph(scale: float, decomposed: bool) -> onnx.ModelProto:
    """x [B,16] → ×scale → LayerNorm (one node, or ReduceMean/Pow/Sqrt pieces) → MatMul → Softmax."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "scale"),
             numpy_helper.from_array(rng.normal(size=(16, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(16, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["h"])]
    if decomposed:
        nodes += [helper.make_node("ReduceMean", ["h", "axes"], ["mu"]), helper.make_node("Sub", ["h", "mu"], ["d"]),
                  helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2", "axes"], ["var"]),
                  helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["d", "sd"], ["n"])]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1))
    nodes += [helper.make_node("MatMul", ["n", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 16])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["b", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _check(model: onnx.ModelProto, tmp_path: Path, fp32_ops: tuple[str, ...]) -> None:
    x = np.random.default_rng(1).normal(size=(200, 16)).astype(np.float32)
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    onnx.save(emulate_fp16(model, fp32_ops), str(tmp_path / "fp16.onnx"))
    report = compare(run_onnx(tmp_path / "fp32.onnx", x), run_onnx(tmp_path / "fp16.onnx", x), FP16_TIE_MARGIN)
    check_reduced(report, "fp16", FP16_MIN_AGREEMENT)


def test_check_catches_activations_past_fp16_range_before_a_layernorm(tmp_path: Path) -> None:
    # |x| * 3e4 passes 65504: infinities reach the (unblocked) LayerNorm, which returns NaN.
    _check(_norm_graph(10.0, decomposed=False), tmp_path, fp32_ops=())
    with pytest.raises(ParityError, match="NaN or Inf"):
        _check(_norm_graph(3e4, decomposed=False), tmp_path, fp32_ops=())


def test_fp32_pinning_saves_a_decomposed_layernorm_from_overflow(tmp_path: Path) -> None:
    # Activations of up to ~±450 fit FP16 and so does their variance (~2e4), but their squares (~2e5)
    # do not: the variance becomes Inf unless Pow and ReduceMean stay in FP32.
    model = _norm_graph(150.0, decomposed=True)
    with pytest.raises(ParityError, match="NaN or Inf|top-1 agrees"):
        _check(model, tmp_path, fp32_ops=())
    _check(model, tmp_path, fp32_ops=FP32_OPS)
