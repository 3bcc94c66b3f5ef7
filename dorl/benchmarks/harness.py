"""The benchmark harness: every configuration on the same real cells, each in a fresh process.

Configurations: the PyTorch eager FP32 baseline (from a bundle), ONNX Runtime artifacts
(FP32/FP16/INT8) and TensorRT engines (skipped, with the reason, where TensorRT is absent). Per
configuration, in its own process so that peak memory is its own: load time; warm-up, then
trtexec-style latency and throughput per batch size; a pipeline pass over every cell at the
largest batch through the shipped `Analyzer` (decode, resize, inference, softmax, mask), whose time
per cell less the timed inference is its host work, recording the predictions; FLOPs per cell. The parent then scores accuracy on the labelled cells and top-1
agreement with the reference (the ONNX FP32 artifact, else the PyTorch model).
Run a single configuration with `python -m dorl.benchmarks.harness REQUEST.json RESULT.json`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.benchmarks import accuracy, timing
from dorl.benchmarks.memory import RssSampler, current_rss, memory_summary
from dorl.contract import check_tta, load_cells
from dorl.errors import ConfigError, DorlError

Reporter = Callable[[str], None]
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BenchSettings:
    """How to benchmark; validated on construction."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    iterations: int = 20  # timed calls per batch size
    warmup: int = 3  # untimed calls before them
    threads: int | None = None  # intra-op threads (ONNX Runtime, torch); None: each library's default
    device: str = "cpu"  # cpu, or cuda (ONNX Runtime CUDA provider, torch on the GPU)
    isolate: bool = True  # a fresh process per configuration (clean peak memory)
    peak_size: int = 1536  # side of the matmul that measures this machine's peak
    tta: str | None = None  # the analyzer's test-time augmentation (dorl.contract.TTA_MODES); None: each model's own

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}: e.g. 1,2,4,8.")
        if self.iterations < 1 or self.warmup < 0:
            raise ConfigError(f"need at least 1 timed iteration and 0+ warm-up runs, got {self.iterations}, {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}: omit it for the default.")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}.")
        if self.tta is not None:
            check_tta(self.tta, "--tta")


@dataclass(frozen=True)
class Target:
    """One configuration: what runs it and from which artifact."""

    name: str
    backend: str  # pytorch, onnxruntime or tensorrt
    path: str
    precision: str
    class_names: tuple[str, ...] = ()
    framing: dict[str, Any] | None = None  # the model's framing record; input "cell": the analyzer runs two passes
    tta: str = "none"  # the test-time augmentation the model records (dorl.contract.TTA_MODES)


def targets_from(artifacts: Sequence[str | Path], bundle: str | Path | None) -> list[Target]:
    """The configurations to run: the bundle's PyTorch baseline first, then each artifact.

    Raises:
        ArtifactError: an artifact is missing, its manifest malformed, or not an ONNX graph or engine (each
            file's content is verified when its configuration loads: a corrupt one fails that configuration).
    """
    from dorl.manifests import GraphDescription, parse_framing, parse_tta, read_artifact, read_bundle

    targets = []
    if bundle is not None:
        read = read_bundle(bundle, verify=False)
        record = {**read.metadata, "folder": str(bundle)}
        framing = parse_framing(record)  # refuses a malformed record now
        targets.append(Target("pytorch-eager-fp32", "pytorch", str(bundle), "fp32", read.class_names,
                              asdict(framing) if framing is not None else None, parse_tta(record)))
    for path in artifacts:
        manifest = read_artifact(path, ("onnx", "engine"), verify=False)
        assert isinstance(manifest, GraphDescription)
        backend = "onnxruntime" if manifest.kind == "onnx" else "tensorrt"
        target = manifest.data.get("target")
        variant = f"-{target}" if manifest.precision == "int8" and target else ""
        name = f"{backend}-{manifest.precision}{variant}"
        if any(t.name == name for t in targets):
            name = f"{name}:{manifest.folder.name}"
        targets.append(Target(name, backend, str(path), manifest.precision, manifest.class_names,
                              asdict(manifest.framing) if manifest.framing is not None else None, manifest.tta))
    if not targets:
        raise ConfigError("nothing to benchmark: give at least one artifact folder or --bundle.")
    return targets


def bench(
    artifacts: Sequence[str | Path],
    cells: accuracy.Cells,
    settings: BenchSettings,
    bundle: str | Path | None = None,
    reporter: Reporter | None = None,
    targets: Sequence[Target] | None = None,
) -> dict[str, Any]:
    """Benchmark every configuration on `cells` and return the report (JSON-ready).

    Args:
        artifacts: ONNX artifact and engine folders.
        cells: the real cells (see `accuracy.collect_cells`); labels score accuracy.
        settings: batch sizes, iterations, threads, device, isolation.
        bundle: a model bundle for the PyTorch eager FP32 baseline.
        reporter: called with one line of progress per step.
        targets: the configurations, when `targets_from` already read them.
    """
    from dorl.benchmarks.flops import add_efficiency, matmul_peak_gflops

    say = reporter or (lambda line: None)
    targets = list(targets) if targets is not None else targets_from(artifacts, bundle)
    say(f"measuring this machine's float32 matmul peak ({settings.peak_size}^3)")
    peak = matmul_peak_gflops(settings.peak_size, threads=settings.threads)
    results = []
    for i, target in enumerate(targets, 1):
        say(f"[{i}/{len(targets)}] {target.name}: {target.path}")
        results.append(_run_isolated(target, cells, settings) if settings.isolate else run_target(target, cells, settings))
        say(_outcome(results[-1]))
    accuracy.score(results, cells)
    add_efficiency(results, peak["gflops"])
    add_speedup(results)
    return {"format": "dorl-bench/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": _machine(peak), "settings": asdict(settings), "cells": cells.describe(),
            "reference": accuracy.reference_name(results), "configurations": results}


