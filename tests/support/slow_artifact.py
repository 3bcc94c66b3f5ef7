"""A real ONNX artifact that takes a noticeable time per cell: for queueing, overload and timeout tests.

The graph honours the deployed contract's input (uint8 NHWC images) and head outputs (logits,
probs), and spends its time in a chain of 3x3 convolutions over the full 224x224 image (about 2 GFLOP
per cell), so a single cell keeps the inference thread busy for tens of milliseconds
on any CPU. ONNX Runtime cannot fold the chain away: every convolution depends on the input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dorl.artifacts import write_manifest

CLASS_NAMES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
IMAGE_SIZE, CHANNELS, DEPTH = 224, 32, 2


def build_slow_artifact(folder: Path, depth: int = DEPTH, seed: int = 0) -> Path:
    """Write model.onnx + manifest.json of the convolution-chain graph into `folder`; return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, k = CHANNELS, len(CLASS_NAMES)
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
             numpy_helper.from_array(rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(0, 1, (c, k)).astype(np.float32), "w_head"),
             numpy_helper.from_array(np.zeros(k, np.float32), "b_head")]
    nodes = [helper.make_node("Cast", ["images"], ["x_float"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x_float", "scale"], ["x"]),
             helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x_nchw", "w0"], ["h0"], pads=[1, 1, 1, 1])]
    for i in range(1, depth + 1):
        inits.append(numpy_helper.from_array(rng.normal(0, 1 / (3 * np.sqrt(c)), (c, c, 3, 3)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"h{i - 1}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Tanh", [f"c{i}"], [f"h{i}"]))
    nodes += [helper.make_node("ReduceMean", [f"h{depth}"], ["pooled"], axes=[2, 3], keepdims=0),
              helper.make_node("Gemm", ["pooled", "w_head", "b_head"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "slow_dorl",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", k]) for n in ("logits", "probs")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, "onnx", ["model.onnx"], precision="fp32", class_names=CLASS_NAMES, image_size=IMAGE_SIZE,
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]}],
                   outputs=[{"name": n, "dtype": "float32", "shape": ["batch", k]} for n in ("logits", "probs")],
                   config={"model": "slow-test-graph"}, source_bundle_sha256="0" * 64)
    return folder
