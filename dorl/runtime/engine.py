"""Build a TensorRT engine from a verified ONNX artifact, describe it, and check that it fits here.

TensorRT 10 (JetPack 6, Orin) builds the FP32 graph with the FP16 flag and LayerNormalization
pinned to FP32, or the Q/DQ graph with the INT8 flag (explicit quantization); the legacy
entropy calibrator is kept for an FP32 graph only. TensorRT 11 (JetPack 7, Thor) has no
precision flags and no calibrators: it builds strongly typed networks, so the precision must
already be in the graph (the FP16 or the Q/DQ ONNX artifact). `plan_build` decides which, as a
pure function; `build_engine` applies it. An engine only runs on the TensorRT version and GPU it
was built for, so its manifest records both and the command that re-creates it.

TensorRT and pycuda are imported inside functions: this module imports without them.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.deps import versions
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.trt_system import (  # noqa: F401  (re-exported: the engine API)
    TENSORRT_HINT,
    SystemDescription,
    check_compatible,
    check_engine_compatible,
    cuda_context,
    describe_system,
    engine_mismatches,
    query_gpu,
    require_pycuda,
    require_tensorrt,
    tensorrt_usable,
    trt_major,
)

if TYPE_CHECKING:
    import tensorrt as trt

HOST_FILES = ("head.safetensors",)
ENGINE_FILE = "model.engine"
ENGINE_PRECISIONS = ("fp16", "int8")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")


# -- what to build (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    """How TensorRT is asked for a precision: network typing, builder flags, FP32 pins, calibrator."""

    strongly_typed: bool
    flags: tuple[str, ...] = ()
    pin_layernorm_fp32: bool = False
    calibrate: bool = False


def validate_build_options(precision: str, max_batch: int, opt_batch: int | None, workspace_mb: int) -> None:
    """Raise ConfigError for an unknown precision or an impossible batch range or workspace."""
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"unknown engine precision {precision!r}: choose {' or '.join(ENGINE_PRECISIONS)}.")
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}.")
    if opt_batch is not None and not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"--opt-batch must be between 1 and --max-batch ({max_batch}), got {opt_batch}.")
    if workspace_mb < 1:
        raise ConfigError(f"--workspace must be at least 1 MB, got {workspace_mb}.")


def plan_build(trt_version: str, precision: str, onnx_precision: str, calibration: bool = False) -> BuildPlan:
    """Decide how to build `precision` from an ONNX graph of `onnx_precision` on this TensorRT.

    Args:
        trt_version: `tensorrt.__version__`.
        precision: the engine precision, "fp16" or "int8".
        onnx_precision: the ONNX artifact's manifest precision, "fp32", "fp16" or "int8" (Q/DQ).
        calibration: a calibration set or calibration cache is given (legacy INT8, TRT 10 only).

    Returns:
        The BuildPlan.

    Raises:
        ConfigError: the combination cannot be built here; the message says what to export.
        ArtifactError: the ONNX precision is unknown.
    """
    if onnx_precision not in ONNX_PRECISIONS:
        raise ArtifactError(f"the ONNX artifact has unknown precision {onnx_precision!r}: re-export it with dorl.")
    major = trt_major(trt_version)
    if major < 10:
        raise ConfigError(f"TensorRT {trt_version} is too old: dorl builds with TensorRT 10 or 11; {TENSORRT_HINT}.")
    export = f"run `dorl export <bundle> --precision {precision}` and build from that artifact"
    if onnx_precision == "int8" and precision != "int8":
        raise ConfigError(f"this ONNX artifact is the INT8 Q/DQ graph: build it with --precision int8, or {export}.")
    if major >= 11:
        if onnx_precision != precision:
            what = "an FP16 engine needs the FP16 graph" if precision == "fp16" else (
                "INT8 calibrators are gone, an INT8 engine needs the Q/DQ graph")
            raise ConfigError(f"TensorRT {trt_version} builds only strongly typed networks ({what}, this artifact is "
                              f"{onnx_precision}): {export}.")
        return BuildPlan(strongly_typed=True)
    if onnx_precision == precision == "fp16":
        return BuildPlan(strongly_typed=True)  # the graph already says which nodes stay FP32
    if onnx_precision == "fp16":
        raise ConfigError(f"an INT8 engine cannot be built from the FP16 graph: {export}.")
    flags = ("FP16", "OBEY_PRECISION_CONSTRAINTS")  # FP32 graph (FP16 engine) or Q/DQ graph (INT8 engine)
    if precision == "fp16":
        return BuildPlan(strongly_typed=False, flags=flags, pin_layernorm_fp32=True)
    if onnx_precision == "int8":
        return BuildPlan(strongly_typed=False, flags=flags + ("INT8",), pin_layernorm_fp32=True)
    if not calibration:
        raise ConfigError(f"an INT8 engine from the FP32 graph needs the Q/DQ graph ({export}), or on TensorRT 10 a "
                          "calibration cache or calibration set for the deprecated implicit quantization.")
    return BuildPlan(strongly_typed=False, flags=flags + ("INT8",), pin_layernorm_fp32=True, calibrate=True)


def rebuild_command(onnx_folder: str | Path, output_dir: str | Path, precision: str, max_batch: int,
                    opt_batch: int | None, workspace_mb: int, timing_cache: str | Path | None = None,
                    calibration_cache: str | Path | None = None) -> str:
    """The `dorl build` command line that re-creates an engine with these settings."""
    parts = ["dorl", "build", str(onnx_folder), "--precision", precision, "--max-batch", str(max_batch)]
    if opt_batch is not None:
        parts += ["--opt-batch", str(opt_batch)]
    parts += ["--workspace", str(workspace_mb)]
    if timing_cache is not None:
        parts += ["--timing-cache", str(timing_cache)]
    if calibration_cache is not None:
        parts += ["--calibration-cache", str(calibration_cache)]
    return shlex.join(parts + ["-o", str(output_dir)])


def engine_manifest_fields(onnx_manifest: Mapping[str, Any], system: SystemDescription, precision: str,
                           max_batch: int, opt_batch: int, workspace_mb: int, plan: BuildPlan,
                           command: str) -> dict[str, Any]:
    """The description written into an engine's manifest (beside the file hashes)."""
    return {
        "tensorrt_version": system.tensorrt_version,
        "gpu_name": system.gpu_name,
        "compute_capability": system.compute_capability,
        "precision": precision,
        "max_batch": max_batch,
        "opt_batch": opt_batch,
        "workspace_mb": workspace_mb,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "implicit_int8_calibration": plan.calibrate,
        "source_onnx": {
            "folder": str(onnx_manifest.get("folder")),
            "sha256": onnx_model_entry(onnx_manifest)[1],
            "precision": onnx_manifest.get("precision", "fp32"),
        },
        "inputs": onnx_manifest["inputs"],
        "outputs": onnx_manifest["outputs"],
        "class_names": onnx_manifest.get("class_names"),
        "image_size": onnx_manifest.get("image_size"),
        "rebuild_command": command,
        "source_bundle_sha256": onnx_manifest.get("source_bundle_sha256"),
        "head": onnx_manifest.get("head"),
        "versions": versions("numpy", "tensorrt", "pycuda") | {"tensorrt": system.tensorrt_version},
    }


