"""One interface over the benchmarked backends: uint8 NHWC cells in, the graph's named outputs out.

`RunnerSession` wraps a runtime runner (ONNX Runtime or TensorRT, torch-free); `TorchSession`
runs the bundle's `DoRLModel` in eager FP32 behind a runner of its own (`TorchRunner`), fed as
the export wrapper feeds the graph (NHWC uint8 → NCHW float 0–255). Each session's `runner` is
what the shipped `Analyzer` runs in the benchmark's end-to-end pass, so every configuration is
timed through the same host code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dorl.contract import (
    BATCH_DIM,
    FEATURE,
    INPUT_NAME,
    LOGITS,
    MANIFEST_FILE,
    MASK_LOGITS,
    OUTPUT_NAMES,
    PROBS,
    to_nchw_float,
)
from dorl.manifests import EngineManifest, GraphDescription, Manifest, OnnxManifest, read_artifact, read_onnx
from dorl.runtime.base import BaseRunner, TensorSpec


def folder_bytes(manifest: Manifest) -> int:
    """Size on disk of an artifact: the sum of the files its manifest lists."""
    return sum(entry.bytes for entry in manifest.files.values())


class RunnerSession:
    """An ONNX artifact or engine, run through `dorl.runtime.load_runner`."""

    def __init__(self, path: str, device: str, threads: int | None) -> None:
        from dorl.runtime.loader import load_runner

        manifest = read_artifact(path, ("onnx", "engine"), verify=False)  # the runner verifies the files
        assert isinstance(manifest, GraphDescription)
        options: dict[str, Any] = {} if manifest.kind == "engine" else {
            "providers": ["cuda"] if device == "cuda" else ["cpu"], "threads": threads}
        self.runner = load_runner(path, **options)
        self.runner.activate()
        self.manifest = manifest
        self.input_name = next(iter(self.runner.input_specs))
        self.image_size = int(manifest.image_size or self.runner.input_specs[self.input_name].shape[1])
        self.class_names = list(manifest.class_names)
        self.size_bytes = folder_bytes(manifest)
        self.max_batch = manifest.max_batch if isinstance(manifest, EngineManifest) else None
        self.threads = threads

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({self.input_name: pixels})

    def close(self) -> None:
        self.runner.deactivate()

    def flops(self) -> dict[str, Any] | None:
        """FLOPs per cell from the ONNX graph (an engine's source graph, where it is still there)."""
        from dorl.benchmarks.flops import count_flops

        manifest = self.manifest
        if isinstance(manifest, EngineManifest):
            source = Path(str(manifest.source_onnx.get("folder", "")))
            if not (source / MANIFEST_FILE).is_file():
                return None
            manifest = read_onnx(source, verify=False)
        assert isinstance(manifest, OnnxManifest)
        return count_flops(manifest.model_path, batch=1).to_dict()


class TorchRunner(BaseRunner):
    """A DoRLModel in eager mode as a runner: the graph's contract (uint8 [batch,S,S,3] in, the named outputs out)."""

    def __init__(self, model: Any, device: str) -> None:
        import torch

        self.torch, self.model, self.device = torch, model, device
        config = model.config
        size, classes, mask = config.image_size, config.num_classes, config.image_size // 4
        shapes = {LOGITS: [classes], PROBS: [classes], FEATURE: [model.feature_dim],
                  MASK_LOGITS: [config.num_mask_channels, mask, mask]}
        super().__init__([TensorSpec(INPUT_NAME, "uint8", (BATCH_DIM, size, size, 3))],
                         [TensorSpec(name, "float32", (BATCH_DIM, *shapes[name])) for name in OUTPUT_NAMES],
                         name=f"pytorch:{config.encoder}")

    def forward(self, pixels: np.ndarray) -> dict[str, Any]:
        images = self.torch.from_numpy(to_nchw_float(pixels)).to(self.device)
        with self.torch.inference_mode():
            return dict(self.model(images))

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value.float().cpu().numpy() for name, value in self.forward(feed[INPUT_NAME]).items()}

    def deactivate_impl(self) -> None:
        pass


class TorchSession:
    """The PyTorch eager FP32 baseline from a model bundle."""

    def __init__(self, path: str, device: str, threads: int | None) -> None:
        import torch

        from dorl.bundle import load_bundle
        from dorl.manifests import read_bundle

        if threads is not None:
            torch.set_num_threads(threads)
        manifest = read_bundle(path)
        self.runner = TorchRunner(load_bundle(manifest, device=device), device)
        self.runner.activate()
        self.image_size = manifest.config.image_size
        self.class_names = list(manifest.class_names)
        self.size_bytes = folder_bytes(manifest)
        self.max_batch = None
        self.threads = torch.get_num_threads()

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({INPUT_NAME: pixels})

    def close(self) -> None:
        self.runner.deactivate()

    def flops(self) -> dict[str, Any]:
        """FLOPs per cell counted by torch's FlopCounterMode on one cell (2·MACs of matmuls/convs)."""
        from torch.utils.flop_counter import FlopCounterMode

        cell = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        with FlopCounterMode(display=False) as counter:
            self.runner.forward(cell)
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
        return {"flops_per_cell": float(counter.get_total_flops()), "by_op_per_cell": by_op,
                "note": "torch.utils.flop_counter.FlopCounterMode: 2*MACs of matmul/conv/attention ops"}


def open_session(target: Any, settings: Any) -> RunnerSession | TorchSession:
    """Load and activate the session for a harness `Target` under `BenchSettings`."""
    if target.backend == "pytorch":
        return TorchSession(target.path, settings.device, settings.threads)
    return RunnerSession(target.path, settings.device, settings.threads)
