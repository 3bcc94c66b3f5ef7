"""INT8 graphs from a verified FP32 artifact: the Q/DQ graph for TensorRT and a dynamic one for the CPU.

The Q/DQ graph is TensorRT's explicit quantization (TensorRT 11 has no other INT8 path):
symmetric int8 (zero points 0), per-channel weights, MinMax activation ranges from a calibration
set, only MatMul/Gemm/Conv quantized (ONNX Runtime's default quantizes everything and ran out of
memory on ViT-B), the head and the output-making matmuls kept in float. Q/DQ runs slower than
FP32 in ONNX Runtime on a CPU, so a second variant, dynamically quantized MatMuls, is the CPU's
INT8 graph. Both are held to the accuracy gate on labelled held-out cells and saved as separate
artifacts whose manifests say which target each is for.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.calibration.calibration_set import CalibrationSet
from dorl.calibration.gate import MAX_ACCURACY_DROP, MIN_AGREEMENT, GateReport, GateSet, check, evaluate
from dorl.calibration.sensitivity import FLOAT_OPS, QUANT_OPS, excluded_nodes, node_groups, sweep
from dorl.deps import require
from dorl.errors import ArtifactError

# ONNX Runtime's MinMax calibration holds every intermediate tensor of a batch at once: on ViT-B
# (224) batch 8 peaked at 8.3 GiB RSS, batch 2 at 3.7 GiB and ran faster (127 s vs 150 s). The
# ranges do not depend on it (min/max over batches).
CALIBRATION_BATCH = 2
LATENCY_BATCH = 8
CPU_OPS = ("MatMul", "Gemm")  # ConvInteger is slower than float Conv on the CPU
SWEEP_REPORTED = 3
# Q/DQ on the inputs of MatMul/Gemm/Conv only, as TensorRT's explicit quantization places it: by
# default onnxruntime also quantizes their outputs, which rounds the residual stream and the
# inputs of LayerNorm, Softmax and GELU to int8 as well.
QDQ_OPTIONS = {"OpTypesToExcludeOutputQuantization": list(QUANT_OPS)}
QDQ, CPU = "Q/DQ (TensorRT)", "dynamic (CPU)"


class _NoPreprocessAdvice(logging.Filter):
    """Drops onnxruntime's "consider pre-processing before quantization" advice (printed on every call;
    its shape-inference step is what our export already did)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, advice = logging.getLogger(), _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def cell_reader(paths: Sequence[str], size: int, input_name: str, batch: int = CALIBRATION_BATCH) -> Any:
    """An onnxruntime CalibrationDataReader feeding `paths` (decoded and resized as at run time) in batches."""
    require("onnxruntime", "INT8 calibration")
    from onnxruntime import quantization

    from dorl.export.parity import prepare_images

    class CellReader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(paths):
                return None
            chunk = paths[self.start:self.start + batch]
            self.start += batch
            return {input_name: prepare_images(chunk, size)}

        def __len__(self) -> int:
            return (len(paths) + batch - 1) // batch

        def rewind(self) -> None:
            self.start = 0

    return CellReader()


def quantize_qdq(fp32_path: Path, out_path: Path, reader: Any, excluded: Sequence[str],
                 nodes: Sequence[str] | None = None, cache: Path | None = None) -> None:
    """Symmetric per-channel int8 Q/DQ of the MatMul/Gemm/Conv nodes (all but `excluded`, or only `nodes`).

    `cache` keeps the calibrated ranges, so later calls (the sensitivity sweep) skip calibration.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet_quantizer():
        quantize_static(
            str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(excluded), nodes_to_quantize=list(nodes) if nodes is not None else None,
            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache) if cache else None,
            use_external_data_format=_has_external_data(fp32_path),
            # MinMax keeps two numbers per tensor and batch (ReduceMin/Max nodes in the graph), so memory
            # does not grow with the set. CalibMaxIntermediateOutputs is not set: in onnxruntime 1.32 it
            # clears the collected batches without merging them first, calibrating on the last few only.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, **QDQ_OPTIONS},
        )


def quantize_cpu(fp32_path: Path, out_path: Path, excluded: Sequence[str]) -> None:
    """Dynamic int8 MatMul/Gemm (weights int8 per channel, activations quantized per batch at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Dynamic quantization first rewrites each Gemm as "<name>_MatMul" + "<name>_Add"; exclude both names.
    names = list(excluded) + [f"{name}_MatMul" for name in excluded]
    with _quiet_quantizer():
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=list(CPU_OPS), per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=names,
                         use_external_data_format=_has_external_data(fp32_path))


