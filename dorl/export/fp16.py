"""The FP16 graph: FP16 weights and activations, with the overflow-prone nodes kept in FP32.

LayerNorm after attention overflows in FP16 (its variance squares activations), and so do the
reductions and the Softmax exponentials; these nodes (`FP32_OPS`) keep FP32 inputs and outputs,
and every other float tensor becomes FP16. Casts are inserted only where a tensor crosses between
the two, and the graph's inputs and outputs keep their types (uint8 in, float32 out), so the
runtime feeds the FP16 graph exactly like the FP32 one. The conversion is written here rather
than taken from onnxconverter-common, whose converter leaves `Cast(to=FLOAT)` nodes behind that
ONNX Runtime rejects on these graphs, and rounds small weights to 1e-7.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.contract import EXTERNAL_DATA_BYTES, HEAD_FILE
from dorl.deps import require
from dorl.errors import ArtifactError
from dorl.export.check_cells import CheckCells
from dorl.manifests import parse_framing

# Pow and Sqrt are the halves of a decomposed LayerNorm (segment-anything's LayerNorm2d in the
# SAM neck); Sin/Cos build the decoder's positional encoding from arguments up to ~20 rad.
FP32_OPS = (
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
    "Pow", "Sqrt", "Sin", "Cos",
)
FP16_MAX = 65504.0


def convert_to_fp16(model: Any, fp32_ops: Iterable[str] = FP32_OPS, fp32_nodes: Iterable[str] = ()) -> Any:
    """An FP16 copy of an FP32 ONNX model (onnx.ModelProto) with `fp32_ops` nodes (and the nodes
    named in `fp32_nodes`) kept in FP32.

    Returns:
        The converted onnx.ModelProto; graph inputs and outputs keep their element types.
    """
    onnx = require("onnx", "the FP16 conversion")
    return _Converter(onnx.shape_inference.infer_shapes(model), frozenset(fp32_ops), emulate=False,
                      fp32_nodes=frozenset(fp32_nodes)).run()


def emulate_fp16(model: Any, fp32_ops: Iterable[str] = FP32_OPS, fp32_nodes: Iterable[str] = ()) -> Any:
    """An FP32 graph that computes what `convert_to_fp16(model, fp32_ops)` stores.

    ONNX Runtime's CPU provider runs FP16 nodes that lack an FP16 kernel in FP32 (it inserts
    casts and drops the FP16 round trips), so on a CPU the FP16 graph never overflows. This
    graph rounds the weights and every tensor of the FP16 part to FP16 (a Cast pair after each
    node, which ONNX Runtime keeps), computing in FP32 in between, like FP16 kernels that
    accumulate in FP32: an activation past 65504 becomes Inf here as it would on the GPU.
    """
    onnx = require("onnx", "the FP16 emulation")
    return _Converter(onnx.shape_inference.infer_shapes(model), frozenset(fp32_ops), emulate=True,
                      fp32_nodes=frozenset(fp32_nodes)).run()


class _Converter:
    """One pass over a topologically sorted graph; see `convert_to_fp16` and `emulate_fp16`."""

    def __init__(self, model: Any, fp32_ops: frozenset[str], emulate: bool, fp32_nodes: frozenset[str] = frozenset()
                 ) -> None:
        import onnx

        self.onnx, self.model, self.graph, self.fp32_ops, self.emulate = onnx, model, model.graph, fp32_ops, emulate
        self.fp32_nodes = fp32_nodes
        self.FLOAT, self.HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
        self.floats = _float_tensor_names(model.graph)
        self.native: dict[str, int] = {}  # float tensor -> precision it is produced in
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, precision) -> name of its cast
        self.nodes: list[Any] = []

    def run(self) -> Any:
        self._convert_initializers()
        for inp in self.graph.input:
            if inp.name in self.floats:
                self.native[inp.name] = self.FLOAT
        for node in self.graph.node:
            self._convert_node(node)
        if not self.emulate:
            self._restore_outputs()
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.value_info[:]  # stale types; ONNX Runtime and the checker infer them again
        return self.model

    def _blocked(self, node: Any) -> bool:
        return node.op_type in self.fp32_ops or node.name in self.fp32_nodes

    def _convert_initializers(self) -> None:
        consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for init in self.graph.initializer:
            if init.data_type != self.FLOAT:
                continue
            users = consumers.get(init.name, [])
            if users and all(self._blocked(n) for n in users):
                self.native[init.name] = self.FLOAT
                continue
            init.CopyFrom(_to_half(self.onnx, init, keep_float=self.emulate))
            self.native[init.name] = self.HALF

    def _convert_node(self, node: Any) -> None:
        want = self.FLOAT if self._blocked(node) else self.HALF
        for i, name in enumerate(node.input):
            if name in self.native and self.native[name] != want and not (self.emulate and want == self.FLOAT):
                node.input[i] = self._cast(name, want)
        if not self._blocked(node):
            _halve_attributes(self.onnx, node, keep_float=self.emulate)
        self.nodes.append(node)
        for i, name in enumerate(node.output):
            if name not in self.floats:
                continue
            self.native[name] = want
            if self.emulate and want == self.HALF:
                node.output[i] = f"{name}__fp32"
                self._round(node.output[i], name)

    def _cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            cast_name = f"{name}__{'fp32' if to == self.FLOAT else 'fp16'}"
            if self.emulate:
                self._round(name, cast_name)
            else:
                self.nodes.append(self.onnx.helper.make_node("Cast", [name], [cast_name], to=to, name=f"cast_{cast_name}"))
            self.casts[key] = cast_name
        return self.casts[key]

    def _round(self, source: str, target: str) -> None:
        """target = source rounded to FP16 and back (emulation only)."""
        make = self.onnx.helper.make_node
        self.nodes.append(make("Cast", [source], [f"{target}__half"], to=self.HALF, name=f"round_{target}_a"))
        self.nodes.append(make("Cast", [f"{target}__half"], [target], to=self.FLOAT, name=f"round_{target}_b"))

    def _restore_outputs(self) -> None:
        """Graph outputs produced in FP16 get a final Cast to FP32 under their own name."""
        for out in self.graph.output:
            if out.type.tensor_type.elem_type != self.FLOAT or self.native.get(out.name) != self.HALF:
                continue
            inner = f"{out.name}__fp16"
            for node in self.nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            self.nodes.append(self.onnx.helper.make_node("Cast", [inner], [out.name], to=self.FLOAT,
                                                         name=f"cast_{out.name}"))


def _float_tensor_names(graph: Any) -> set[str]:
    import onnx

    infos = list(graph.input) + list(graph.output) + list(graph.value_info)
    names = {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "Cast" and _attribute(node, "to") == onnx.TensorProto.FLOAT:
            names.update(node.output)
    return names


def _attribute(node: Any, name: str) -> Any:
    import onnx

    found = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(found[0]) if found else None


def _to_half(onnx: Any, tensor: Any, keep_float: bool = False) -> Any:
    """An FP16 copy of a float tensor (clipped to ±65504), or its FP16-rounded FP32 copy."""
    array = onnx.numpy_helper.to_array(tensor)
    half = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
    return onnx.numpy_helper.from_array(half.astype(np.float32) if keep_float else half, tensor.name)


def _halve_attributes(onnx: Any, node: Any, keep_float: bool = False) -> None:
    """Make a node that creates float data (Cast, Constant, ConstantOfShape) create FP16 (or FP16 values)."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT and not keep_float:
            attr.i = onnx.TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
            attr.t.CopyFrom(_to_half(onnx, attr.t, keep_float))


