"""Build a TensorRT engine from a verified ONNX artifact, check it on real cells, describe it.

`plan_build` (pure, `dorl.tensorrt.plan`) decides from the TensorRT version how a precision is
asked for: strongly typed from the FP16 or Q/DQ graph (TensorRT 11, and 10.12+ where weak typing
is deprecated), or on TensorRT 10.3 with builder flags (the FP32 graph with the FP16 flag and the
FP16 graph's FP32 op set pinned; the Q/DQ graph with INT8 + FP16 and no precision constraints).
`build_engine` applies the plan, runs the new engine beside its ONNX graph on real cells
(`dorl.tensorrt.verify`), and writes it only when it holds. An engine only runs on the TensorRT
release and GPU it was built for, so its manifest records both and the commands that re-create it.

TensorRT is imported inside functions: this module imports without it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.deps import require, versions
from dorl.errors import ArtifactError, ConfigError
from dorl.tensorrt.plan import (
    DEFAULT_OPT_LEVEL,
    ENGINE_FILE,
    BuildPlan,
    batch_input_spec,
    onnx_model_entry,
    plan_build,
    rebuild_command,
    trtexec_command,
    validate_build_options,
)
from dorl.tensorrt.system import SystemDescription, describe_system, require_tensorrt
from dorl.tensorrt.verify import DEFAULT_VERIFY_CELLS, verification_cells, verify_engine
from dorl.tensorrt.versions import tensorrt_features

if TYPE_CHECKING:
    import tensorrt as trt

HOST_FILES = ("head.safetensors",)
# How TensorRT names the layers each FP16-fragile ONNX op becomes: (LayerType, the layer's `op`
# enum attribute and member, or None). Reductions the parser decomposes keep a REDUCE layer.
FP32_LAYER_KINDS: dict[str, tuple[str, str | None, str | None]] = {
    "LayerNormalization": ("NORMALIZATION", None, None),
    "Softmax": ("SOFTMAX", None, None),
    "LogSoftmax": ("SOFTMAX", None, None),
    "ReduceMean": ("REDUCE", None, None),
    "ReduceSum": ("REDUCE", None, None),
    "ReduceSumSquare": ("REDUCE", None, None),
    "ReduceL2": ("REDUCE", None, None),
    "ReduceLogSumExp": ("REDUCE", None, None),
    "ReduceMax": ("REDUCE", None, None),
    "ReduceMin": ("REDUCE", None, None),
    "Pow": ("ELEMENTWISE", "ElementWiseOperation", "POW"),
    "Sqrt": ("UNARY", "UnaryOperation", "SQRT"),
    "Sin": ("UNARY", "UnaryOperation", "SIN"),
    "Cos": ("UNARY", "UnaryOperation", "COS"),
}


@dataclass(frozen=True)
class BuildSettings:
    """The user's choices for one engine build (validated on construction)."""

    precision: str = "fp16"
    max_batch: int = 8
    opt_batch: int | None = None
    workspace_mb: int = 1024
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: str | Path | None = None
    calibration_cache: str | Path | None = None
    verify_cells: int = DEFAULT_VERIFY_CELLS  # 0: do not verify
    verify_images: tuple[str | Path, ...] = ()
    verbose: bool = False

    def __post_init__(self) -> None:
        validate_build_options(self.precision, self.max_batch, self.opt_batch, self.workspace_mb, self.opt_level)
        if self.verify_cells < 0:
            raise ConfigError(f"--verify must be 0 (off) or a number of cells, got {self.verify_cells}.")

    @property
    def opt(self) -> int:
        return self.opt_batch or self.max_batch


