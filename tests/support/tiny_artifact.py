"""A tiny but real ONNX artifact honouring the deployed graph's contract (a plain module on
pytest's pythonpath, so any test can `from tiny_artifact import build_tiny_artifact`).

The graph: uint8 NHWC images -> Cast -> /255 -> (a) mean colour -> Gemm -> Tanh = feature [B, 8]
-> Gemm = logits [B, 5] -> Softmax = probs; (b) NCHW -> 4x4 AveragePool -> 1x1 Conv = mask_logits
[B, 2, 56, 56], whose cell channel fires where the image is darker than mid-grey (a stained cell
on a pale background). `TinyArtifact.reference` computes the same graph in numpy.

`COMMITTED` holds `build_tiny_artifact(COMMITTED)` in git (2 kB), so runtime tests and `dorl predict`
run where the onnx package is absent (Python 3.10, base + onnxruntime); a test keeps it equal to
what the generator writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dorl.artifacts import write_manifest

CLASS_NAMES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
IMAGE_SIZE, FEATURE_DIM = 224, 8
COMMITTED = Path(__file__).resolve().parent / "tiny-artifact"


@dataclass
class TinyArtifact:
    folder: Path
    class_names: list[str]
    w_feature: np.ndarray  # [3, D]
    b_feature: np.ndarray  # [D]
    w_head: np.ndarray  # [D, C]
    b_head: np.ndarray  # [C]

    def reference(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for uint8 [B, 224, 224, 3] images, computed in numpy (float64)."""
        x = images.astype(np.float64) / 255.0
        feature = np.tanh(x.mean(axis=(1, 2)) @ self.w_feature + self.b_feature)
        logits = feature @ self.w_head + self.b_head
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        b, s = images.shape[0], IMAGE_SIZE // 4
        grey = x.reshape(b, s, 4, s, 4, 3).mean(axis=(2, 4)).mean(axis=-1)  # [B, 56, 56]
        mask_logits = np.stack([grey - 0.5, 0.5 - grey], axis=1)
        return {"logits": logits, "probs": exp / exp.sum(axis=1, keepdims=True), "feature": feature,
                "mask_logits": mask_logits}


def tiny_weights(folder: Path, seed: int = 0) -> TinyArtifact:
    """The TinyArtifact `build_tiny_artifact(folder, seed)` writes (its weights come from `seed`; numpy only)."""
    rng = np.random.default_rng(seed)
    c = len(CLASS_NAMES)
    return TinyArtifact(
        folder=folder,
        class_names=list(CLASS_NAMES),
        w_feature=rng.normal(0, 3, (3, FEATURE_DIM)).astype(np.float32),
        b_feature=rng.normal(0, 1, FEATURE_DIM).astype(np.float32),
        w_head=rng.normal(0, 2, (FEATURE_DIM, c)).astype(np.float32),
        b_head=rng.normal(0, 0.5, c).astype(np.float32),
    )


def build_tiny_artifact(folder: Path, seed: int = 0, precision: str = "fp32") -> TinyArtifact:
    """Write model.onnx and manifest.json for the tiny graph into `folder`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = len(CLASS_NAMES)
    art = tiny_weights(folder, seed)
    third = np.full((1, 3, 1, 1), 1 / 3, np.float32)
    inits = [
        numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
        numpy_helper.from_array(art.w_feature, "w_feature"),
        numpy_helper.from_array(art.b_feature, "b_feature"),
        numpy_helper.from_array(art.w_head, "w_head"),
        numpy_helper.from_array(art.b_head, "b_head"),
        numpy_helper.from_array(np.concatenate([third, -third]), "w_mask"),
        numpy_helper.from_array(np.array([-0.5, 0.5], np.float32), "b_mask"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x_float", "scale"], ["x"]),
        helper.make_node("ReduceMean", ["x"], ["colour"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["colour", "w_feature", "b_feature"], ["pre_feature"]),
        helper.make_node("Tanh", ["pre_feature"], ["feature"]),
        helper.make_node("Gemm", ["feature", "w_head", "b_head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["pooled", "w_mask", "b_mask"], ["mask_logits"]),
    ]
    s = IMAGE_SIZE // 4
    outputs = [("logits", [c]), ("probs", [c]), ("feature", [FEATURE_DIM]), ("mask_logits", [2, s, s])]
    graph = helper.make_graph(
        nodes,
        "tiny_dorl",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", IMAGE_SIZE, IMAGE_SIZE, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *dims]) for n, dims in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(
        folder,
        "onnx",
        ["model.onnx"],
        precision=precision,
        class_names=art.class_names,
        image_size=IMAGE_SIZE,
        inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]}],
        outputs=[{"name": n, "dtype": "float32", "shape": ["batch", *dims]} for n, dims in outputs],
        config={"model": "tiny-test-graph"},
        versions={"onnx": onnx.__version__},
        source_bundle_sha256="0" * 64,
    )
    return art