def _outcome(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return f"    {result['status']}: {result['reason']}"
    rows = [f"batch {b['batch']} {b['throughput_cells_s']:.2f} cells/s" for b in result["batches"] if b["status"] == "ok"]
    return f"    ok, loaded in {result['load_s']:.1f} s: " + ", ".join(rows)


def run_target(target: Target, cells: accuracy.Cells, settings: BenchSettings) -> dict[str, Any]:
    """Benchmark one configuration in this process; failures become a `status` and a `reason`."""
    result: dict[str, Any] = {**asdict(target), "status": "ok", "reason": None}
    skip = _skip_reason(target)
    if skip is not None:
        return {**result, "status": "skipped", "reason": skip}
    _import_backend(target)  # the library is not part of the artifact's load time or memory
    baseline = current_rss() or 0
    sampler = None if settings.isolate else RssSampler()
    try:
        with sampler or contextlib.nullcontext():
            result.update(_measure(target, cells, settings))
    except (DorlError, RuntimeError, ValueError, MemoryError) as exc:
        return {**result, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result["memory"] = memory_summary(baseline, sampler)
    return result


def _import_backend(target: Target) -> None:
    import importlib

    module = {"pytorch": "torch", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[target.backend]
    try:
        importlib.import_module(module)
    except ImportError:
        pass  # the session raises the error that says what to install


def _skip_reason(target: Target) -> str | None:
    from dorl.runtime.loader import tensorrt_installed

    if target.backend == "tensorrt" and not tensorrt_installed():
        return "TensorRT is not installed here: run `dorl bench` on the Jetson (JetPack ships TensorRT)."
    return None


def _measure(target: Target, cells: accuracy.Cells, settings: BenchSettings) -> dict[str, Any]:
    from dorl.benchmarks.sessions import open_session
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    start = time.perf_counter()
    session = open_session(target, settings)
    load_s = time.perf_counter() - start
    try:
        pixels = load_cells(cells.paths[: max(settings.batch_sizes)], session.image_size)
        batches = [_time_batch(session, pixels, b, settings) for b in settings.batch_sizes]
        timed = [b for b in batches if b["status"] == "ok"]
        largest = max((b["batch"] for b in timed), default=session.max_batch or 1)
        inference = next((b["latency_ms"]["p50"] / b["batch"] for b in timed if b["batch"] == largest), None)
        pipeline = accuracy.analyzer_pass(session.runner, session.class_names, session.image_size, cells, largest,
                                          inference, framing=target.framing, tta=settings.tta or target.tta)
        flops = session.flops()
        unfused = isinstance(session.runner, OnnxRuntimeRunner) and session.runner.qdq_unfused  # while active
    finally:
        session.close()
    return {"load_s": load_s, "size_bytes": session.size_bytes, "class_names": session.class_names,
            "flops": flops, "threads_used": session.threads, "batches": batches, "qdq_unfused": unfused, **pipeline}


def _time_batch(session: Any, pixels: np.ndarray, batch: int, settings: BenchSettings) -> dict[str, Any]:
    max_batch = session.max_batch
    if max_batch is not None and batch > max_batch:
        return {"batch": batch, "status": "skipped", "reason": f"above the engine's max batch {max_batch}"}
    feed = pixels[np.arange(batch) % len(pixels)]
    times = timing.time_calls(lambda: session.infer(feed), settings.iterations, settings.warmup)
    return {"batch": batch, "status": "ok", "latency_ms": timing.LatencyStats.from_times(times).to_dict(),
            "throughput_cells_s": timing.throughput(batch, times), "times_ms": times}


def _run_isolated(target: Target, cells: accuracy.Cells, settings: BenchSettings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dorl-bench-") as tmp:
        request, answer = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"target": asdict(target), "cells": asdict(cells), "settings": asdict(settings)}))
        done = subprocess.run([sys.executable, "-m", "dorl.benchmarks.harness", str(request), str(answer)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0 or not answer.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return {**asdict(target), "status": "failed", "reason": f"worker exited with {done.returncode}: {tail}"}
        return dict(json.loads(answer.read_text()))


def add_speedup(results: Sequence[dict[str, Any]]) -> None:
    """Per batch: throughput relative to the PyTorch eager baseline at the same batch size."""
    base = next((r for r in results if r["backend"] == "pytorch" and r["status"] == "ok"), None)
    if base is None:
        return
    reference = {row["batch"]: row["throughput_cells_s"] for row in base["batches"] if row["status"] == "ok"}
    for result in results:
        for row in result.get("batches", []):
            if row["status"] == "ok" and row["batch"] in reference:
                row["speedup_vs_pytorch"] = row["throughput_cells_s"] / reference[row["batch"]]


def _machine(peak: dict[str, Any]) -> dict[str, Any]:
    import os
    import platform

    from dorl.deps import versions

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "matmul_peak": peak,
            "versions": versions("numpy", "onnx", "onnxruntime", "torch", "tensorrt")}


def _worker(request_path: str, result_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    settings = BenchSettings(**{**request["settings"], "batch_sizes": tuple(request["settings"]["batch_sizes"])})
    cells = accuracy.Cells(**{k: tuple(v) if isinstance(v, list) else v for k, v in request["cells"].items()})
    target = Target(**{**request["target"], "class_names": tuple(request["target"]["class_names"])})
    result = run_target(target, cells, settings)
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