def engine_manifest_fields(onnx_manifest: Mapping[str, Any], system: SystemDescription, settings: BuildSettings,
                           plan: BuildPlan, commands: Mapping[str, str], pinned: Sequence[str] = ()) -> dict[str, Any]:
    """The description written into an engine's manifest (beside the file hashes)."""
    return {
        **system.to_manifest(),
        "precision": settings.precision,
        "max_batch": settings.max_batch,
        "opt_batch": settings.opt,
        "workspace_mb": settings.workspace_mb,
        "opt_level": settings.opt_level,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "fp32_ops": list(plan.fp32_ops),
        "fp32_pinned_layers": len(pinned),
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
        "rebuild_command": commands["dorl"],
        "trtexec_command": commands["trtexec"],
        "source_bundle_sha256": onnx_manifest.get("source_bundle_sha256"),
        "head": onnx_manifest.get("head"),
        "framing": onnx_manifest.get("framing"),  # the runtime frames each image as the model was trained
        "tta": onnx_manifest.get("tta", "none"),  # and applies the test-time augmentation it was chosen with
        "versions": versions("numpy", "tensorrt", "cuda-python", "cuda-bindings") | {"tensorrt": system.tensorrt_version},
    }


# -- the build (TensorRT) -----------------------------------------------------------------
def build_engine(onnx_artifact: str | Path, output_dir: str | Path, settings: BuildSettings | None = None,
                 calibration_set: Iterable[dict[str, np.ndarray]] | None = None, overwrite: bool = False) -> Path:
    """Build, verify and write `model.engine` + manifest from an ONNX artifact.

    Args:
        onnx_artifact: the "onnx" artifact folder (checked against its manifest first).
        output_dir: the engine artifact folder to write, atomically and only once the engine passed
            verification (locked for the whole build).
        settings: precision, batch profile, workspace, optimization level, caches and verification.
        calibration_set: batches keyed by input name for legacy INT8 calibration (TensorRT 10 only).
        overwrite: replace an existing engine artifact at `output_dir` (never anything else).

    Returns:
        The engine artifact folder.

    Raises:
        OutputError: `output_dir` may not be written (checked before anything is built).
        VerificationError: the engine drifts from its ONNX graph past its precision's thresholds.
    """
    from dorl.data.scan import require_existing
    from dorl.safe_write import check_output, output_lock

    settings = settings or BuildSettings()
    inputs = [onnx_artifact, *settings.verify_images]
    require_existing(settings.verify_images, "--verify-images files or folders of cell images")
    check_output(output_dir, kind="engine", overwrite=overwrite, inputs=inputs)
    with output_lock(output_dir):
        return _build_checked(onnx_artifact, Path(output_dir), settings, calibration_set, overwrite, inputs)


def _build_checked(onnx_artifact: str | Path, output_dir: Path, settings: BuildSettings,
                   calibration_set: Iterable[dict[str, np.ndarray]] | None, overwrite: bool,
                   inputs: list[Any]) -> Path:
    from dorl.safe_write import atomic_folder

    onnx_manifest = read_manifest(onnx_artifact, kinds="onnx")
    input_name, item_shape = batch_input_spec(onnx_manifest)
    cells = None
    if settings.verify_cells:  # before the slow build: a bad image folder or no onnxruntime fails fast
        require("onnxruntime", "verifying the engine against its ONNX graph (--verify 0 skips it)")
        from dorl.manifests import parse_framing

        cells = verification_cells(settings.verify_cells, int(item_shape[0]), settings.verify_images,
                                   parse_framing(onnx_manifest))
    require_tensorrt("building a TensorRT engine")
    import tensorrt as trt

    from dorl.export.fp16 import FP32_OPS

    has_cache = settings.calibration_cache is not None and Path(settings.calibration_cache).is_file()
    plan = plan_build(tensorrt_features(trt.__version__), settings.precision,
                      str(onnx_manifest.get("precision", "fp32")), calibration_set is not None or has_cache, FP32_OPS)
    system = describe_system()  # before the build: fail fast when the GPU cannot be queried
    calibration_cache = settings.calibration_cache
    if plan.calibrate and calibration_cache is None:  # beside the engine folder, which is replaced as a whole
        calibration_cache = output_dir.with_name(output_dir.name + ".calibration.cache")
    onnx_path = Path(onnx_manifest["folder"]) / onnx_model_entry(onnx_manifest)[0]
    serialized, pinned = _build_serialized(onnx_path, plan, settings, input_name, item_shape,
                                           (calibration_set, calibration_cache, has_cache) if plan.calibrate else None)
    commands = _commands(onnx_manifest, onnx_path, output_dir, settings, plan, input_name, item_shape, pinned,
                         calibration_cache if plan.calibrate else None)
    fields = engine_manifest_fields(onnx_manifest, system, settings, plan, commands, pinned)
    with atomic_folder(output_dir, kind="engine", overwrite=overwrite, inputs=inputs) as stage:
        files = _write_files(stage, serialized, onnx_manifest)
        write_manifest(stage, "engine", files, **fields)
        if cells is not None:
            result = verify_engine(stage, onnx_manifest["folder"], cells[0], settings.precision, cells[1])
            fields["verification"] = result.to_dict()
        else:
            fields["verification"] = None
        write_manifest(stage, "engine", files, **fields)
    return output_dir


