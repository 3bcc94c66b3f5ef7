"""INT8 graphs from a verified FP32 artifact, each held to the gate on labelled held-out cells.

Three artifacts come out of one calibration:
- the Q/DQ graph for TensorRT (explicit quantization; TensorRT 10 with its FP16 flag),
- the same Q/DQ graph with its float remainder in FP16, for TensorRT's strongly typed networks
  (TensorRT 11), so that INT8 is not slower than FP16 there,
- a dynamically quantized graph for ONNX Runtime on the CPU (Q/DQ runs slower than FP32 there).

The Q/DQ graph comes from ONNX Runtime's or NVIDIA Model Optimizer's quantizer. Attention
matmuls, the head and the output-making matmuls stay float in all of them. When a fully
quantized graph fails the gate, the most damaging node groups go back to float automatically
until it holds (`int8_select`); the manifest records what was kept and the sweep's numbers. The
two TensorRT graphs must also pass the TensorRT compatibility check (`trt_compat`), recorded in
their manifests.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.calibration.calibration_set import CalibrationSet
from dorl.contract import MASK_LOGITS
from dorl.deps import require
from dorl.errors import ArtifactError, ConfigError
from dorl.export.check_cells import CheckCells
from dorl.export.derived import MODEL_FILE, copy_head, derived_fields
from dorl.export.int8_gate import GateReport, GateSet, GateThresholds, check
from dorl.export.int8_groups import (
    FLOAT_OPS,
    excluded_nodes,
    group_assignment,
    head_nodes,
    node_macs,
    upstream_nodes,
)
from dorl.export.int8_ort import REDUCE_RANGE
from dorl.export.int8_score import GateScorer, Runner, spread
from dorl.export.int8_select import FloatSelection, GroupSensitivity, select_float_groups
from dorl.export.latency import LATENCY_BATCH, latency_ms
from dorl.export.trt_compat import require_compatible

QUANTIZERS = ("ort", "modelopt")
DEFAULT_QUANTIZER = "ort"
QDQ, FP16, CPU = "Q/DQ (TensorRT)", "Q/DQ + FP16 (TensorRT strongly typed)", "dynamic (CPU)"
SUFFIXES = {QDQ: "", FP16: "-fp16", CPU: "-cpu"}
TARGETS = {QDQ: "tensorrt", FP16: "tensorrt-strongly-typed", CPU: "cpu"}
SWEEP_CELLS = 64  # the sweep (and the screen before each gate) scores this many of the gate's cells, spread over them
_BUILDS = {QDQ: "qdq", CPU: "cpu"}  # scratch folder of each variant's candidate graphs

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class Int8Settings:
    """How the INT8 graphs are made and gated."""

    quantizer: str = field(default=DEFAULT_QUANTIZER, metadata={"help": "ort or modelopt (the Q/DQ graphs)"})
    gate: GateThresholds = field(default_factory=GateThresholds)
    exclude: tuple[str, ...] = field(default=(), metadata={"help": "node/module/group patterns kept in float"})
    auto_float: bool = field(default=True, metadata={"help": "keep damaging groups in float until the gate holds"})
    sweep_cells: int = field(default=SWEEP_CELLS, metadata={"help": "gate cells the sensitivity sweep scores"})
    cpu_variant: bool = field(default=True, metadata={"help": "also make the dynamic CPU graph (<DIR>-cpu)"})
    fp16_variant: bool = field(default=True, metadata={"help": "also make the Q/DQ + FP16 graph (<DIR>-fp16)"})

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"unknown INT8 quantizer {self.quantizer!r}: choose one of {', '.join(QUANTIZERS)}.")
        if self.sweep_cells < 1:
            raise ConfigError(f"the INT8 sensitivity sweep needs at least one cell, got {self.sweep_cells}.")


def variant_folders(out_dir: str | Path) -> dict[str, Path]:
    """Where each INT8 variant is written: `out_dir` and its `-fp16` and `-cpu` siblings."""
    out = Path(out_dir)
    return {name: out.with_name(out.name + suffix) for name, suffix in SUFFIXES.items()}


def quantize_artifact(fp32_artifact: str | Path, out_dir: str | Path, calibration_set: CalibrationSet, gate: GateSet,
                      settings: Int8Settings = Int8Settings(), reporter: Reporter | None = None,
                      overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Write the Q/DQ artifact to `out_dir`, its FP16-remainder twin to `<out_dir>-fp16` and the CPU
    one to `<out_dir>-cpu` (unless `settings.cpu_variant` is off), each that passes the gate.

    The Q/DQ graph is the export: when it fails the gate nothing is written. A twin or CPU graph
    that fails on its own is not written either (an older one at its place is removed with
    `overwrite`, so that no stale variant sits beside the new graph); the Q/DQ manifest's
    `refused_variants` says which and why.

    Args:
        fp32_artifact: the verified FP32 "onnx" artifact folder.
        calibration_set: the cells the Q/DQ activation ranges are calibrated on.
        gate: labelled held-out cells (see `int8_gate.gate_set`).
        overwrite: replace existing INT8 artifacts at those folders.
        inputs: the export's inputs, which no output may touch.

    Returns:
        The Q/DQ artifact's manifest.

    Raises:
        GateError: the Q/DQ graph fails the gate even with every damaging group in float; the
            message names the groups.
    """
    onnx = require("onnx", "INT8 quantization")
    from dorl.export.parity import onnx_infer
    from dorl.manifests import parse_framing

    say = reporter or (lambda message: None)
    manifest = read_manifest(fp32_artifact, "onnx")
    if manifest.get("precision") != "fp32":
        raise ArtifactError(f"{manifest['folder']} is a {manifest.get('precision')} graph: quantize the FP32 export.")
    fp32_file = Path(manifest["folder"]) / MODEL_FILE
    fp32_model = onnx.load(str(fp32_file))
    base = excluded_nodes(fp32_model, settings.exclude)
    framing = parse_framing(manifest)
    cells = CheckCells.load(list(gate.sources), int(manifest["image_size"]), framing)
    say(f"scoring FP32 on {len(cells)} held-out cells" + (" (both passes: the whole image, then the cell)"
                                                          if cells.two_pass else ""))
    rows = spread(len(cells), settings.sweep_cells)
    fp32 = onnx_infer(fp32_file)  # one session: the gate's reference, then the calibration crops' masks
    scorer = GateScorer(cells.run(fp32), cells, gate.labels, settings.gate, rows)
    with tempfile.TemporaryDirectory(prefix="dorl-int8-") as tmp:
        job = _Job(Path(tmp), fp32_model, _link_beside(fp32_file, Path(tmp, "fp32")), base, scorer, settings, say)
        job.macs = node_macs(fp32_model, cells.pixels[:1], job.tmp / "exposed.onnx")
        job.mask_path = upstream_nodes(fp32_model, MASK_LOGITS)
        calibration = CheckCells.load(calibration_set.paths, int(manifest["image_size"]), framing)
        say(f"calibrating the {settings.quantizer} quantizer on {len(calibration)} cells"
            + (" (the whole images and their cells)" if calibration.two_pass else "") + f"; {len(base)} nodes always float")
        calibration_inputs = calibration.inputs(fp32)
        del fp32
        job.quantize(calibration_inputs, manifest)
        tensorrt = job.tensorrt()
        check({QDQ: tensorrt.report}, tensorrt.selection.advice())
        results = {QDQ: tensorrt}
        if settings.fp16_variant:
            results[FP16] = job.fp16_remainder(tensorrt)
        if settings.cpu_variant:
            results[CPU] = job.cpu(ranking=tensorrt.selection.sweep)
        refused = {name: {"gate": r.report.to_dict(), "reason": r.report.describe(), "advice": r.selection.advice()}
                   for name, r in results.items() if not r.report.passed}
        for name, why in refused.items():
            say(f"the INT8 {name} graph fails the gate on its own and is not written: {why['reason']}")
            del results[name]
        for name in (QDQ, FP16):  # the CPU variant is for ONNX Runtime, not TensorRT
            if name in results:
                results[name].compat = require_compatible(results[name].path, f"the INT8 {name} graph")
        latency = {"fp32": latency_ms(job.fp32_path, cells.pixels)} | {
            name: latency_ms(r.path, cells.pixels, unfused=name != CPU) for name, r in results.items()}
        calibrated_on = {"images": len(calibration_inputs),
                         "inputs": "whole images and their cells" if calibration.two_pass else "whole images"}
        common = {**derived_fields(manifest, "int8"), "calibration": {**calibration_set.describe(), **calibrated_on},
                  "quantizer": settings.quantizer, "excluded_nodes": base, "exclude_patterns": list(settings.exclude),
                  "kept_float_ops": list(FLOAT_OPS),
                  "latency_ms_per_image": {"onnxruntime_cpu": latency, "batch": LATENCY_BATCH,
                                           "qdq": "unfused, as dorl's runtime runs Q/DQ graphs on the CPU"},
                  "refused_variants": refused, "cpu_variant": settings.cpu_variant,
                  "fp16_variant": settings.fp16_variant}
        folders = variant_folders(out_dir)
        written = {name: _write_variant(name, r, folders[name], common, scorer, manifest, overwrite, inputs)
                   for name, r in results.items()}
        for name in set(folders) - set(written):  # refused, or not asked for
            if _remove_stale(folders[name], name, overwrite):
                say(f"removed the earlier INT8 {name} variant at {folders[name]}: this export did not write one")
    say("INT8 gate passed: " + "; ".join(f"{name} {r.report.describe()}" for name, r in results.items()))
    return written[QDQ]