def _link_beside(model: Path, folder: Path) -> Path:
    """Symlink a graph (and its external data) into `folder`: onnxruntime's quantizers write a
    "-inferred" copy beside their input, which must not land in the (possibly read-only) artifact."""
    folder.mkdir()
    for path in (model, Path(f"{model}.data")):
        if path.exists():
            (folder / path.name).symlink_to(path.resolve())
    return folder / model.name


def _has_external_data(path: Path) -> bool:
    return Path(f"{path}.data").exists()


def latency_ms(path: Path, images: np.ndarray, batch: int = LATENCY_BATCH, repeats: int = 3) -> float:
    """Median milliseconds per image of one batch in ONNX Runtime (CPU), after a warm-up run."""
    from dorl.export.parity import cpu_session

    session = cpu_session(path)
    feed = {session.get_inputs()[0].name: images[:batch]}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0 / len(feed[next(iter(feed))]))


def quantize_artifact(fp32_artifact: str | Path, out_dir: str | Path, calibration_set: CalibrationSet,
                      gate: GateSet, exclude: Sequence[str] = (), reporter: Callable[[str], None] | None = None,
                      min_agreement: float = MIN_AGREEMENT, max_accuracy_drop: float = MAX_ACCURACY_DROP) -> dict[str, Any]:
    """Write the Q/DQ artifact to `out_dir` and the CPU one to `<out_dir>-cpu`, both gated.

    Args:
        fp32_artifact: the verified FP32 "onnx" artifact folder.
        calibration_set: the cells the Q/DQ activation ranges are calibrated on.
        gate: labelled held-out cells (see `gate.gate_set`).
        exclude: extra node/module/group patterns kept in float (see `sensitivity.excluded_nodes`).
        min_agreement, max_accuracy_drop: the gate's thresholds.

    Returns:
        The Q/DQ artifact's manifest.

    Raises:
        GateError: a variant fails the accuracy gate; the message names the costliest node groups.
    """
    onnx = require("onnx", "INT8 quantization")
    from dorl.export.parity import compare, prepare_images, run_onnx

    say = reporter or (lambda message: None)
    manifest = read_manifest(fp32_artifact, "onnx")
    if manifest.get("precision") != "fp32":
        raise ArtifactError(f"{manifest['folder']} is a {manifest.get('precision')} graph: quantize the FP32 export.")
    fp32_path = Path(manifest["folder"]) / "model.onnx"
    graph = onnx.load(str(fp32_path), load_external_data=False)
    excluded = excluded_nodes(graph, exclude)
    size, input_name = int(manifest["image_size"]), manifest["inputs"][0]["name"]
    cells = prepare_images(list(gate.sources), size)
    reference = run_onnx(fp32_path, cells)
    with tempfile.TemporaryDirectory(prefix="dorl-int8-") as tmp:
        paths = {QDQ: Path(tmp, "qdq", "model.onnx"), CPU: Path(tmp, "cpu", "model.onnx")}
        for path in paths.values():
            path.parent.mkdir()
        fp32_path = _link_beside(fp32_path, Path(tmp, "fp32"))
        cache = Path(tmp, "ranges.json")
        say(f"calibrating on {len(calibration_set.cells)} cells; Q/DQ int8 with {len(excluded)} nodes kept in float")
        quantize_qdq(fp32_path, paths[QDQ], cell_reader(calibration_set.paths, size, input_name), excluded, cache=cache)
        quantize_cpu(fp32_path, paths[CPU], excluded)
        outputs = {name: run_onnx(path, cells) for name, path in paths.items()}
        reports = {name: evaluate(reference["probs"], out["probs"], gate.labels, min_agreement, max_accuracy_drop)
                   for name, out in outputs.items()}
        costly: list[str] = []
        if not reports[QDQ].passed:
            say("the Q/DQ graph fails the gate: quantizing one node group at a time")
            costly = _costly_groups(graph, fp32_path, excluded, cache, cells, reference, Path(tmp, "sweep.onnx"))
        check(reports, costly)
        latency = {"fp32": latency_ms(fp32_path, cells), QDQ: latency_ms(paths[QDQ], cells),
                   CPU: latency_ms(paths[CPU], cells)}
        common = _int8_fields(manifest, calibration_set, excluded, exclude, latency)
        out = Path(out_dir)
        written = {}
        for name, folder, target in ((QDQ, out, "tensorrt"), (CPU, out.with_name(f"{out.name}-cpu"), "cpu")):
            written[name] = _write_variant(paths[name], folder, target, common, reports[name],
                                           compare(reference, outputs[name]).to_dict(), manifest)
    say(f"INT8 gate passed: Q/DQ {reports[QDQ].describe()}; CPU {reports[CPU].describe()}")
    return written[QDQ]


