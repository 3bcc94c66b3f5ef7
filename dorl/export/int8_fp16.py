"""The INT8 + FP16 graph for TensorRT's strongly typed networks (TensorRT 11 has no other kind).

A strongly typed network runs every tensor in the type the graph gives it, so the float
remainder of a Q/DQ graph would run in FP32 and INT8 would be slower than FP16. Here that
remainder is cast to FP16 the way the FP16 artifact is (AutoCast-style: the FP16-fragile ops,
LayerNorm, Softmax, reductions, Pow/Sqrt of the decomposed LayerNorm2d, Sin/Cos, stay FP32, and
so does the classifier head, a few hundred multiply-adds), with FP16 scales, so each DequantizeLinear yields FP16 directly. FP16 scales on Q/DQ need
opset 19.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dorl.export.fp16 import FP32_OPS, convert_to_fp16, emulate_fp16

MIN_OPSET = 19


def with_opset(model: Any, opset: int = MIN_OPSET) -> Any:
    """A copy of `model` declaring at least `opset`.

    From 18 to 19 ONNX only widened types (FP16 scales for Q/DQ, float8, a `saturate` attribute
    whose default changes nothing for these types) and added Resize/Pad modes the graph does not
    use, so the nodes stay as they are.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for entry in copy.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < opset:
            entry.version = opset
    return copy


def with_fp16_remainder(qdq: Any, fp32_nodes: Iterable[str] = (), fp32_ops: Iterable[str] = FP32_OPS) -> Any:
    """The INT8 + FP16 copy of a Q/DQ graph (its inputs and outputs keep their types).

    Args:
        fp32_nodes: nodes kept in FP32 besides `fp32_ops` (the head: its folded scaler subtracts
            the feature mean, which FP16 rounding of a large mean would swamp).
    """
    return convert_to_fp16(with_opset(qdq), fp32_ops, fp32_nodes)


def emulate_fp16_remainder(qdq: Any, fp32_nodes: Iterable[str] = (), fp32_ops: Iterable[str] = FP32_OPS) -> Any:
    """An FP32 graph that computes what `with_fp16_remainder` stores (see `fp16.emulate_fp16`)."""
    return emulate_fp16(with_opset(qdq), fp32_ops, fp32_nodes)