def _remove_stale(folder: Path, variant: str, overwrite: bool) -> bool:
    """Remove the `variant` an earlier export left at its folder (with `overwrite`), so that no stale
    variant sits beside the new graph; any other artifact there is left alone. Returns whether it did."""
    from dorl.safe_write import MANIFEST_NAME, output_lock

    if not overwrite or not (folder / MANIFEST_NAME).is_file():
        return False
    with output_lock(folder):
        found = read_manifest(folder, verify=False)
        if found.get("precision") != "int8" or found.get("variant") != variant:
            return False
        shutil.rmtree(folder)
        return True


@dataclass
class _Result:
    """One variant's final graph and what it scored."""

    path: Path
    report: GateReport
    outputs: dict[str, np.ndarray]
    selection: FloatSelection
    facts: dict[str, Any] = field(default_factory=dict)
    extra_parity: dict[str, Any] = field(default_factory=dict)
    compat: dict[str, Any] | None = None  # the TensorRT compatibility report (TensorRT targets only)


@dataclass
class _Job:
    """The state of one INT8 export: the FP32 graph, the fully quantized graph, scratch files."""

    tmp: Path
    fp32_model: Any
    fp32_path: Path
    base: list[str]
    scorer: GateScorer
    settings: Int8Settings
    say: Reporter
    macs: dict[str, float] = field(default_factory=dict)
    qdq_model: Any = None
    mask_path: frozenset[str] = frozenset()  # the nodes the mask logits depend on

    def quantize(self, calibration: np.ndarray, manifest: dict[str, Any]) -> None:
        """Quantize every quantizable node but the base exclusions, once, calibrated on uint8 images
        [N,S,S,3] (every image the graph meets: for a cell-centric artifact the whole images and the cells)."""
        import onnx

        from dorl.export.int8_qdq import keep_float

        full = self.tmp / "full" / MODEL_FILE
        full.parent.mkdir()
        input_name = manifest["inputs"][0]["name"]
        if self.settings.quantizer == "modelopt":
            from dorl.export.int8_modelopt import quantize_modelopt

            quantize_modelopt(self.fp32_path, full, calibration, input_name, self.base)
            floated = list(self.base)
        else:
            from dorl.export.int8_ort import cell_reader, quantize_qdq

            quantize_qdq(self.fp32_path, full, cell_reader(calibration, input_name), self.base)
            floated = _beyond(self.fp32_model, self.base)
        # A quantized activation's DequantizeLinear feeds every reader of the tensor, excluded ones
        # (an attention matmul beside the q/k/v projections) and Transposes included: put them back.
        self.qdq_model = keep_float(onnx.load(str(full)), self.fp32_model, floated)

    def _save(self, model: Any, name: str) -> Path:
        from dorl.export.fp16 import save_model

        path = self.tmp / name / MODEL_FILE
        if path.parent.exists():
            shutil.rmtree(path.parent)
        path.parent.mkdir()
        save_model(model, path)
        return path

    def _select(self, groups: dict[str, list[str]], build: Callable[[list[str]], Path], run: Runner,
                label: str, ranking: Sequence[GroupSensitivity] = ()) -> _Result:
        """Score the fully quantized variant and, if it fails, keep groups in float until it passes."""
        quantized = [n for names in groups.values() for n in names]
        last: dict[str, Any] = {}

        def scored(floated: list[str], sweep: bool = False) -> GateReport:
            last["floated"] = None if sweep else sorted(floated)  # outputs of the whole gate only
            report, last["outputs"] = self.scorer.score(build(floated), run, sweep)
            return report

        def alone(nodes: list[str]) -> GateReport:  # the sweep: only `nodes` quantized
            last["floated"] = None
            return self.scorer.estimate(build(sorted(set(quantized) - set(nodes))), run,
                                        masks_change=not self.mask_path.isdisjoint(nodes))

        full = scored([])
        full_outputs = last["outputs"]
        if self.settings.auto_float:
            screen = (lambda nodes: scored(nodes, sweep=True)) if self.scorer.screens else None
            selection = select_float_groups(groups, self.macs, full, alone, scored,
                                            lambda message: self.say(f"{label}: {message}"), screen, ranking)
        else:
            selection = FloatSelection((), (), full)
        if last["floated"] != sorted(selection.kept_nodes):  # the sweep's graphs were built last: build it again
            scored(list(selection.kept_nodes))
        outputs = last["outputs"] if selection.kept_nodes else full_outputs
        path = self.tmp / _BUILDS[label] / MODEL_FILE
        return _Result(path, selection.report, outputs, selection)

    def tensorrt(self) -> _Result:
        from dorl.export.int8_qdq import keep_float, qdq_facts, quantized_nodes, tensorrt_infer

        def build(floated: list[str]) -> Path:
            return self._save(keep_float(self.qdq_model, self.fp32_model, floated), _BUILDS[QDQ])

        result = self._select(_grouped(self.fp32_model, quantized_nodes(self.qdq_model)), build, tensorrt_infer, QDQ)
        import onnx

        result.facts = qdq_facts(onnx.load(str(result.path)))
        return result

    def fp16_remainder(self, qdq: _Result) -> _Result:
        """The chosen Q/DQ graph with its float remainder in FP16, gated through its FP16 emulation."""
        import onnx

        from dorl.export.int8_fp16 import emulate_fp16_remainder, with_fp16_remainder
        from dorl.export.int8_qdq import qdq_facts, tensorrt_infer
        from dorl.export.parity import compare, onnx_infer

        chosen = onnx.load(str(qdq.path))
        head = head_nodes(self.fp32_model)
        path = self._save(with_fp16_remainder(chosen, head), "fp16")
        emulated = self._save(emulate_fp16_remainder(chosen, head), "fp16-emulated")
        report, outputs = self.scorer.score(emulated, tensorrt_infer)
        runtime = compare(self.scorer.reference, self.scorer.cells.run(onnx_infer(path))).to_dict()
        facts = qdq_facts(onnx.load(str(path), load_external_data=False))
        return _Result(path, report, outputs, qdq.selection, facts,
                       {"method": "fp16 emulation (every FP16 tensor rounded, Q/DQ unfused)",
                        "onnxruntime_cpu": runtime})

    def cpu(self, ranking: Sequence[GroupSensitivity] = ()) -> _Result:
        from dorl.export.int8_groups import quantizable_nodes
        from dorl.export.int8_ort import CPU_OPS, quantize_cpu
        from dorl.export.parity import onnx_infer

        def build(floated: list[str]) -> Path:
            path = self.tmp / _BUILDS[CPU] / MODEL_FILE
            if path.parent.exists():
                shutil.rmtree(path.parent)
            path.parent.mkdir()
            quantize_cpu(self.fp32_path, path, self.base + floated)
            return path

        kinds = {n.name: n.op_type for n in self.fp32_model.graph.node}
        nodes = [n for n in quantizable_nodes(self.fp32_model) if kinds[n] in CPU_OPS and n not in set(self.base)]
        return self._select(_grouped(self.fp32_model, nodes), build, onnx_infer, CPU, ranking)


