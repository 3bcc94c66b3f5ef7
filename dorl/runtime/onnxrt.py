"""ONNX Runtime backend: runs an exported ONNX artifact on the CPU, CUDA or TensorRT provider.

onnxruntime is imported when the runner is activated, not when this module is imported. The
tensor names and specs come from the artifact's manifest, and are checked against the graph.

The default picks CUDA where onnxruntime-gpu offers it, else the CPU. ONNX Runtime's TensorRT
provider is opt-in (`providers=["tensorrt", ...]`): it builds a TensorRT engine when the session
starts, which takes minutes on a Jetson, so its engine and timing caches are kept in a folder
(`tensorrt-cache` inside the artifact folder, or `cache_dir`) and later starts reuse them.

A Q/DQ INT8 graph (made for TensorRT) runs on the CPU provider with its Q/DQ pairs left unfused,
computing what TensorRT computes (`qdq_unfused`): fused, ONNX Runtime's integer kernels add
pairs of u8 x s8 products in 16 bits on x86 CPUs without VNNI and saturate. Measured on the full
demo's INT8 graph: fused, it agreed with FP32 on 8 of 40 cells in the analyzer; unfused, 36 of 40.
Unfused it is no faster than FP32; the dynamic `-cpu` INT8 variant is the one made for CPU speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.deps import require
from dorl.errors import ArtifactError, ConfigError, MissingDependencyError
from dorl.runtime.base import BaseRunner, RunnerError, TensorSpec

# Preference order of the default; ONNX Runtime falls back along the list node by node. The
# TensorRT provider is not in it: it is asked for by name (see the module docstring).
PROVIDER_PRIORITY = ("CUDAExecutionProvider", "CPUExecutionProvider")
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
TENSORRT_CACHE_DIR = "tensorrt-cache"
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def specs_from_manifest(manifest: dict[str, Any], key: str) -> list[TensorSpec]:
    """The input or output TensorSpecs recorded in a manifest (key "inputs" or "outputs")."""
    try:
        specs = [TensorSpec.from_dict(entry) for entry in manifest[key]]
    except (KeyError, TypeError) as exc:
        raise ArtifactError(
            f"the manifest in {manifest.get('folder')} has no valid {key!r} list: re-export the artifact."
        ) from exc
    if not specs:
        raise ArtifactError(f"the manifest in {manifest.get('folder')} lists no {key}: re-export the artifact.")
    return specs


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The execution providers to ask ONNX Runtime for.

    Args:
        requested: provider names or aliases (cpu, cuda, tensorrt) in priority order; None
            picks every provider of PROVIDER_PRIORITY (CUDA, CPU) that this onnxruntime offers.
        available: `onnxruntime.get_available_providers()`.

    Returns:
        Full provider names, in priority order.
    """
    if requested is None:
        chosen = [p for p in PROVIDER_PRIORITY if p in available]
        return chosen or ["CPUExecutionProvider"]
    chosen = [PROVIDER_ALIASES.get(name.lower(), name) for name in requested]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise MissingDependencyError(
            f"ONNX Runtime provider(s) {', '.join(missing)} are not available here (available: "
            f"{', '.join(available)}): install onnxruntime-gpu for CUDA/TensorRT, or ask for the cpu provider."
        )
    return chosen


def provider_options(providers: Sequence[str], cache_dir: str | Path) -> list[dict[str, str]]:
    """Options for each provider: the TensorRT provider's engine and timing caches go to `cache_dir`."""
    cache = str(Path(cache_dir).resolve())
    tensorrt = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache}
    return [dict(tensorrt) if name == TENSORRT_PROVIDER else {} for name in providers]


def model_file(manifest: dict[str, Any]) -> Path:
    """The ONNX file of an artifact: model.onnx, or the only .onnx file its manifest lists."""
    names = [name for name in manifest["files"] if name.endswith(".onnx")]
    name = "model.onnx" if "model.onnx" in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ArtifactError(
            f"{manifest['folder']} lists {len(names)} .onnx files and none is model.onnx: re-export the artifact."
        )
    return Path(manifest["folder"]) / name


