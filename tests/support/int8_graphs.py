"""Small hand-built DoRL-shaped ONNX graphs for the INT8 tests, with the exporter's module scopes.

uint8 cells → patch Conv → two residual encoder blocks (MLP matmuls, LayerNorm, attention) → a
residual CAE matmul → pooled feature → head; the mask decoder's matmuls read the patch tokens. Knobs make one part of the
graph fragile on purpose:
- `outlier`: block 1's first matmul makes one channel `outlier` times larger than the rest, and
  its second matmul ignores that channel. In float nothing changes; quantized, the one int8 scale
  of that activation is set by the outlier, and the other channels round to a few levels.
- `mask_outlier`: the same trap in the mask decoder's two matmuls, which only the mask reads: its
  masks drift while the labels stay.
- `fp16_hazard`: the CAE block's output is multiplied by it and divided by it again (a power of
  two: exact in FP32 and in the Q/DQ graph, whose Muls stay FP32); in an FP16 remainder the
  product overflows to infinity, so only the INT8 + FP16 twin breaks.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
SAMPLE = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "sample"


def sample_cells(domain: str) -> list[str]:
    """The bundled real cells of one lab (<class>/<image>), sorted."""
    return sorted(str(p) for p in (SAMPLE / domain).glob("*/*") if p.parent.name in CLASSES)


def _node(op: str, inputs: list[str], outputs: list[str], scope: str, **attrs: object) -> onnx.NodeProto:
    node = helper.make_node(op, inputs, outputs, name=f"node_{outputs[0]}", **attrs)
    scopes = ["", "model"] + ([f"model.{scope}"] if scope else []) + [outputs[0]]
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
    return node


def _trap(rng: np.random.Generator, outlier: float) -> tuple[np.ndarray, np.ndarray]:
    """Two 16×16 weights: the first makes channel 0 `outlier` times larger, the second ignores it."""
    first, second = rng.normal(0, 0.3, (16, 16)), rng.normal(0, 0.3, (16, 16))
    first[:, 0] *= outlier
    second[0, :] = 0.0
    return first, second


def _weights(outlier: float, mask_outlier: float, fitted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w3, w4 = _trap(rng, outlier)
    m1, m2 = _trap(rng, mask_outlier)
    m1 = m1[:8]  # the mask decoder reads the 8-channel patch tokens
    mask = rng.normal(0, 1, (16, 1))
    return {
        "patch_w": rng.normal(0, 0.002, (8, 3, 16, 16)), "patch_b": rng.normal(0, 0.1, 8),
        "fc1": rng.normal(0, 0.3, (8, 16)), "fc2": rng.normal(0, 0.3, (16, 16)), "wv": rng.normal(0, 0.3, (16, 16)),
        "gamma": np.ones(16), "beta": np.zeros(16), "w3": w3, "w4": w4, "cae_w": rng.normal(0, 0.3, (16, 16)),
        "head_w": rng.normal(0, 1, (16, 5)), "head_b": np.zeros(5),
        "m1": m1, "m2": m2, "mask_w": np.concatenate([mask, -mask], axis=1), "mask_b": np.zeros(2),
    } | fitted


def mini_dorl(outlier: float = 1.0, mask_outlier: float = 1.0,
              fitted: dict[str, np.ndarray] | None = None, fp16_hazard: float = 1.0) -> onnx.ModelProto:
    """The graph (opset 18, dynamic batch); see the module docstring for the knobs and `fit`."""
    weights = _weights(outlier, mask_outlier, fitted or {})
    if fp16_hazard != 1.0:
        weights |= {"hazard_up": np.array(fp16_hazard), "hazard_down": np.array(1.0 / fp16_hazard)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
              {"tok_shape": [0, 8, 196], "mask_shape": [0, 2, 14, 14], "axes": [1]}.items()]
    b0, b1 = "encoder.layers.0.blocks.0", "encoder.layers.0.blocks.1"
    nodes = [
        _node("Cast", ["images"], ["x"], "", to=TensorProto.FLOAT),
        _node("Transpose", ["x"], ["nchw"], "", perm=[0, 3, 1, 2]),
        _node("Conv", ["nchw", "patch_w", "patch_b"], ["patches"], "encoder.patch_embed", strides=[16, 16]),
        _node("Reshape", ["patches", "tok_shape"], ["flat"], "encoder"),
        _node("Transpose", ["flat"], ["tokens"], "encoder", perm=[0, 2, 1]),
        _node("MatMul", ["tokens", "fc1"], ["hidden"], f"{b0}.mlp.fc1"),
        _node("MatMul", ["hidden", "fc2"], ["hidden2"], f"{b0}.mlp.fc2"),
        _node("LayerNormalization", ["hidden2", "gamma", "beta"], ["normed"], f"{b0}.norm", axis=-1),
        _node("Transpose", ["normed"], ["keys"], f"{b0}.attn", perm=[0, 2, 1]),
        _node("MatMul", ["normed", "keys"], ["scores"], f"{b0}.attn"),
        _node("Softmax", ["scores"], ["attn"], f"{b0}.attn", axis=-1),
        _node("MatMul", ["normed", "wv"], ["values"], f"{b0}.attn.v"),
        _node("MatMul", ["attn", "values"], ["attended"], f"{b0}.attn"),
        _node("Add", ["hidden2", "attended"], ["mixed"], b0),
        _node("MatMul", ["mixed", "w3"], ["wide"], f"{b1}.mlp.fc1"),
        _node("MatMul", ["wide", "w4"], ["narrow"], f"{b1}.mlp.fc2"),
        _node("Add", ["mixed", "narrow"], ["block1"], b1),
        _node("MatMul", ["block1", "cae_w"], ["cae_mlp"], "cae.blocks.0.mlp"),
        *([_node("Mul", ["cae_mlp", "hazard_up"], ["cae_up"], "cae.blocks.0.scale"),
           _node("Mul", ["cae_up", "hazard_down"], ["cae_back"], "cae.blocks.0.scale")] if fp16_hazard != 1.0 else []),
        _node("Add", ["block1", "cae_back" if fp16_hazard != 1.0 else "cae_mlp"], ["cae_tokens"], "cae.blocks.0"),
        _node("ReduceMean", ["cae_tokens", "axes"], ["feature"], "cae", keepdims=0),
        _node("Gemm", ["feature", "head_w", "head_b"], ["logits"], "head.fc"),
        _node("Softmax", ["logits"], ["probs"], "", axis=-1),
        _node("MatMul", ["tokens", "m1"], ["mask_wide"], "mask_decoder.transformer"),
        _node("MatMul", ["mask_wide", "m2"], ["mask_hidden"], "mask_decoder.transformer"),
        _node("MatMul", ["mask_hidden", "mask_w"], ["mask_tokens"], "mask_decoder.output"),
        _node("Add", ["mask_tokens", "mask_b"], ["mask_biased"], "mask_decoder.output"),
        _node("Transpose", ["mask_biased"], ["mask_t"], "mask_decoder", perm=[0, 2, 1]),
        _node("Reshape", ["mask_t", "mask_shape"], ["mask_logits"], "mask_decoder"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
               (("logits", ["b", 5]), ("probs", ["b", 5]), ("feature", ["b", 16]), ("mask_logits", ["b", 2, 14, 14]))]
    graph = helper.make_graph(nodes, "mini", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                            ["b", 224, 224, 3])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def calibration_cells() -> list[str]:
    """Every 8th bundled cell of both labs (17 cells)."""
    return (sample_cells("pbc") + sample_cells("bccd"))[::8]


def gate_cells() -> list[str]:
    """The other bundled cells of both labs (114), labelled by their folder."""
    return [c for i, c in enumerate(sample_cells("pbc") + sample_cells("bccd")) if i % 8]


@functools.cache
def fitted_biases() -> dict[str, np.ndarray]:
    """`fit` on the calibration cells, once per session."""
    from dorl.export.parity import prepare_images

    cells = calibration_cells()
    with tempfile.TemporaryDirectory() as tmp:
        return fit(prepare_images(cells, 224), [Path(c).parts[-3] == "bccd" for c in cells], Path(tmp) / "raw.onnx")


def fit(cells: np.ndarray, second_lab: list[bool], scratch: Path) -> dict[str, np.ndarray]:
    """A head and a mask bias that make the random graph behave like a trained one on `cells`.

    The head reads the feature along the direction from one lab's mean to the other's, scaled so
    the labs sit at -1 and +1, and names the class whose centre (-2, -1, 0, 1, 2) is nearest: the
    labels have wide margins, as a trained head's do, instead of cutting through the cells. The
    mask bias puts half of the pixels on each side. The knobs do not change FP32 outputs, so one
    fit serves every variant.
    """
    from dorl.export.parity import run_onnx

    onnx.save(mini_dorl(), str(scratch))
    out = run_onnx(scratch, cells)
    labs = np.asarray(second_lab)
    first, second = out["feature"][~labs].mean(axis=0), out["feature"][labs].mean(axis=0)
    direction = (second - first) / (float(np.sum((second - first) ** 2)) / 2)
    centres, gain = np.arange(-2.0, 3.0), 4.0
    head_w = gain * np.outer(direction, centres)
    head_b = -gain * ((first + second) / 2 @ direction * centres + centres**2 / 2)
    margin = out["mask_logits"][:, 1] - out["mask_logits"][:, 0]
    return {"head_w": head_w, "head_b": head_b, "mask_b": np.array([0.0, -float(np.median(margin))])}


def write_fp32_artifact(model: onnx.ModelProto, folder: Path) -> Path:
    """Save `model` as an FP32 "onnx" artifact folder (model.onnx + manifest) and return the folder."""
    from dorl.artifacts import write_manifest

    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, "onnx", ["model.onnx"], precision="fp32", image_size=224, class_names=list(CLASSES),
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}])
    return folder