def onnx_model_entry(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """File name and sha256 of an ONNX artifact's graph (model.onnx, or its only .onnx file)."""
    names = [name for name in manifest["files"] if name.endswith(".onnx")]
    name = "model.onnx" if "model.onnx" in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ArtifactError(f"{manifest.get('folder')} lists no single .onnx graph: re-export the artifact.")
    return name, str(manifest["files"][name]["sha256"])


def batch_input_spec(manifest: Mapping[str, Any]) -> tuple[str, tuple[int, ...]]:
    """Name and per-item shape of the single, batch-first input the engine profile is built for."""
    inputs = manifest.get("inputs") or []
    if len(inputs) != 1:
        raise ArtifactError(f"{manifest.get('folder')} has {len(inputs)} inputs; dorl engines take exactly one.")
    shape = list(inputs[0]["shape"])
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        raise ArtifactError(f"input {inputs[0]['name']!r} has shape {shape}: only the batch dimension may be dynamic.")
    return str(inputs[0]["name"]), tuple(int(d) for d in shape[1:])


def default_engine_dir(onnx_folder: str | Path, precision: str) -> Path:
    """Where `dorl build` writes an engine when -o is not given: beside the ONNX artifact."""
    folder = Path(onnx_folder).resolve()
    return folder.with_name(f"{folder.name}-{precision}-engine")


# -- the build (TensorRT) -----------------------------------------------------------------
def build_engine(onnx_artifact: str | Path, output_dir: str | Path, precision: str = "fp16", max_batch: int = 8,
                 opt_batch: int | None = None, workspace_mb: int = 1024, timing_cache: str | Path | None = None,
                 calibrator_cache: str | Path | None = None,
                 calibration_set: Iterable[dict[str, np.ndarray]] | None = None, verbose: bool = False) -> Path:
    """Build `model.engine` + manifest from an ONNX artifact.

    Args:
        onnx_artifact: the "onnx" artifact folder (checked against its manifest first).
        output_dir: the engine artifact folder to write.
        precision: "fp16" or "int8"; see `plan_build` for what each needs per TensorRT version.
        max_batch: largest batch of the optimisation profile (1..max_batch).
        opt_batch: batch TensorRT tunes for; None means max_batch.
        workspace_mb: limit of the builder's workspace pool (Jetson builds run out of memory).
        timing_cache: file read before and written after the build, to make rebuilds fast.
        calibrator_cache: legacy INT8 calibration cache (read if present, written after calibrating).
        calibration_set: batches keyed by input name for legacy INT8 calibration (TensorRT 10 only).
        verbose: TensorRT's verbose log.

    Returns:
        The engine artifact folder.
    """
    validate_build_options(precision, max_batch, opt_batch, workspace_mb)
    onnx_manifest = read_manifest(onnx_artifact, kinds="onnx")
    require_tensorrt("building a TensorRT engine")
    import tensorrt as trt

    has_cache = calibrator_cache is not None and Path(calibrator_cache).is_file()
    plan = plan_build(trt.__version__, precision, str(onnx_manifest.get("precision", "fp32")),
                      calibration=calibration_set is not None or has_cache)
    input_name, item_shape = batch_input_spec(onnx_manifest)
    system = describe_system()  # before the build: fail fast when the GPU cannot be queried
    opt = opt_batch or max_batch
    output_dir = Path(output_dir)
    if plan.calibrate and calibrator_cache is None:
        calibrator_cache = output_dir / "calibration.cache"
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(builder, logger, plan, Path(onnx_manifest["folder"]) / onnx_model_entry(onnx_manifest)[0])
    found = [network.get_input(i).name for i in range(network.num_inputs)]
    if found != [input_name]:
        raise ArtifactError(f"the ONNX graph's inputs {found} differ from its manifest's [{input_name!r}]: re-export it.")
    if plan.pin_layernorm_fp32:
        _pin_layernorm_fp32(network)
    config = _configure(builder, plan, input_name, item_shape, max_batch, opt, workspace_mb, timing_cache)
    calibration = (calibration_set, calibrator_cache, has_cache) if plan.calibrate else None
    serialized = _build(builder, network, config, input_name, (opt, *item_shape), calibration)
    if timing_cache is not None:
        Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache).write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / ENGINE_FILE).write_bytes(bytes(memoryview(serialized)))
    calibration_cache = Path(calibrator_cache).resolve() if plan.calibrate and calibrator_cache else None
    command = rebuild_command(Path(onnx_manifest["folder"]), output_dir.resolve(), precision, max_batch, opt_batch,
                              workspace_mb, Path(timing_cache).resolve() if timing_cache else None, calibration_cache)
    files = [ENGINE_FILE]
    for extra in HOST_FILES:  # the host-side head travels with the engine (site profiles, issue 7)
        if extra in onnx_manifest["files"]:
            shutil.copyfile(Path(onnx_manifest["folder"]) / extra, output_dir / extra)
            files.append(extra)
    write_manifest(output_dir, "engine", files,
                   **engine_manifest_fields(onnx_manifest, system, precision, max_batch, opt, workspace_mb, plan, command))
    return output_dir