class OnnxRuntimeRunner(BaseRunner):
    """Runs an "onnx" artifact with ONNX Runtime."""

    def __init__(
        self,
        artifact: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        """Read and check the artifact; nothing is loaded until activate().

        Args:
            artifact: the artifact folder (or a file in it).
            providers: execution providers or aliases in priority order; None: CUDA if this
                onnxruntime has it, else the CPU. "tensorrt" must be asked for.
            threads: intra-op threads; None lets ONNX Runtime decide.
            verify: check every file's sha256 against the manifest.
            cache_dir: where the TensorRT provider keeps its engine and timing caches; None:
                `tensorrt-cache` in the artifact folder.
        """
        self.manifest = read_manifest(artifact, "onnx", verify=verify)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(self.manifest["folder"]) / TENSORRT_CACHE_DIR
        self.model_path = model_file(self.manifest)
        self.requested_providers = list(providers) if providers is not None else None
        if threads is not None and threads < 1:
            raise RunnerError(f"threads must be at least 1, got {threads}: omit it to let ONNX Runtime decide.")
        self.threads = threads
        self.session: Any = None
        super().__init__(
            specs_from_manifest(self.manifest, "inputs"),
            specs_from_manifest(self.manifest, "outputs"),
            name=f"onnxruntime:{Path(self.manifest['folder']).name}",
        )

    @property
    def qdq_graph(self) -> bool:
        """Whether the artifact is a Q/DQ INT8 graph (run unfused on the CPU: see the module docstring)."""
        quantization = self.manifest.get("quantization")
        return isinstance(quantization, dict) and quantization.get("format") == "QDQ"

    @property
    def qdq_unfused(self) -> bool:
        """Whether the active session runs the graph's Q/DQ pairs unfused (a Q/DQ graph on the CPU provider)."""
        return self.qdq_graph and self.providers[:1] == ["CPUExecutionProvider"]

    @property
    def providers(self) -> list[str]:
        """The providers the active session uses (empty before activate())."""
        return list(self.session.get_providers()) if self.session is not None else []

    def activate_impl(self) -> None:
        ort = require("onnxruntime", "running an ONNX artifact")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        providers = resolve_providers(self.requested_providers, ort.get_available_providers())
        if TENSORRT_PROVIDER in providers:
            self._make_cache_dir()
        if self.qdq_graph and providers[0] == "CPUExecutionProvider":
            options.add_session_config_entry("session.disable_quant_qdq", "1")  # see the module docstring
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers,
                                           provider_options=provider_options(providers, self.cache_dir))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ArtifactError(
                f"ONNX Runtime cannot load {self.model_path} ({exc}): the graph is invalid for this "
                "onnxruntime; re-export it or upgrade onnxruntime."
            ) from exc
        self._check_names(session)
        self.session = session

    def _make_cache_dir(self) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"ONNX Runtime's TensorRT provider keeps its engine cache in {self.cache_dir}, which "
                              f"cannot be created ({exc.strerror}): give a writable cache_dir.") from exc

    def _check_names(self, session: Any) -> None:
        graph_inputs = sorted(i.name for i in session.get_inputs())
        graph_outputs = {o.name for o in session.get_outputs()}
        if graph_inputs != sorted(self.input_specs) or not set(self.output_specs) <= graph_outputs:
            raise ArtifactError(
                f"{self.model_path} has inputs {graph_inputs} and outputs {sorted(graph_outputs)}, but its "
                f"manifest names {sorted(self.input_specs)} and {sorted(self.output_specs)}: re-export the artifact."
            )

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.output_specs)
        try:
            outputs = self.session.run(names, feed)
        except Exception as exc:
            raise RunnerError(f"ONNX Runtime failed on {self.model_path} ({exc}): check the input batch.") from exc
        return dict(zip(names, outputs))

    def deactivate_impl(self) -> None:
        self.session = None
