"""Which parts of the graph INT8 hurts: node groups, default exclusions, and the sensitivity sweep.

The dynamo exporter records each node's PyTorch module path (`pkg.torch.onnx.name_scopes`), so
nodes group by the model's own structure: one group per encoder stage or block
(`encoder.layers.2`, `encoder.blocks.7`), the rest of the encoder, the CAE, the mask decoder
and the head. The sweep quantizes one group at a time (reusing one calibration) and measures
top-1 agreement with FP32, so a failed accuracy gate can say which groups to keep in float.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

QUANT_OPS = ("MatMul", "Gemm", "Conv")
# Never quantized (not in QUANT_OPS); named in the manifest so the choice is visible.
FLOAT_OPS = ("LayerNormalization", "Softmax")
# Module patterns kept in float by default: the classifier head decides the label from a few
# hundred numbers, where INT8 rounding moves the decision most.
DEFAULT_EXCLUDE = ("head", "head.*")
STAGE_LISTS = ("layers", "blocks")  # TinyViT stages, SAM ViT blocks
PASS_THROUGH = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Softmax", "Cast")


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
    """The sensitivity group of a module path: an encoder stage/block, or the top-level module."""
    parts = path.split(".")
    if len(parts) >= 3 and parts[0] == "encoder" and parts[1] in STAGE_LISTS and parts[2].isdigit():
        return ".".join(parts[:3])
    return parts[0] or "other"


def quantizable_nodes(model: Any) -> dict[str, str]:
    """Name -> module path of every MatMul/Gemm/Conv node of an ONNX model."""
    return {n.name: module_path(n) for n in model.graph.node if n.op_type in QUANT_OPS}


def node_groups(model: Any) -> dict[str, list[str]]:
    """Sensitivity group -> names of its quantizable nodes, in graph order."""
    groups: dict[str, list[str]] = {}
    for name, path in quantizable_nodes(model).items():
        groups.setdefault(group_of(path), []).append(name)
    return groups


def output_producers(model: Any) -> list[str]:
    """The quantizable nodes that make a graph output (through reshapes, casts and Softmax).

    These are the last matmuls: the head's, and the mask decoder's hypernetwork × upscaled
    embedding product that makes `mask_logits`.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in QUANT_OPS and node.name not in found:
            found.append(node.name)
    return found


def excluded_nodes(model: Any, patterns: Iterable[str] = ()) -> list[str]:
    """Quantizable nodes kept in float: the output producers, the head, and any `patterns`.

    Patterns are shell-style (fnmatch) and match a node's name, its module path or its group.
    """
    every = tuple(DEFAULT_EXCLUDE) + tuple(patterns)
    chosen = set(output_producers(model))
    for name, path in quantizable_nodes(model).items():
        keys = (name, path, group_of(path))
        if any(fnmatch.fnmatchcase(key, pattern) for key in keys for pattern in every):
            chosen.add(name)
    return [n.name for n in model.graph.node if n.name in chosen]


@dataclass(frozen=True)
class GroupSensitivity:
    """Agreement with FP32 when only one group is quantized."""

    group: str
    nodes: int
    top1_agreement: float
    probs_max_diff: float

    def describe(self) -> str:
        return f"{self.group} ({self.nodes} nodes: {self.top1_agreement:.1%} agreement, probs ±{self.probs_max_diff:.3f})"


def sweep(groups: dict[str, list[str]], excluded: Sequence[str],
          evaluate: Callable[[list[str]], tuple[float, float]]) -> list[GroupSensitivity]:
    """Quantize one group at a time and measure it; worst first.

    Args:
        groups: group -> node names (see `node_groups`).
        excluded: nodes that stay float in every run.
        evaluate: quantizes exactly the given nodes and returns (top-1 agreement, probs max diff).

    Returns:
        One entry per group with at least one quantizable node, lowest agreement first.
    """
    results = []
    for group, names in groups.items():
        nodes = [n for n in names if n not in set(excluded)]
        if nodes:
            agreement, diff = evaluate(nodes)
            results.append(GroupSensitivity(group, len(nodes), agreement, diff))
    return sorted(results, key=lambda r: (r.top1_agreement, -r.probs_max_diff))
