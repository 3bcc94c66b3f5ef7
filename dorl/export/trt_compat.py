"""Will TensorRT's ONNX parser accept this graph? Checked on the CPU, before any engine is built.

The rules are those of onnx-tensorrt's importer (ModelImporter.cpp, onnxOpImporters.cpp) and its
operator support matrix (`dorl.export.trt_operators`), for each targeted TensorRT release (10.3
for JetPack 6, 11):

- `uint8-boundary`: UINT8 only at the network boundary. A node may not produce a UINT8 tensor
  that is not a graph output ("TensorRT does not support UINT8 types for intermediate tensors"),
  and a UINT8 graph input may be consumed only by Cast (or Shape).
- `dequantize-input`: every DequantizeLinear input is INT8/FP8/INT4 (FP4 on 11); an INT32 bias
  (ONNX Runtime's QuantizeBias) is rejected.
- `zero-point`: Q/DQ zero points are constant and all zero (TensorRT quantizes symmetrically).
- `operator`: every node's operator is in the release's support matrix (custom domains are not).
- `operator-types`: the node's data operand (input 0; the output too for Cast and nodes without
  inputs) has a type the matrix lists for that operator.

`check_model` returns a typed report; `require_compatible` raises with the node and the rule.
Needs the onnx package only (no torch, no TensorRT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dorl.deps import require
from dorl.errors import ArtifactError
from dorl.export.trt_operators import MATRIX, OPSETS, TARGETS

RULES = ("uint8-boundary", "dequantize-input", "zero-point", "operator", "operator-types")
UINT8_CONSUMERS = ("Cast", "Shape")
# Their importers read only the input's dimensions (IShapeLayer takes any type): no type to check.
SHAPE_ONLY = ("Shape", "Size")
# Generators: input 0 is a shape or a size, the matrix's types are those of what they make.
OUTPUT_TYPED = ("ConstantOfShape", "HannWindow", "HammingWindow", "BlackmanWindow")
SHOWN = 5  # violations named in an error message
# ONNX TensorProto element types as the support matrix names them.
ONNX_TYPE_NAMES = {
    "FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "DOUBLE": "DOUBLE", "INT32": "INT32", "INT64": "INT64",
    "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL", "FLOAT8E4M3FN": "FP8", "INT4": "INT4", "FLOAT4E2M1": "FP4",
}


class TensorRTCompatError(ArtifactError):
    """A graph breaks a rule of TensorRT's ONNX parser."""


@dataclass(frozen=True)
class Violation:
    """One node breaking one rule for one TensorRT release."""

    rule: str
    node: str
    op_type: str
    target: str
    message: str

    def describe(self) -> str:
        release = "every TensorRT release" if self.target == "all" else f"TensorRT {self.target}"
        return f"node {self.node!r} ({self.op_type}) breaks {self.rule} for {release}: {self.message}"


@dataclass(frozen=True)
class CompatReport:
    """What was checked and what broke."""

    targets: tuple[str, ...]
    rules: tuple[str, ...]
    nodes: int
    opset: int
    violations: tuple[Violation, ...] = ()
    documented_opsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed,
                "source": "onnx-tensorrt docs/operators.md and ModelImporter.cpp (see dorl.export.trt_operators)"}


def check_file(path: str | Path, targets: Sequence[str] = TARGETS) -> CompatReport:
    """`check_model` on an ONNX file (its external weights are not loaded: types suffice)."""
    onnx = require("onnx", "checking an ONNX graph for TensorRT")
    return check_model(onnx.load(str(path), load_external_data=False), targets, base_dir=Path(path).parent)


def check_model(model: Any, targets: Sequence[str] = TARGETS, base_dir: str | Path = "") -> CompatReport:
    """Check an onnx.ModelProto against every rule for every TensorRT release in `targets`.

    Args:
        base_dir: the folder of the model's external data (zero points are read from it when stored there).
    """
    onnx = require("onnx", "checking an ONNX graph for TensorRT")
    unknown = [t for t in targets if t not in MATRIX]
    if unknown:
        raise ValueError(f"no operator matrix for TensorRT {unknown}: choose from {TARGETS}")
    if model.functions:  # model-local functions: TensorRT's parser inlines them, so check their bodies
        model = onnx.inliner.inline_local_functions(model)
    model = onnx.shape_inference.infer_shapes(model)
    graph = _Graph(model, str(base_dir))
    violations = list(graph.uint8_boundary()) + list(graph.zero_points())
    for target in targets:
        violations += graph.operators(target)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return CompatReport(targets=tuple(targets), rules=RULES, nodes=len(model.graph.node), opset=int(opset),
                        violations=tuple(violations), documented_opsets={t: OPSETS[t] for t in targets})