def _build_serialized(onnx_path: Path, plan: BuildPlan, settings: BuildSettings, input_name: str,
                      item_shape: tuple[int, ...], calibration: tuple[Any, Any, bool] | None) -> tuple[bytes, list[str]]:
    """Parse, configure and build; returns the plan bytes and the names of the layers pinned to FP32."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(builder, logger, plan, onnx_path)
    found = [network.get_input(i).name for i in range(network.num_inputs)]
    if found != [input_name]:
        raise ArtifactError(f"the ONNX graph's inputs {found} differ from its manifest's [{input_name!r}]: re-export it.")
    pinned = pin_fp32(network, plan.fp32_ops)
    config = _configure(builder, plan, settings, input_name, item_shape)
    serialized = _build(builder, network, config, input_name, (settings.opt, *item_shape), calibration)
    if settings.timing_cache is not None:
        Path(settings.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.timing_cache).write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized)), pinned


def _commands(onnx_manifest: Mapping[str, Any], onnx_path: Path, output_dir: Path, settings: BuildSettings,
              plan: BuildPlan, input_name: str, item_shape: tuple[int, ...], pinned: Sequence[str],
              calibration_cache: str | Path | None) -> dict[str, str]:
    timing = Path(settings.timing_cache).resolve() if settings.timing_cache else None
    calib = Path(calibration_cache).resolve() if calibration_cache else None
    out = output_dir.resolve()
    return {
        "dorl": rebuild_command(Path(onnx_manifest["folder"]), out, settings.precision, settings.max_batch,
                                settings.opt_batch, settings.workspace_mb, timing, calib, settings.opt_level),
        "trtexec": trtexec_command(onnx_path, out / ENGINE_FILE, plan, input_name, item_shape, settings.max_batch,
                                   settings.opt, settings.workspace_mb, settings.opt_level, timing, calib, pinned),
    }


def _write_files(folder: Path, serialized: bytes, onnx_manifest: Mapping[str, Any]) -> list[str]:
    (folder / ENGINE_FILE).write_bytes(serialized)
    files = [ENGINE_FILE]
    for extra in HOST_FILES:  # the host-side head travels with the engine (site profiles)
        if extra in onnx_manifest["files"]:
            shutil.copyfile(Path(onnx_manifest["folder"]) / extra, folder / extra)
            files.append(extra)
    return files




def _parse(builder: trt.Builder, logger: trt.ILogger, plan: BuildPlan, onnx_path: Path) -> trt.INetworkDefinition:
    """Parse the ONNX file (external data beside it) into a network; report every parser error."""
    import tensorrt as trt

    # TensorRT 11 keeps STRONGLY_TYPED only as an ignored flag: every network is strongly typed there.
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(strongly) if plan.strongly_typed and strongly is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        messages = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{messages}\n"
                            "Check the graph with `polygraphy inspect model`, or re-export it.")
    return network


def pin_fp32(network: trt.INetworkDefinition, onnx_ops: Sequence[str]) -> list[str]:
    """Pin the layers `onnx_ops` become (see FP32_LAYER_KINDS) to FP32; returns their names."""
    import tensorrt as trt

    kinds = {FP32_LAYER_KINDS[op] for op in onnx_ops}
    floats = (trt.float32, trt.float16)
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.num_outputs == 0 or layer.get_output(0).dtype not in floats:
            continue  # shape arithmetic (integer reductions, powers) has no precision to pin
        for layer_type, enum, member in kinds:
            if layer.type != getattr(trt.LayerType, layer_type):
                continue
            if enum is not None and member is not None:
                typed = _as_typed_layer(layer, layer_type)
                if typed.op != getattr(getattr(trt, enum), member):
                    continue
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned.append(layer.name)
            break
    return pinned


def _as_typed_layer(layer: trt.ILayer, layer_type: str) -> Any:
    """The layer as its subclass, whose `op` says which elementwise or unary operation it is."""
    import tensorrt as trt

    layer.__class__ = {"ELEMENTWISE": trt.IElementWiseLayer, "UNARY": trt.IUnaryLayer}[layer_type]
    return layer


def _configure(builder: trt.Builder, plan: BuildPlan, settings: BuildSettings, input_name: str,
               item_shape: tuple[int, ...]) -> trt.IBuilderConfig:
    """Builder config: workspace, optimization level, precision flags, the 1..max_batch profile, the timing cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.opt_level
    for flag in plan.flags:  # names, so that TensorRT 11 (which has none of them) never looks them up
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, trt.Dims([1, *item_shape]), trt.Dims([settings.opt, *item_shape]),
                      trt.Dims([settings.max_batch, *item_shape]))
    config.add_optimization_profile(profile)
    if settings.timing_cache is not None:
        path = Path(settings.timing_cache)
        cache_bytes = path.read_bytes() if path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    return config