def _beyond(model: Any, excluded: Sequence[str]) -> list[str]:
    """Every node but the MatMul/Gemm/Conv meant to be quantized: what ONNX Runtime's Q/DQ must not reach."""
    from dorl.export.int8_groups import QUANT_OPS

    skip = set(excluded)
    return [n.name for n in model.graph.node if n.op_type not in QUANT_OPS or n.name in skip]


def _grouped(model: Any, nodes: Sequence[str]) -> dict[str, list[str]]:
    """The given nodes by group (see `int8_groups.group_assignment`), in graph order."""
    assignment = group_assignment(model)
    groups: dict[str, list[str]] = {}
    for name in nodes:
        groups.setdefault(assignment.get(name, "other"), []).append(name)
    return groups


def _link_beside(model: Path, folder: Path) -> Path:
    """Symlink a graph (and its external data) into `folder`: the quantizers write copies beside
    their input, which must not land in the (possibly read-only) artifact."""
    folder.mkdir()
    for path in (model, Path(f"{model}.data")):
        if path.exists():
            (folder / path.name).symlink_to(path.resolve())
    return folder / model.name


def _write_variant(name: str, result: _Result, folder: Path, common: dict[str, Any], scorer: GateScorer,
                   fp32_manifest: dict[str, Any], overwrite: bool, inputs: Sequence[str | Path]) -> dict[str, Any]:
    from dorl.safe_write import atomic_folder

    with atomic_folder(folder, kind="onnx", overwrite=overwrite, inputs=inputs) as stage:
        return _write_variant_files(name, result, stage, common, scorer, fp32_manifest)


