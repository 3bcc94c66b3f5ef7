"""Q/DQ and CPU INT8 quantization, node groups and exclusions, on a small hand-built graph fed
with real cells (the TinyViT end to end is in tests/export/test_int8.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dorl.calibration.qdq import cell_reader, quantize_cpu, quantize_qdq
from dorl.calibration.sensitivity import (
    GroupSensitivity,
    excluded_nodes,
    group_of,
    module_path,
    node_groups,
    output_producers,
    sweep,
)
from dorl.export.parity import prepare_images, run_onnx


def _node(op: str, inputs: list[str], outputs: list[str], scope: str, **attrs: object) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, outputs, name=f"node_{outputs[0]}", **attrs)
    scopes = ["", "model"] + ([f"model.{scope}"] if scope else []) + [outputs[0]]
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
    return node


def _mini_dorl() -> onnx.ModelProto:
    """uint8 cells → patch Conv → token MatMul → LayerNorm → attention → pooled feature → head; mask MatMul."""
    rng = np.random.default_rng(0)
    weights = {"patch_w": rng.normal(0, 0.02, (8, 3, 16, 16)), "patch_b": np.zeros(8), "fc1": rng.normal(0, 0.3, (8, 16)),
               "gamma": np.ones(16), "beta": np.zeros(16), "head_w": rng.normal(0, 1, (16, 5)), "head_b": np.zeros(5),
               "mask_w": rng.normal(0, 1, (16, 2))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              {"tok_shape": [0, 8, 196], "mask_shape": [0, 2, 14, 14], "axes": [1]}.items()]
    nodes = [
        _node("Cast", ["images"], ["x"], "", to=TensorProto.FLOAT),
        _node("Transpose", ["x"], ["nchw"], "", perm=[0, 3, 1, 2]),
        _node("Conv", ["nchw", "patch_w", "patch_b"], ["patches"], "encoder.patch_embed", strides=[16, 16]),
        _node("Reshape", ["patches", "tok_shape"], ["flat"], "encoder"),
        _node("Transpose", ["flat"], ["tokens"], "encoder", perm=[0, 2, 1]),
        _node("MatMul", ["tokens", "fc1"], ["hidden"], "encoder.layers.0.mlp.fc1"),
        _node("LayerNormalization", ["hidden", "gamma", "beta"], ["normed"], "encoder.layers.0.norm", axis=-1),
        _node("Transpose", ["normed"], ["keys"], "encoder.layers.0.attn", perm=[0, 2, 1]),
        _node("MatMul", ["normed", "keys"], ["scores"], "encoder.layers.0.attn"),
        _node("Softmax", ["scores"], ["attn"], "encoder.layers.0.attn", axis=-1),
        _node("MatMul", ["attn", "normed"], ["mixed"], "encoder.layers.0.attn"),
        _node("ReduceMean", ["mixed", "axes"], ["feature"], "cae", keepdims=0),
        _node("Gemm", ["feature", "head_w", "head_b"], ["logits"], "head.fc"),
        _node("Softmax", ["logits"], ["probs"], "", axis=-1),
        _node("MatMul", ["mixed", "mask_w"], ["mask_tokens"], "mask_decoder"),
        _node("Transpose", ["mask_tokens"], ["mask_t"], "mask_decoder", perm=[0, 2, 1]),
        _node("Reshape", ["mask_t", "mask_shape"], ["mask_logits"], "mask_decoder"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
               (("logits", ["b", 5]), ("probs", ["b", 5]), ("feature", ["b", 16]), ("mask_logits", ["b", 2, 14, 14]))]
    graph = helper.make_graph(nodes, "mini", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", 224, 224, 3])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mini") / "model.onnx"
    onnx.save(_mini_dorl(), str(path))
    return path


def test_groups_follow_the_model_structure() -> None:
    model = _mini_dorl()
    assert module_path(model.graph.node[5]) == "encoder.layers.0.mlp.fc1"
    assert group_of("encoder.blocks.7.attn.qkv") == "encoder.blocks.7" and group_of("encoder.neck.0") == "encoder"
    assert group_of("mask_decoder.mask_decoder.transformer.layers.0") == "mask_decoder" and group_of("") == "other"
    assert node_groups(model) == {"encoder": ["node_patches"],
                                  "encoder.layers.0": ["node_hidden", "node_scores", "node_mixed"],
                                  "head": ["node_logits"], "mask_decoder": ["node_mask_tokens"]}


def test_default_exclusions_are_the_head_and_the_output_matmuls() -> None:
    model = _mini_dorl()
    assert output_producers(model) == ["node_logits", "node_mask_tokens"]
    assert excluded_nodes(model) == ["node_logits", "node_mask_tokens"]
    assert excluded_nodes(model, ["encoder.layers.*"]) == ["node_hidden", "node_scores", "node_mixed", "node_logits",
                                                            "node_mask_tokens"]
    assert "node_patches" in excluded_nodes(model, ["node_patch*"])


def test_cell_reader_feeds_real_cells_in_batches(cell_paths: list[Path]) -> None:
    reader = cell_reader([str(p) for p in cell_paths], 224, "images", batch=4)
    batches = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert [b["images"].shape for b in batches[:2]] == [(4, 224, 224, 3), (2, 224, 224, 3)] and batches[2] is None
    assert batches[0]["images"].dtype == np.uint8 and len(reader) == 2
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["images"], batches[0]["images"])


def test_qdq_is_symmetric_per_channel_and_leaves_exclusions_in_float(mini: Path, cell_paths: list[Path],
                                                                     tmp_path: Path) -> None:
    model = _mini_dorl()
    excluded = excluded_nodes(model)
    out = tmp_path / "qdq.onnx"
    quantize_qdq(mini, out, cell_reader([str(p) for p in cell_paths], 224, "images"), excluded)
    q = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    quants = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    dequants = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert quants and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in quants)
    assert all(not inits[n.input[2]].any() for n in dequants if len(n.input) > 2)
    weight_scales = [inits[n.input[1]] for n in dequants if n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert {s.size for s in weight_scales} >= {8, 16}  # one scale per output channel of the Conv and the MatMul
    producer = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.name in excluded:
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert producer[node.input[0]].op_type != "DequantizeLinear"
    cells = prepare_images([str(p) for p in cell_paths], 224)
    # static per-tensor activation ranges on this random-weight graph: cosine 0.957-0.973 on the six cells
    assert _min_cosine(run_onnx(mini, cells)["feature"], run_onnx(out, cells)["feature"]) > 0.95


def test_cpu_variant_quantizes_matmuls_dynamically(mini: Path, cell_paths: list[Path], tmp_path: Path) -> None:
    model = _mini_dorl()
    out = tmp_path / "cpu.onnx"
    quantize_cpu(mini, out, excluded_nodes(model))
    q = onnx.load(str(out))
    ops = {n.name: n.op_type for n in q.graph.node}
    assert "DynamicQuantizeLinear" in ops.values() and "QuantizeLinear" not in ops.values()
    assert ops["node_hidden_quant"] == "MatMulInteger"
    # the head (a Gemm, rewritten as MatMul + Add) and the mask matmul stay float
    assert ops["node_logits_MatMul"] == "MatMul" and ops["node_mask_tokens"] == "MatMul"
    cells = prepare_images([str(p) for p in cell_paths], 224)
    assert _min_cosine(run_onnx(mini, cells)["feature"], run_onnx(out, cells)["feature"]) > 0.97


def test_quantizer_advice_is_not_printed(mini: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        quantize_cpu(mini, tmp_path / "cpu.onnx", [])
    assert (tmp_path / "cpu.onnx").is_file()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    logging.getLogger().warning("Please consider pre-processing before quantization.")  # filter removed again
    assert [r for r in caplog.records if "pre-processing" in r.getMessage()]


def test_failed_gate_names_the_costliest_groups(mini: Path, wbc_dir: Path, tmp_path: Path) -> None:
    from dorl.artifacts import write_manifest
    from dorl.calibration.calibration_set import read_calibration_set, write_calibration_set
    from dorl.calibration.gate import GateError, gate_set
    from dorl.calibration.qdq import quantize_artifact

    artifact = tmp_path / "fp32"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(mini.read_bytes())
    write_manifest(artifact, "onnx", ["model.onnx"], precision="fp32", image_size=224,
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}])
    domains = {"pbc": wbc_dir / "pbc"}
    write_calibration_set(domains, tmp_path / "calibration", size=8, seed=0)
    calibration = read_calibration_set(tmp_path / "calibration")
    cells = [str(p) for p in sorted((wbc_dir / "pbc" / "neutrophil").iterdir())[-6:]]
    gate = gate_set(cells, ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"),
                    frozenset(c.sha256 for c in calibration.cells))
    with pytest.raises(GateError, match=r"Q/DQ \(TensorRT\) graph fails the accuracy gate.*needs 101%.*"
                                        r"cost the most when quantized alone: encoder"):
        quantize_artifact(artifact, tmp_path / "int8", calibration, gate, min_agreement=1.01)
    assert not (tmp_path / "int8").exists() and not (tmp_path / "int8-cpu").exists()
    assert sorted(p.name for p in artifact.iterdir()) == ["manifest.json", "manifest.sha256", "model.onnx"]  # nothing left beside it


def test_sweep_lists_the_worst_group_first() -> None:
    groups = {"encoder": ["a"], "cae": ["b", "c"], "head": ["d"]}
    scores = {"a": 0.99, "b": 0.9, "c": 0.9}
    result = sweep(groups, ["d"], lambda nodes: (min(scores[n] for n in nodes), 0.1))
    assert [r.group for r in result] == ["cae", "encoder"]
    assert result[0] == GroupSensitivity("cae", 2, 0.9, 0.1)
    assert "cae (2 nodes: 90.0% agreement" in result[0].describe()
