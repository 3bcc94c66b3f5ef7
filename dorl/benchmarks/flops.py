"""FLOPs of one cell counted from the ONNX graph, and this machine's matrix-multiply peak.

After ONNX shape inference with the batch fixed, every MatMul-like node (MatMul, Gemm, Einsum and
their integer/quantized/fused forms) counts 2·M·N·K and every convolution 2·MACs
(Conv: out elements · Cin/group · kernel; ConvTranspose: in elements · Cout/group · kernel). The
rest (adds, softmax, LayerNorm, GELU, ...) is not in the total; `elementwise` counts their
output elements as a rough note. The peak is a large float32 MatMul timed in ONNX Runtime with
the benchmark's thread count (numpy where onnxruntime is absent): efficiency = achieved / peak.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# op type -> (index of A, index of B); K is read from A's last dim (second-to-last if transA)
MATMUL_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
              "MatMulIntegerToFloat": (0, 1), "DynamicQuantizeMatMul": (0, 1), "FusedMatMul": (0, 1),
              "QGemm": (0, 3)}
CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "FusedConv": (0, 1)}
STRUCTURAL_OPS = {"Reshape", "Transpose", "Shape", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze",
                  "Constant", "ConstantOfShape", "Identity", "Cast", "Flatten", "Split", "Expand",
                  "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Range", "Pad"}


@dataclass
class FlopCount:
    """FLOPs of a graph at a fixed batch."""

    batch: int
    total: int = 0  # 2·MACs of matmuls and convolutions
    by_op: dict[str, int] = field(default_factory=dict)
    elementwise: int = 0  # output elements of the other compute ops, not in `total`
    unresolved: list[str] = field(default_factory=list)  # nodes whose shapes could not be inferred

    @property
    def per_cell(self) -> float:
        return self.total / self.batch

    def add(self, op: str, flops: int) -> None:
        self.total += flops
        self.by_op[op] = self.by_op.get(op, 0) + flops

    def to_dict(self) -> dict[str, Any]:
        return {"flops_per_cell": self.per_cell, "by_op_per_cell": {k: v / self.batch for k, v in self.by_op.items()},
                "elementwise_elements_per_cell": self.elementwise / self.batch,
                "unresolved_nodes": self.unresolved[:20], "unresolved_count": len(self.unresolved),
                "note": "2*MACs of MatMul/Gemm/Einsum/Conv/ConvTranspose; elementwise ops not included"}


def count_flops(model: Any, batch: int = 1) -> FlopCount:
    """Count the FLOPs of an ONNX graph for `batch` cells.

    Args:
        model: an onnx.ModelProto or the path of a .onnx file (weights are not read).
        batch: the value given to every symbolic input dimension.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    model = _with_batch(model, batch)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _shape_map(inferred.graph)
    count = FlopCount(batch=batch)
    for node in inferred.graph.node:
        _count_node(node, shapes, count)
    return count


def _with_batch(model: Any, batch: int) -> Any:
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    return fixed


def _shape_map(graph: Any) -> dict[str, tuple[int, ...] | None]:
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        known = tensor.HasField("shape") and all(d >= 0 for d in dims)
        shapes[value.name] = tuple(dims) if known else None
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _count_node(node: Any, shapes: dict[str, tuple[int, ...] | None], count: FlopCount) -> None:
    op = node.op_type
    if op in STRUCTURAL_OPS:
        return
    ins = [shapes.get(name) if name else None for name in node.input]
    out = shapes.get(node.output[0]) if node.output else None
    flops = _node_flops(node, ins, out)
    if flops is None:
        if op in MATMUL_OPS or op in CONV_OPS or op in ("ConvTranspose", "Einsum"):
            count.unresolved.append(node.name or op)
        elif out is not None:
            count.elementwise += math.prod(out)
        return
    count.add(op, flops)


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_flops(node: Any, ins: list[tuple[int, ...] | None], out: tuple[int, ...] | None) -> int | None:
    op = node.op_type
    if op in MATMUL_OPS:
        a = ins[MATMUL_OPS[op][0]] if len(ins) > MATMUL_OPS[op][0] else None
        if a is None or out is None:
            return None
        k = a[0] if len(a) == 1 else (a[-2] if _attr(node, "transA", 0) else a[-1])
        return 2 * math.prod(out) * k
    if op in CONV_OPS:
        w = ins[CONV_OPS[op][1]] if len(ins) > CONV_OPS[op][1] else None
        return None if w is None or out is None else 2 * math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = ins[0], ins[1]
        return None if x is None or w is None else 2 * math.prod(x) * math.prod(w[1:])
    if op == "Einsum":
        equation = _attr(node, "equation", "")
        return _einsum_flops(equation.decode() if isinstance(equation, bytes) else str(equation), ins)
    return None


def _einsum_flops(equation: str, ins: list[tuple[int, ...] | None]) -> int | None:
    """2 × the product of every index's size (a two-operand contraction); None if unknown."""
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if "..." in lhs or len(terms) != len(ins) or any(s is None for s in ins):
        return None
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, ins):
        if shape is None or len(term) != len(shape):
            return None
        sizes.update(zip(term, shape))
    return 2 * math.prod(sizes.values())


def matmul_peak_gflops(size: int = 1536, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """This machine's float32 matrix-multiply rate: the best of `repeats` [size×size]·[size×size] runs.

    Returns:
        {"gflops": float, "size": int, "engine": "onnxruntime" | "numpy", "threads": threads}
    """
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    run, engine = _ort_matmul(size, threads), "onnxruntime"
    if run is None:
        run, engine = (lambda: a @ a), "numpy"
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * size**3 / best / 1e9, "size": size, "engine": engine, "threads": threads}


def _ort_matmul(size: int, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])
    y = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["c"])], "peak", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)}
    return lambda: session.run(None, feed)


def add_efficiency(results: Sequence[dict[str, Any]], peak_gflops: float) -> None:
    """Per batch: achieved GFLOP/s (FLOPs per cell × cells/s) and its share of the matmul peak.

    A configuration without its own count (an engine whose graph is gone) borrows the FP32
    graph's: the network is the same. For INT8 the float32 peak is a yardstick, not a ceiling.
    """
    counted = [r["flops"]["flops_per_cell"] for r in results if r.get("flops")]
    fallback = counted[0] if counted else None
    for result in results:
        flops = (result.get("flops") or {}).get("flops_per_cell", fallback)
        for row in result.get("batches", []):
            if row["status"] == "ok" and flops:
                row["achieved_gflops"] = flops * row["throughput_cells_s"] / 1e9
                row["efficiency"] = row["achieved_gflops"] / peak_gflops