def _parse(builder: trt.Builder, logger: trt.ILogger, plan: BuildPlan, onnx_path: Path) -> trt.INetworkDefinition:
    """Parse the ONNX file (external data beside it) into a network; report every parser error."""
    import tensorrt as trt

    # TRT 11 keeps STRONGLY_TYPED only as an ignored, deprecated flag: every network is strongly typed there.
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(strongly) if plan.strongly_typed and strongly is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        messages = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{messages}\n"
                            "Check the graph with `polygraphy inspect model`, or re-export it.")
    return network


def _pin_layernorm_fp32(network: trt.INetworkDefinition) -> int:
    """Keep LayerNormalization in FP32 under the FP16 flag (it overflows after attention)."""
    import tensorrt as trt

    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _configure(builder: trt.Builder, plan: BuildPlan, input_name: str, item_shape: tuple[int, ...], max_batch: int,
               opt: int, workspace_mb: int, timing_cache: str | Path | None) -> trt.IBuilderConfig:
    """Builder config: workspace limit, precision flags, the 1..max_batch profile, the timing cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.flags:  # names, so that TRT 11 (which has none of them) never looks them up
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, trt.Dims([1, *item_shape]), trt.Dims([opt, *item_shape]),
                      trt.Dims([max_batch, *item_shape]))
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache_bytes = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    return config


def _build(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, input_name: str,
           calibration_shape: tuple[int, ...], calibration: tuple[Any, Any, bool] | None) -> trt.IHostMemory:
    """Run the builder, with the legacy calibrator attached when `calibration` is (set, cache, has_cache)."""
    calibration_set, cache, has_cache = calibration if calibration is not None else (None, None, False)
    with contextlib.ExitStack() as stack:
        calibrator = None
        if calibration is not None:
            calibrator = _attach_calibrator(builder, config, stack, input_name, calibration_shape, calibration_set, cache)
        serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None and calibrator is not None and calibrator.batches_fed == 0 and not has_cache:
        raise ConfigError(f"the calibration set gave no full batch of {calibration_shape[0]} cells (the calibration "
                          "batch is --opt-batch): give a larger calibration set or a calibration cache.")
    if serialized is None:
        raise ArtifactError("TensorRT could not build the engine (its log above says why): rerun with --verbose, "
                            "or lower --max-batch or raise --workspace if it ran out of memory.")
    return serialized


def _attach_calibrator(builder: trt.Builder, config: trt.IBuilderConfig, stack: contextlib.ExitStack[Any],
                       input_name: str, shape: tuple[int, ...],
                       calibration_set: Iterable[dict[str, np.ndarray]] | None, cache: str | Path | None) -> Any:
    """Legacy implicit INT8 (TensorRT 10): an entropy calibrator over a fixed-shape profile."""
    import tensorrt as trt

    from dorl.calibration.trt_calibrator import make_entropy_calibrator

    require_pycuda("INT8 calibration")
    stack.enter_context(cuda_context())
    calibrator = make_entropy_calibrator(calibration_set or [], input_name, shape[0], cache)
    profile = builder.create_optimization_profile()
    dims = trt.Dims(list(shape))
    profile.set_shape(input_name, dims, dims, dims)
    config.set_calibration_profile(profile)
    config.int8_calibrator = calibrator
    return calibrator
