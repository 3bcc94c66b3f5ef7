"""The device check: on a machine with an NVIDIA GPU and TensorRT, build, verify and time engines
from real ONNX exports, and write what happened to one JSON file.

For each ONNX artifact under a folder (e.g. `dorl demo`'s `onnx/`): the FP16 graph becomes an
FP16 engine, the Q/DQ graph an INT8 engine, and on TensorRT releases with weak typing (10.3) the
FP32 graph also an FP16 engine with the FP16 graph's FP32 ops pinned. Every engine is verified
on real cells against its graph (`dorl build --verify`), then timed at batch 1 and at its max batch
(plain and with CUDA-graph replay). One failing engine never loses the others: its error is
recorded. `scripts/device_check.py` is the command line.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dorl.errors import ConfigError, DorlError, MissingDependencyError

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class DeviceCheckSettings:
    """How far to go on the device (validated on construction)."""

    max_batch: int = 8
    workspace_mb: int = 1024
    opt_level: int = 3
    verify_cells: int = 64
    iterations: int = 100
    warmup: int = 10

    def __post_init__(self) -> None:
        if self.verify_cells < 1:
            raise ConfigError(f"the device check verifies every engine: give at least 1 cell, got {self.verify_cells}.")
        if self.iterations < 1 or self.warmup < 0:
            raise ConfigError(f"need at least 1 timed iteration and 0+ warm-up runs, got {self.iterations}, "
                              f"{self.warmup}.")


def preflight() -> dict[str, Any]:
    """This machine's TensorRT and GPU, or MissingDependencyError saying in one sentence what is missing."""
    from dorl.tensorrt.system import describe_system, require_cuda, require_tensorrt
    from dorl.tensorrt.versions import tensorrt_features

    require_tensorrt("the device check")
    require_cuda("the device check")
    try:
        system = describe_system()
    except DorlError as exc:
        raise MissingDependencyError(f"the device check needs an NVIDIA GPU and its driver: {exc}") from exc
    features = tensorrt_features(system.tensorrt_version)
    return {**system.to_manifest(), "features": {**asdict(features), "version": str(features.version)}}


def planned_engines(folder: str | Path, weak_typing: bool) -> list[tuple[str, Path, str]]:
    """(name, ONNX artifact folder, engine precision) for each ONNX artifact under `folder` (pure)."""
    from dorl.artifacts import read_manifest

    found = []
    for manifest_path in sorted(Path(folder).rglob("manifest.json")):
        manifest = read_manifest(manifest_path.parent, verify=False)
        if manifest["kind"] != "onnx" or manifest.get("target") == "cpu":
            continue
        precision = str(manifest.get("precision", "fp32"))
        if precision == "fp32" and not weak_typing:
            continue  # strongly typed TensorRT: FP16 comes from the FP16 graph only
        engine = "int8" if precision == "int8" else "fp16"
        name = engine if precision == engine else f"{engine}-from-{precision}"
        found.append((name, manifest_path.parent, engine))
    if not found:
        raise ConfigError(f"no ONNX artifact for TensorRT under {folder}: give the folder `dorl export` (or `dorl "
                          "demo`'s onnx/) wrote.")
    return found


def run_device_check(folder: str | Path, output: str | Path, settings: DeviceCheckSettings | None = None,
                     reporter: Reporter | None = None) -> dict[str, Any]:
    """Build, verify and time the engines of every ONNX artifact under `folder`; write `output` (JSON).

    Raises:
        MissingDependencyError: no TensorRT, cuda-python or GPU here (nothing is written).
    """
    settings = settings or DeviceCheckSettings()
    say = reporter or (lambda message: None)
    system = preflight()
    plans = planned_engines(folder, system["features"]["weak_typing"])
    output = Path(output)
    engines_dir = output.with_name(f"{output.stem}-engines")
    started = time.time()
    results = []
    for name, source, precision in plans:
        say(f"{name}: building from {source}")
        results.append(_check_engine(name, source, precision, engines_dir / name, settings))
        say(f"{name}: {results[-1]['status']}")
    report = {"machine": platform.platform(), "system": system, "folder": str(Path(folder).resolve()),
              "settings": asdict(settings), "engines": results, "duration_s": time.time() - started,
              "passed": all(r["status"] == "ok" for r in results)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _check_engine(name: str, source: Path, precision: str, engine_dir: Path,
                  settings: DeviceCheckSettings) -> dict[str, Any]:
    from dorl.artifacts import read_manifest
    from dorl.tensorrt.builder import BuildSettings, build_engine

    result: dict[str, Any] = {"name": name, "source": str(source), "precision": precision}
    try:
        result["tensorrt_compatibility"] = read_manifest(source, "onnx").get("tensorrt_compatibility")
        start = time.perf_counter()
        build_settings = BuildSettings(precision=precision, max_batch=settings.max_batch,
                                       workspace_mb=settings.workspace_mb, opt_level=settings.opt_level,
                                       verify_cells=settings.verify_cells,
                                       timing_cache=engine_dir.parent / "timing.cache")
        build_engine(source, engine_dir, build_settings)
        result["build_s"] = time.perf_counter() - start
        manifest = read_manifest(engine_dir, "engine")
        result.update(engine=str(engine_dir), verification=manifest["verification"],
                      trtexec_command=manifest["trtexec_command"], size_bytes=(engine_dir / "model.engine").stat().st_size)
        result["benchmark"] = benchmark_engine(engine_dir, settings)
        result["status"] = "ok"
    except (DorlError, RuntimeError, OSError, ValueError, MemoryError) as exc:
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    return result


def benchmark_engine(engine_dir: Path, settings: DeviceCheckSettings) -> dict[str, Any]:
    """Latency and throughput at batch 1 and at the max batch, plain and by CUDA-graph replay."""
    from dorl.benchmarks.timing import LatencyStats, throughput, time_calls
    from dorl.tensorrt.runner import TensorRTRunner
    from dorl.tensorrt.verify import verification_cells

    timings: dict[str, Any] = {}
    for graph in (None, settings.max_batch):
        with TensorRTRunner(engine_dir, cuda_graph_batch=graph) as runner:
            cells = verification_cells(settings.max_batch, int(runner.manifest["image_size"]))[0].pixels
            for batch in [graph] if graph is not None else sorted({1, settings.max_batch}):
                feed = {next(iter(runner.input_specs)): cells[:batch]}
                times = time_calls(functools.partial(runner.infer, feed), settings.iterations, settings.warmup)
                key = f"batch{batch}" + ("-cuda-graph" if graph else "")
                timings[key] = {"latency_ms": LatencyStats.from_times(times).to_dict(),
                                "throughput_cells_s": throughput(batch, times)}
    return timings