def require_compatible(path: str | Path, what: str = "the ONNX graph") -> dict[str, Any]:
    """The report of `check_file` for a manifest, or TensorRTCompatError naming the nodes and rules broken."""
    report = check_file(path)
    if not report.passed:
        shown = "; ".join(v.describe() for v in report.violations[:SHOWN])
        more = f" (and {len(report.violations) - SHOWN} more)" if len(report.violations) > SHOWN else ""
        raise TensorRTCompatError(f"{what} would be rejected by TensorRT's ONNX parser: {shown}{more}. Fix the export "
                                  "(or report it with this message); `dorl export` writes no artifact TensorRT cannot parse.")
    return report.to_dict()


class _Graph:
    """Tensor types, producers and consumers of one (shape-inferred) graph, and the rules over them."""

    def __init__(self, model: Any, base_dir: str) -> None:
        import onnx

        graph = model.graph
        self.onnx, self.nodes, self.base_dir = onnx, list(graph.node), base_dir
        self.inputs = {v.name for v in graph.input} - {t.name for t in graph.initializer}
        self.outputs = {v.name for v in graph.output}
        self.types: dict[str, str] = {}
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type"):
                self.types[value.name] = self._type_name(value.type.tensor_type.elem_type)
        self.constants: dict[str, Any] = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            self.types[t.name] = self._type_name(t.data_type)
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
                self.types[node.output[0]] = self._type_name(node.attribute[0].t.data_type)

    def _type_name(self, elem_type: int) -> str:
        name = self.onnx.TensorProto.DataType.Name(elem_type)
        return ONNX_TYPE_NAMES.get(name, name)

    def uint8_boundary(self) -> Iterable[Violation]:
        for node in self.nodes:
            for output in node.output:
                if output and self.types.get(output) == "UINT8" and output not in self.outputs:
                    yield _v("uint8-boundary", node, "*", f"it makes UINT8 tensor {output!r}, which is not a graph "
                             "output (UINT8 is allowed only as a network input or output): cast to float first")
            if node.op_type in UINT8_CONSUMERS:
                continue
            for name in node.input:
                if name in self.inputs and self.types.get(name) == "UINT8":
                    yield _v("uint8-boundary", node, "*", f"it consumes the UINT8 graph input {name!r}, which only "
                             f"{' or '.join(UINT8_CONSUMERS)} may: cast it to float first")

    def zero_points(self) -> Iterable[Violation]:
        numpy_helper = self.onnx.numpy_helper
        for node in self.nodes:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
                continue
            zero = self.constants.get(node.input[2])
            if zero is None:
                yield _v("zero-point", node, "*", f"its zero point {node.input[2]!r} is not a constant")
            elif numpy_helper.to_array(zero, self.base_dir).any():
                yield _v("zero-point", node, "*", f"its zero point {node.input[2]!r} is not all zeros (TensorRT "
                         "quantizes symmetrically)")

    def operators(self, target: str) -> list[Violation]:
        matrix, found = MATRIX[target], []
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type not in matrix:
                domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
                found.append(_v("operator", node, target, f"operator {node.op_type}{domain} is not in the parser's "
                                "support matrix"))
                continue
            allowed = matrix[node.op_type]
            if node.op_type == "DequantizeLinear":
                dtype = self.types.get(node.input[0])
                if allowed is not None and dtype is not None and dtype not in allowed:
                    found.append(_v("dequantize-input", node, target, f"its input {node.input[0]!r} is {dtype}; "
                                    f"TensorRT dequantizes only {', '.join(sorted(allowed))}"))
                continue
            for name in self._data_operands(node):
                dtype = self.types.get(name)
                if allowed is not None and dtype is not None and dtype not in allowed:
                    found.append(_v("operator-types", node, target, f"tensor {name!r} is {dtype}; the matrix lists "
                                    f"{node.op_type} for {', '.join(sorted(allowed))}"))
        return found

    @staticmethod
    def _data_operands(node: Any) -> list[str]:
        """The tensors whose type the matrix's "Supported Types" describes."""
        if node.op_type in SHAPE_ONLY:
            return []
        output = [node.output[0]] if node.output and node.output[0] else []
        if node.op_type in OUTPUT_TYPED:
            return output
        names = [node.input[0]] if node.input and node.input[0] else []
        return names + output if node.op_type in ("Cast", "CastLike") or not names else names


def _v(rule: str, node: Any, target: str, message: str) -> Violation:
    return Violation(rule=rule, node=node.name or f"<unnamed {node.op_type}>", op_type=node.op_type,
                     target="all" if target == "*" else target, message=message)