def _write_variant_files(name: str, result: _Result, folder: Path, common: dict[str, Any], scorer: GateScorer,
                         fp32_manifest: dict[str, Any]) -> dict[str, Any]:
    from dorl.export.parity import compare

    files = []
    for path in result.path.parent.iterdir():
        shutil.copy2(path, folder / path.name)
        files.append(path.name)
    files = [f for f in files if f != "head.safetensors"] + copy_head(fp32_manifest, folder)
    if name == CPU:
        quantization = {"format": "QOperator", "mode": "dynamic", "symmetric_weights": True, "per_channel": True,
                        "op_types": ["MatMul", "Gemm"], "weight_bits": 7 if REDUCE_RANGE else 8}
    else:
        quantization = {"format": "QDQ", "mode": "static", "symmetric": True, "per_channel": True,
                        "quantize_bias": False, "float_remainder": "fp16" if name == FP16 else "fp32",
                        **result.facts}
    parity = {"reference": "onnx fp32", **compare(scorer.reference, result.outputs).to_dict(), **result.extra_parity}
    compat = {} if result.compat is None else {"tensorrt_compatibility": result.compat}
    return write_manifest(folder, "onnx", sorted(files), **common, target=TARGETS[name], variant=name,
                          quantization=quantization, float_selection=result.selection.to_dict(),
                          gate=result.report.to_dict(), parity=parity, **compat)
