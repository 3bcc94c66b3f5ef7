"""Which nodes of the graph INT8 may touch: node groups, nodes always kept float, and their cost.

The dynamo exporter records each node's PyTorch module path (`pkg.torch.onnx.name_scopes`), so
nodes group by the model's own structure: one group per transformer block (`encoder.blocks.7`,
`encoder.layers.2.blocks.3`, `cae.blocks.0`, `mask_decoder.mask_decoder.transformer.layers.1`),
the rest of a stage (`encoder.layers.2`), and otherwise the top-level module (`encoder`, `cae`,
`mask_decoder`, `head`). The sensitivity sweep quantizes one group at a time; the automatic
selection keeps whole groups in float.

Some matmuls stay float in every INT8 graph, as NVIDIA's Model Optimizer places Q/DQ for
TensorRT: the attention products (Q·Kᵀ and softmax·V, the MatMuls whose both inputs are
activations), the head, and the matmuls that make a graph output.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError

QUANT_OPS = ("MatMul", "Gemm", "Conv")
# Never quantized (not in QUANT_OPS); named in the manifest so the choice is visible.
FLOAT_OPS = ("LayerNormalization", "Softmax")
# Module patterns kept in float by default: the classifier head decides the label from a few
# hundred numbers, where INT8 rounding moves the decision most.
DEFAULT_EXCLUDE = ("head", "head.*")
BLOCK_LISTS = ("layers", "blocks")  # TinyViT stages and blocks, SAM ViT blocks, CAE blocks, decoder layers
PASS_THROUGH = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Softmax", "Cast")
CONSTANT_OPS = ("Constant", "ConstantOfShape")
BIAS_OPS = ("Add", "Sub", "Mul", "Div")  # with one constant input, a bias or scale after a matmul
_BLOCK = re.compile(rf"^(.*\.(?:{'|'.join(BLOCK_LISTS)})\.\d+)(?:\.|$)")


def module_path(node: Any) -> str:
    """The PyTorch module a node came from ('' for exporter-made nodes), without the wrapper's prefix."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return ""
    modules = [s for s in scopes[:-1] if s]  # the last scope is the op itself
    path = modules[-1] if modules else ""
    return path.removeprefix("model.")


def group_of(path: str) -> str:
    """The group of a module path: its innermost numbered block, else its top-level module."""
    found = _BLOCK.match(path)
    if found:
        return found.group(1)
    return path.split(".")[0] or "other"


def quantizable_nodes(model: Any) -> dict[str, str]:
    """Name -> module path of every MatMul/Gemm/Conv node of an ONNX model."""
    return {n.name: module_path(n) for n in model.graph.node if n.op_type in QUANT_OPS}


def group_assignment(model: Any) -> dict[str, str]:
    """Node name -> group, for every node; a block with a single MatMul/Gemm/Conv joins its parent's group.

    (A numbered list of single Linear layers, like the mask decoder's hypernetwork MLPs, is not a
    list of blocks.)
    """
    raw = {n.name: group_of(module_path(n)) for n in model.graph.node}
    sizes = Counter(raw[n.name] for n in model.graph.node if n.op_type in QUANT_OPS)

    def settle(group: str) -> str:
        while sizes[group] < 2 and _BLOCK.match(group):
            group = group_of(group.rsplit(".", 2)[0])
        return group

    return {name: settle(group) for name, group in raw.items()}


def node_groups(model: Any, ops: Iterable[str] | None = QUANT_OPS) -> dict[str, list[str]]:
    """Group -> names of its nodes of `ops` (None: every node), in graph order."""
    assignment = group_assignment(model)
    wanted = None if ops is None else set(ops)
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if wanted is None or node.op_type in wanted:
            groups.setdefault(assignment[node.name], []).append(node.name)
    return groups


def constant_tensors(model: Any) -> set[str]:
    """Tensors whose value is fixed when the graph is built: initializers and what only they feed."""
    constants = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # topological order
        inputs = [i for i in node.input if i]
        if node.op_type in CONSTANT_OPS or (inputs and all(i in constants for i in inputs)):
            constants.update(node.output)
    return constants


def attention_matmuls(model: Any) -> list[str]:
    """MatMuls whose both inputs are activations: Q·Kᵀ and softmax·V of every attention.

    TensorRT runs these in its fused attention kernels in FP16; Model Optimizer leaves them
    unquantized, and so does dorl.
    """
    constants = constant_tensors(model)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input[:2])]


def producers(model: Any) -> dict[str, Any]:
    """Tensor name -> the node that makes it."""
    return {out: node for node in model.graph.node for out in node.output}