def _build(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, input_name: str,
           calibration_shape: tuple[int, ...], calibration: tuple[Any, Any, bool] | None) -> trt.IHostMemory:
    """Run the builder, with the legacy calibrator attached when `calibration` is (set, cache, has_cache)."""
    calibration_set, cache, has_cache = calibration if calibration is not None else (None, None, False)
    calibrator = None
    try:
        if calibration is not None:
            calibrator = _attach_calibrator(builder, config, input_name, calibration_shape, calibration_set, cache)
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None and calibrator is not None and calibrator.batches_fed == 0 and not has_cache:
        raise ConfigError(f"the calibration set gave no full batch of {calibration_shape[0]} cells (the calibration "
                          "batch is --opt-batch): give a larger calibration set or a calibration cache.")
    if serialized is None:
        raise ArtifactError("TensorRT could not build the engine (its log above says why): rerun with --verbose, "
                            "or lower --max-batch or raise --workspace if it ran out of memory.")
    return serialized


def _attach_calibrator(builder: trt.Builder, config: trt.IBuilderConfig, input_name: str, shape: tuple[int, ...],
                       calibration_set: Iterable[dict[str, np.ndarray]] | None, cache: str | Path | None) -> Any:
    """Legacy implicit INT8 (TensorRT 10): an entropy calibrator over a fixed-shape profile."""
    import tensorrt as trt

    from dorl.tensorrt.calibrator import make_entropy_calibrator

    calibrator = make_entropy_calibrator(calibration_set or [], input_name, shape[0], cache)
    profile = builder.create_optimization_profile()
    dims = trt.Dims(list(shape))
    profile.set_shape(input_name, dims, dims, dims)
    config.set_calibration_profile(profile)
    config.int8_calibrator = calibrator
    return calibrator
