"""Editing and describing Q/DQ graphs: nodes put back in float after quantization, and graph facts.

Quantizing once and then removing the Q/DQ in front of chosen nodes gives every candidate graph
of the sensitivity sweep and of the automatic float selection from one calibration, whichever
quantizer made the graph. A node put back in float reads the tensor its quantized input came
from: an activation's Q input, or the FP32 graph's weight where the quantizer stored int8 weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np

from dorl.export.int8_groups import attention_matmuls, producers

Q, DQ = "QuantizeLinear", "DequantizeLinear"


def keep_float(qdq: Any, fp32: Any, nodes: Iterable[str]) -> Any:
    """A copy of the Q/DQ graph `qdq` in which `nodes` read float inputs again.

    Args:
        qdq: the quantized onnx.ModelProto (node names as in `fp32`).
        fp32: the FP32 onnx.ModelProto it was quantized from (for weights stored as int8).
        nodes: node names to put back in float.

    Returns:
        The new onnx.ModelProto; Q/DQ nodes and initializers nothing reads any more are removed.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    wanted = set(nodes)
    producer = producers(model)
    inits = {t.name for t in model.graph.initializer}
    originals = {n.name: n for n in fp32.graph.node if n.name in wanted}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != DQ:
                continue
            quantized = producer.get(dq.input[0])
            if quantized is not None and quantized.op_type == Q:
                node.input[i] = quantized.input[0]  # a float activation or a float weight
            else:  # an int8 weight: the FP32 graph's own tensor
                node.input[i] = originals[node.name].input[i]
                if node.input[i] not in inits:
                    model.graph.initializer.append(fp32_inits[node.input[i]])
                    inits.add(node.input[i])
    _prune(model)
    return model


def _prune(model: Any) -> None:
    """Remove Q/DQ nodes whose outputs nothing reads, then initializers nothing reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = Counter(i for n in model.graph.node for i in n.input)
        dead = [n for n in model.graph.node
                if n.op_type in (Q, DQ) and not any(read[o] or o in outputs for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = Counter(i for n in model.graph.node for i in n.input)
    unused = [t for t in model.graph.initializer if not read[t.name]]
    for tensor in unused:
        model.graph.initializer.remove(tensor)


def quantized_nodes(model: Any) -> list[str]:
    """Names of the non-Q/DQ nodes that read at least one DequantizeLinear output."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return [n.name for n in model.graph.node
            if n.op_type not in (Q, DQ) and any(producer.get(i) == DQ for i in n.input)]


def qdq_facts(model: Any) -> dict[str, Any]:
    """What an INT8 manifest records about a Q/DQ graph, and what TensorRT requires of it.

    Returns:
        qdq_nodes (Q + DQ count), quantized_nodes (by op type), int32_dequantize_inputs (TensorRT
        accepts only INT8/FP8/INT4), nonzero_zero_points, quantized_attention_matmuls (both 0
        for a graph TensorRT takes as dorl means it).
    """
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    producer = producers(model)
    ops = Counter(n.op_type for n in model.graph.node)
    kinds = {n.name: n.op_type for n in model.graph.node}
    int32 = nonzero = 0
    for node in model.graph.node:
        if node.op_type == DQ and _elem_type(node.input[0], inits, producer) == onnx.TensorProto.INT32:
            int32 += 1
        if node.op_type in (Q, DQ) and len(node.input) > 2 and node.input[2]:
            zero_point = inits.get(node.input[2])
            if zero_point is None or np.any(onnx.numpy_helper.to_array(zero_point)):
                nonzero += 1
    quantized = quantized_nodes(model)
    return {
        "qdq_nodes": ops[Q] + ops[DQ],
        "quantized_nodes": dict(Counter(kinds[n] for n in quantized)),
        "int32_dequantize_inputs": int32,
        "nonzero_zero_points": nonzero,
        "quantized_attention_matmuls": len(set(quantized) & set(attention_matmuls(model))),
    }


def _elem_type(name: str, inits: dict[str, Any], producer: dict[str, Any]) -> int | None:
    """Element type of a DequantizeLinear input: an initializer's, or the int type its Q makes."""
    if name in inits:
        return int(inits[name].data_type)
    node = producer.get(name)
    if node is None or node.op_type != Q:
        return None
    if len(node.input) > 2 and node.input[2] in inits:
        return int(inits[node.input[2]].data_type)
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return int(attr.i)
    import onnx

    return int(onnx.TensorProto.UINT8)  # QuantizeLinear's default output without a zero point


def run_as_tensorrt(path: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run a Q/DQ graph in ONNX Runtime (CPU) computing what TensorRT computes (see `tensorrt_session`)."""
    return tensorrt_infer(path)(images)


def tensorrt_infer(path: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One `tensorrt_session` of a Q/DQ graph, as a function of uint8 images."""
    from dorl.export.parity import run_session

    return partial(run_session, tensorrt_session(path))


def tensorrt_session(path: Any) -> Any:
    """An ONNX Runtime CPU session of a Q/DQ graph computing what TensorRT computes: every Q/DQ pair
    rounds its tensor to int8, and the products are exact.

    ONNX Runtime's default CPU session fuses Q/DQ into integer kernels that, on x86 CPUs without
    VNNI, saturate 16-bit intermediate sums (u8 × s8 pairs): measured on the TinyViT model, logits
    drifted 3× further from FP32 than with the pairs left unfused. TensorRT's int8 kernels
    accumulate in int32, which the unfused pairs match.
    """
    from dorl.deps import require

    ort = require("onnxruntime", "running a Q/DQ graph")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