def _costly_groups(graph: Any, fp32_path: Path, excluded: Sequence[str], cache: Path, cells: np.ndarray,
                   reference: dict[str, np.ndarray], scratch: Path) -> list[str]:
    from dorl.export.parity import run_onnx

    def measure(nodes: list[str]) -> tuple[float, float]:
        quantize_qdq(fp32_path, scratch, None, [], nodes=nodes, cache=cache)
        probs = run_onnx(scratch, cells)["probs"]
        agreement = float((probs.argmax(1) == reference["probs"].argmax(1)).mean())
        return agreement, float(np.abs(probs - reference["probs"]).max())

    return [r.describe() for r in sweep(node_groups(graph), excluded, measure)[:SWEEP_REPORTED]]


def _int8_fields(fp32_manifest: dict[str, Any], calibration_set: CalibrationSet, excluded: Sequence[str],
                 patterns: Sequence[str], latency: dict[str, float]) -> dict[str, Any]:
    from dorl.export.onnx_export import derived_fields

    return {
        **derived_fields(fp32_manifest, "int8"),
        "calibration": calibration_set.describe(),
        "excluded_nodes": list(excluded),
        "exclude_patterns": list(patterns),
        "kept_float_ops": list(FLOAT_OPS),
        "latency_ms_per_image": {"onnxruntime_cpu": latency, "batch": LATENCY_BATCH},
    }


def _write_variant(source: Path, folder: Path, target: str, common: dict[str, Any], gate: GateReport,
                   parity: dict[str, Any], fp32_manifest: dict[str, Any]) -> dict[str, Any]:
    from dorl.export.onnx_export import copy_head

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in source.parent.iterdir():
        shutil.copy2(path, folder / path.name)
        files.append(path.name)
    files = [f for f in files if f != "head.safetensors"] + copy_head(fp32_manifest, folder)
    if target == "tensorrt":
        quantization = {"format": "QDQ", "mode": "static", "symmetric": True, "per_channel": True,
                        "op_types": list(QUANT_OPS), "calibration_method": "MinMax"}
    else:
        quantization = {"format": "QOperator", "mode": "dynamic", "symmetric_weights": True, "per_channel": True,
                        "op_types": list(CPU_OPS)}
    return write_manifest(folder, "onnx", sorted(files), **common, target=target, quantization=quantization,
                          gate=gate.to_dict(), parity={"reference": "onnx fp32", **parity})
