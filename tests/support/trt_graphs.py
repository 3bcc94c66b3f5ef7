"""A tiny graph with the deployed graph's I/O contract, for the TensorRT tests (a plain module on
pytest's pythonpath): uint8 NHWC cells in, cast first, logits/probs/feature/mask_logits out, with a
LayerNormalization and a Softmax inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import write_manifest

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
FEATURE = 16
SPECS: list[tuple[str, list[str | int]]] = [
    ("logits", ["batch", len(CLASSES)]), ("probs", ["batch", len(CLASSES)]), ("feature", ["batch", FEATURE]),
    ("mask_logits", ["batch", 2, 56, 56])]


def contract_graph() -> Any:
    """A tiny FP32 onnx.ModelProto with the deployed graph's I/O contract (the cast comes first, as exported)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)

    def const(name: str, array: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="layout"),
        helper.make_node("Div", ["nchw", "scale"], ["unit"], name="scale"),
        helper.make_node("GlobalAveragePool", ["unit"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["feature"], name="fc1"),
        helper.make_node("LayerNormalization", ["feature", "ln_g", "ln_b"], ["normed"], axis=-1, name="norm"),
        helper.make_node("Gemm", ["normed", "w2", "b2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("AveragePool", ["unit"], ["small"], kernel_shape=[4, 4], strides=[4, 4], name="down"),
        helper.make_node("Conv", ["small", "wm", "bm"], ["mask_logits"], name="mask"),
    ]
    weights = [
        const("scale", np.array(255.0)), const("w1", rng.normal(size=(3, FEATURE)) * 4),
        const("b1", rng.normal(size=FEATURE)), const("ln_g", np.ones(FEATURE)), const("ln_b", np.zeros(FEATURE)),
        const("w2", rng.normal(size=(FEATURE, len(CLASSES)))), const("b2", np.zeros(len(CLASSES))),
        const("wm", rng.normal(size=(2, 3, 1, 1))), const("bm", np.array([0.5, -0.5])),
    ]
    graph = helper.make_graph(
        nodes, "dorl_tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in SPECS], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def write_onnx_artifact(model: Any, folder: Path, precision: str = "fp32") -> Path:
    """Write an ONNX model as an "onnx" artifact of `precision`."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    write_manifest(folder, "onnx", ["model.onnx"], precision=precision, class_names=CLASSES, image_size=224,
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
                   outputs=[{"name": n, "dtype": "float32", "shape": s} for n, s in SPECS])
    return folder
