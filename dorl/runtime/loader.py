"""Pick the runner for an artifact from its manifest: ONNX graph -> ONNX Runtime, engine -> TensorRT."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError, MissingDependencyError
from dorl.runtime.base import BaseRunner

BACKENDS = ("auto", "onnxruntime", "tensorrt")
RUNNABLE_KINDS = {"onnx": "onnxruntime", "engine": "tensorrt"}
ONNXRUNTIME_ONLY_OPTIONS = ("providers", "threads", "cache_dir")


def load_runner(path: str | Path, backend: str = "auto", **options: Any) -> BaseRunner:
    """An (inactive) runner for the artifact at `path`.

    Args:
        path: an "onnx" or "engine" artifact folder, or a file in it.
        backend: "auto" (from the manifest's kind), "onnxruntime" or "tensorrt"; it must match
            the artifact's kind.
        **options: passed to the runner (for ONNX Runtime: providers, threads, verify, cache_dir). The
            ONNX Runtime-only options are dropped for an engine.

    Returns:
        An OnnxRuntimeRunner or TensorRTRunner; use it as a context manager.

    Raises:
        ArtifactError: not a runnable artifact, or the backend does not match its kind.
        MissingDependencyError: TensorRT is needed and not installed.
    """
    if backend not in BACKENDS:
        raise ArtifactError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
    manifest = read_manifest(path, verify=False)  # the runner verifies the files
    kind = manifest["kind"]
    if kind not in RUNNABLE_KINDS:
        raise ArtifactError(
            f"{manifest['folder']} is a {kind!r} artifact, which cannot be run: export it with `dorl export` "
            "and give the ONNX artifact (or a TensorRT engine from `dorl build`)."
        )
    needed = RUNNABLE_KINDS[kind]
    if backend not in ("auto", needed):
        hint = "build an engine from it with `dorl build`" if kind == "onnx" else "use the ONNX artifact it was built from"
        raise ArtifactError(f"{manifest['folder']} is an {kind!r} artifact, which {backend} cannot run: {hint}.")
    if kind == "onnx":
        from dorl.runtime.onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, **options)
    engine_options = {k: v for k, v in options.items() if k not in ONNXRUNTIME_ONLY_OPTIONS}
    return _tensorrt_runner_class()(path, **engine_options)


def tensorrt_installed() -> bool:
    """True when the real tensorrt package is importable.

    `tensorrt-stubs` (installed for type-checking) leaves a `tensorrt` namespace folder of .pyi
    files, which find_spec reports without an origin; that is not TensorRT.
    """
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def _tensorrt_runner_class() -> Any:
    if not tensorrt_installed():
        raise MissingDependencyError(
            "running a TensorRT engine needs the Python package 'tensorrt' (JetPack ships it; elsewhere "
            "`pip install 'dorl[trt]'`), or run the ONNX artifact with --backend onnxruntime."
        )
    try:
        from dorl.tensorrt.runner import TensorRTRunner
    except ModuleNotFoundError as exc:
        if exc.name != "dorl.tensorrt.runner":
            raise MissingDependencyError(
                f"running a TensorRT engine needs the Python package '{exc.name}', which is not installed: "
                "`pip install 'dorl[trt]'`."
            ) from exc
        raise ArtifactError(
            "this installation of dorl has no TensorRT runner: upgrade dorl, or run the ONNX artifact instead."
        ) from exc
    return TensorRTRunner