def output_producers(model: Any) -> list[str]:
    """The quantizable nodes that make a graph output (through reshapes, casts, Softmax and
    bias-like Add/Mul with a constant).

    These are the last matmuls: the head's, and the mask decoder's hypernetwork × upscaled
    embedding product that makes `mask_logits`.
    """
    producer = producers(model)
    constants = constant_tensors(model)
    found = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and _passes_through(node, constants):
            node = producer.get(next(i for i in node.input if i not in constants))
        if node is not None and node.op_type in QUANT_OPS and node.name not in found:
            found.append(node.name)
    return found


def _passes_through(node: Any, constants: set[str]) -> bool:
    if node.op_type in PASS_THROUGH:
        return True
    variable = [i for i in node.input if i and i not in constants]
    return node.op_type in BIAS_OPS and len(variable) == 1


def matching_nodes(model: Any, patterns: Iterable[str]) -> list[str]:
    """Quantizable nodes whose name, module path or group matches a shell-style pattern."""
    patterns = tuple(patterns)
    chosen = []
    for name, path in quantizable_nodes(model).items():
        keys = (name, path, group_of(path))
        if any(fnmatch.fnmatchcase(key, pattern) for key in keys for pattern in patterns):
            chosen.append(name)
    return chosen


def upstream_nodes(model: Any, output: str) -> frozenset[str]:
    """The nodes `output` depends on (empty if the graph has no such output)."""
    producer = producers(model)
    seen: set[str] = set()
    todo = [output] if output in {o.name for o in model.graph.output} else []
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(node.input)
    return frozenset(seen)


def head_nodes(model: Any) -> list[str]:
    """Every node (any op) of the classifier head's modules (DEFAULT_EXCLUDE)."""
    return [n.name for n in model.graph.node
            if any(fnmatch.fnmatchcase(module_path(n), pattern) for pattern in DEFAULT_EXCLUDE)]


def excluded_nodes(model: Any, patterns: Iterable[str] = ()) -> list[str]:
    """Quantizable nodes kept in float: output producers, the head, attention matmuls and `patterns`.

    Raises:
        ConfigError: a pattern matches no quantizable node (a typo would quietly quantize what it
            meant to keep), or the patterns leave nothing to quantize.
    """
    patterns = tuple(patterns)
    for pattern in patterns:
        if not matching_nodes(model, (pattern,)):
            raise ConfigError(f"--exclude {pattern!r} matches no quantizable node: check its spelling against the "
                              "groups the export prints (e.g. 'encoder.layers.0*', 'cae*').")
    chosen = set(output_producers(model)) | set(attention_matmuls(model))
    chosen |= set(matching_nodes(model, tuple(DEFAULT_EXCLUDE) + patterns))
    if patterns and not set(quantizable_nodes(model)) - chosen:
        raise ConfigError(f"--exclude {', '.join(map(repr, patterns))} keeps every quantizable node in float, so the "
                          "graph would hold no INT8 at all: exclude less, or export FP16.")
    return [n.name for n in model.graph.node if n.name in chosen]


def node_macs(model: Any, image: np.ndarray, scratch: Path) -> dict[str, float]:
    """Multiply-accumulates per image of every MatMul/Gemm/Conv, read off one real run.

    The graph's shapes are symbolic (reshapes computed at run time), so the shapes come from
    running it once on `image` (uint8 [1,S,S,3]) in ONNX Runtime with each node's tensors exposed.

    Args:
        model: the FP32 onnx.ModelProto (not modified).
        scratch: a file path for the exposed copy.
    """
    import onnx

    from dorl.export.fp16 import save_model
    from dorl.export.parity import run_onnx

    nodes = [n for n in model.graph.node if n.op_type in QUANT_OPS]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    known = {o.name for o in exposed.graph.output}
    for name in {t for n in nodes for t in (n.input[0], n.input[1], n.output[0])} - known:
        exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    save_model(exposed, scratch)
    del exposed
    shapes = {name: list(value.shape[1:]) for name, value in run_onnx(scratch, image[:1]).items()}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    return {n.name: _macs(n, shapes) for n in nodes}


def _macs(node: Any, shapes: dict[str, list[int]]) -> float:
    out, a, b = (shapes.get(name, []) for name in (node.output[0], node.input[0], node.input[1]))
    if node.op_type == "Conv":
        return float(np.prod(out) * np.prod(b[1:]))  # per output element: Cin/group × kernel
    k = a[-1] if a else 1  # Gemm (never transA here) and MatMul: K is A's last dimension
    return float(np.prod(out) * k)
