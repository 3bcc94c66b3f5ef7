"""What an engine build asks of TensorRT, decided before TensorRT is imported (pure, tested anywhere).

`plan_build` turns (TensorRT features, engine precision, ONNX graph precision) into a BuildPlan:
strongly typed or not, which builder flags, which ONNX op types to pin to FP32, and whether the
legacy calibrator runs. The same plan gives the `dorl build` and the `trtexec` command lines that
re-create the engine, both kept in its manifest.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dorl.errors import ArtifactError, ConfigError
from dorl.tensorrt.versions import TensorRTFeatures

ENGINE_FILE = "model.engine"
ENGINE_PRECISIONS = ("fp16", "int8")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default builder optimization level
OPT_LEVELS = range(6)


@dataclass(frozen=True)
class BuildPlan:
    """How TensorRT is asked for a precision.

    Attributes:
        strongly_typed: the graph's types are the engine's types (no precision flags).
        flags: BuilderFlag names to set (weakly typed networks on TensorRT 10 only).
        fp32_ops: ONNX op types whose layers are pinned to FP32 under the FP16 flag: the same set
            the FP16 ONNX graph keeps in FP32 (`dorl.export.fp16.FP32_OPS`).
        calibrate: TensorRT's legacy entropy calibrator computes the INT8 scales.
    """

    strongly_typed: bool
    flags: tuple[str, ...] = ()
    fp32_ops: tuple[str, ...] = ()
    calibrate: bool = False


def validate_build_options(precision: str, max_batch: int, opt_batch: int | None, workspace_mb: int,
                           opt_level: int = DEFAULT_OPT_LEVEL) -> None:
    """Raise ConfigError for an unknown precision, an impossible batch range, workspace or optimization level."""
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"unknown engine precision {precision!r}: choose {' or '.join(ENGINE_PRECISIONS)}.")
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}.")
    if opt_batch is not None and not 1 <= opt_batch <= max_batch:
        raise ConfigError(f"--opt-batch must be between 1 and --max-batch ({max_batch}), got {opt_batch}.")
    if workspace_mb < 1:
        raise ConfigError(f"--workspace must be at least 1 MB, got {workspace_mb}.")
    if opt_level not in OPT_LEVELS:
        raise ConfigError(f"--opt-level must be between {OPT_LEVELS[0]} and {OPT_LEVELS[-1]}, got {opt_level}.")


def plan_build(features: TensorRTFeatures, precision: str, onnx_precision: str, calibration: bool = False,
               fp32_ops: Sequence[str] = ()) -> BuildPlan:
    """Decide how to build `precision` from an ONNX graph of `onnx_precision` on this TensorRT.

    Args:
        features: `tensorrt_features(tensorrt.__version__)`.
        precision: the engine precision, "fp16" or "int8".
        onnx_precision: the ONNX artifact's manifest precision, "fp32", "fp16" or "int8" (Q/DQ).
        calibration: a calibration set or cache is given (legacy implicit INT8, TensorRT 10 only).
        fp32_ops: the op types to pin to FP32 when an FP16 engine comes from the FP32 graph.

    Returns:
        The BuildPlan.

    Raises:
        ConfigError: the combination cannot be built here; the message says what to export.
        ArtifactError: the ONNX precision is unknown.
    """
    if onnx_precision not in ONNX_PRECISIONS:
        raise ArtifactError(f"the ONNX artifact has unknown precision {onnx_precision!r}: re-export it with dorl.")
    version = f"TensorRT {features.version.major}.{features.version.minor}"
    export = f"run `dorl export <bundle> --precision {precision}` and build from that artifact"
    if onnx_precision == "int8" and precision != "int8":
        raise ConfigError(f"this ONNX artifact is the INT8 Q/DQ graph: build it with --precision int8, or {export}.")
    if onnx_precision == precision:
        if precision == "int8" and features.weak_typing:
            # Explicit quantization: INT8 where the Q/DQ nodes say, FP16 allowed for the float rest,
            # and no precision-constraint flag (NVIDIA's explicit-quantization guide says not to set one).
            return BuildPlan(strongly_typed=False, flags=("INT8", "FP16"))
        return BuildPlan(strongly_typed=True)  # the graph already holds every tensor's type
    if onnx_precision == "fp16":
        raise ConfigError(f"an INT8 engine cannot be built from the FP16 graph: {export}.")
    if not features.weak_typing:
        what = "an FP16 engine needs the FP16 graph" if precision == "fp16" else "an INT8 engine needs the Q/DQ graph"
        why = "has no precision flags" if not features.precision_flags else "deprecates weak typing"
        if precision == "int8" and calibration and features.calibrators:
            return BuildPlan(strongly_typed=False, flags=("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"),
                             fp32_ops=tuple(fp32_ops), calibrate=True)
        raise ConfigError(f"{version} {why}, so dorl builds strongly typed networks only ({what}, this artifact is "
                          f"{onnx_precision}): {export}.")
    flags = ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    if precision == "fp16":
        return BuildPlan(strongly_typed=False, flags=flags, fp32_ops=tuple(fp32_ops))
    if not calibration:
        raise ConfigError(f"an INT8 engine from the FP32 graph needs the Q/DQ graph ({export}), or on TensorRT 10 a "
                          "calibration cache or calibration set for the deprecated implicit quantization.")
    return BuildPlan(strongly_typed=False, flags=("INT8", *flags), fp32_ops=tuple(fp32_ops), calibrate=True)


# -- what re-creates the engine ---------------------------------------------------------------
def rebuild_command(onnx_folder: str | Path, output_dir: str | Path, precision: str, max_batch: int,
                    opt_batch: int | None, workspace_mb: int, timing_cache: str | Path | None = None,
                    calibration_cache: str | Path | None = None, opt_level: int = DEFAULT_OPT_LEVEL) -> str:
    """The `dorl build` command line that re-creates an engine with these settings."""
    parts = ["dorl", "build", str(onnx_folder), "--precision", precision, "--max-batch", str(max_batch)]
    if opt_batch is not None:
        parts += ["--opt-batch", str(opt_batch)]
    parts += ["--workspace", str(workspace_mb)]
    if opt_level != DEFAULT_OPT_LEVEL:
        parts += ["--opt-level", str(opt_level)]
    if timing_cache is not None:
        parts += ["--timing-cache", str(timing_cache)]
    if calibration_cache is not None:
        parts += ["--calibration-cache", str(calibration_cache)]
    return shlex.join(parts + ["-o", str(output_dir)])


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, plan: BuildPlan, input_name: str,
                    item_shape: Sequence[int], max_batch: int, opt_batch: int, workspace_mb: int, opt_level: int,
                    timing_cache: str | Path | None = None, calibration_cache: str | Path | None = None,
                    pinned_layers: Sequence[str] = ()) -> str:
    """The `trtexec` command line that builds the same engine (for NVIDIA's tools and bug reports).

    Args:
        pinned_layers: names of the network layers pinned to FP32 (known once the graph is parsed).
    """
    def shape(batch: int) -> str:
        return f"{input_name}:{'x'.join(str(d) for d in (batch, *item_shape))}"

    parts = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", f"--minShapes={shape(1)}",
             f"--optShapes={shape(opt_batch)}", f"--maxShapes={shape(max_batch)}",
             f"--memPoolSize=workspace:{workspace_mb}M", f"--builderOptimizationLevel={opt_level}"]
    if plan.strongly_typed:
        parts.append("--stronglyTyped")
    parts += [f"--{flag.lower()}" for flag in plan.flags if flag in ("FP16", "INT8")]
    if "OBEY_PRECISION_CONSTRAINTS" in plan.flags:
        parts.append("--precisionConstraints=obey")
    if pinned_layers:
        parts.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in pinned_layers))
        parts.append("--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in pinned_layers))
    if timing_cache is not None:
        parts.append(f"--timingCacheFile={timing_cache}")
    if calibration_cache is not None:
        parts.append(f"--calib={calibration_cache}")
    return shlex.join(parts)


# -- the ONNX artifact an engine comes from --------------------------------------------------
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