def save_model(model: Any, path: str | Path) -> None:
    """Write an onnx.ModelProto as one file, or with external data when it passes protobuf's 2 GB."""
    onnx = require("onnx", "writing an ONNX graph")
    big = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{Path(path).name}.data" if big else None)


def export_fp16(fp32_artifact: str | Path, out_dir: str | Path, images: Any,
                reporter: Any = None, fp32_ops: Iterable[str] = FP32_OPS, overwrite: bool = False,
                inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Derive the FP16 artifact from a verified FP32 one and check it on real cells.

    The FP16 graph must run in ONNX Runtime, and its FP16 emulation (see `emulate_fp16`) must
    agree with FP32 on at least FP16_MIN_AGREEMENT of the cells (near ties, where FP32's own top-2
    margin is below FP16_TIE_MARGIN, count as agreeing) with no NaN/Inf.

    Args:
        fp32_artifact: an FP32 "onnx" artifact folder.
        out_dir: the FP16 artifact folder (written atomically; an existing ONNX artifact only with `overwrite`).
        images: real cells (paths, encoded bytes or arrays), or `CheckCells` already loaded; a
            cell-centric artifact is checked through both of the analyzer's passes.
        reporter: called with progress sentences.
        overwrite: replace an existing ONNX artifact at `out_dir`.
        inputs: the export's inputs, which the output may not touch (the FP32 artifact always).

    Returns:
        The manifest written.

    Raises:
        ParityError: the check fails.
    """
    onnx = require("onnx", "the FP16 conversion")
    from dorl.export.derived import MODEL_FILE, copy_head, derived_fields
    from dorl.export.parity import (
        FP16_MIN_AGREEMENT,
        FP16_TIE_MARGIN,
        check_reduced,
        compare,
        onnx_infer,
    )

    manifest = read_manifest(fp32_artifact, "onnx")
    if manifest.get("precision") != "fp32":
        raise ArtifactError(f"{manifest['folder']} is a {manifest.get('precision')} graph: derive FP16 from the FP32 export.")
    cells = images if isinstance(images, CheckCells) else \
        CheckCells.load(images, int(manifest["image_size"]), parse_framing(manifest))
    source = Path(manifest["folder"]) / MODEL_FILE
    blocked = tuple(fp32_ops)
    (reporter or (lambda m: None))(f"converting to FP16 with {', '.join(blocked)} kept in FP32")
    fp32_model = onnx.load(str(source))
    reference = cells.run(onnx_infer(source))
    from dorl.safe_write import atomic_folder

    with atomic_folder(out_dir, kind="onnx", overwrite=overwrite, inputs=[fp32_artifact, *inputs]) as stage:
        save_model(convert_to_fp16(fp32_model, blocked), stage / MODEL_FILE)
        onnx.checker.check_model(str(stage / MODEL_FILE))
        from dorl.export.trt_compat import require_compatible
        compat = require_compatible(stage / MODEL_FILE, "the FP16 graph")
        runtime = compare(reference, cells.run(onnx_infer(stage / MODEL_FILE)), FP16_TIE_MARGIN,
                          cells=cells.names)
        save_model(emulate_fp16(fp32_model, blocked), stage / "emulated.onnx")
        del fp32_model
        emulated = compare(reference, cells.run(onnx_infer(stage / "emulated.onnx")),
                           FP16_TIE_MARGIN, cells=cells.names)
        (stage / "emulated.onnx").unlink()
        check_reduced(emulated, "fp16 (emulated)", FP16_MIN_AGREEMENT)
        check_reduced(runtime, "fp16", FP16_MIN_AGREEMENT)
        files = sorted(p.name for p in stage.iterdir())
        parity = {"reference": "onnx fp32", "method": "fp16 emulation (every FP16 tensor rounded, FP32 compute)",
                  **emulated.to_dict(), "onnxruntime_cpu": runtime.to_dict()}
        files = [f for f in files if f != HEAD_FILE] + copy_head(manifest, stage)
        return write_manifest(stage, "onnx", files, **derived_fields(manifest, "fp16"), fp32_ops=list(blocked),
                              parity=parity, tensorrt_compatibility=compat)
