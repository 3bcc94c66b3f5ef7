"""One interface over the benchmarked backends: uint8 NHWC cells in, the graph's named outputs out.

`RunnerSession` wraps a runtime runner (ONNX Runtime or TensorRT, torch-free); `TorchSession`
runs the bundle's `DoRLModel` in eager FP32, fed exactly as the export wrapper feeds it
(NHWC uint8 → NCHW float 0–255), so both sides of the comparison see the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.contract import to_nchw_float


def folder_bytes(manifest: dict[str, Any]) -> int:
    """Size on disk of an artifact: the sum of the files its manifest lists."""
    return sum(int(entry["bytes"]) for entry in manifest["files"].values())


class RunnerSession:
    """An ONNX artifact or engine, run through `dorl.runtime.load_runner`."""

    def __init__(self, path: str, device: str, threads: int | None) -> None:
        from dorl.runtime.loader import load_runner

        manifest = read_manifest(path, ("onnx", "engine"), verify=False)
        options: dict[str, Any] = {} if manifest["kind"] == "engine" else {
            "providers": ["cuda"] if device == "cuda" else ["cpu"], "threads": threads}
        self.runner = load_runner(path, **options)
        self.runner.activate()
        self.manifest = manifest
        self.input_name = next(iter(self.runner.input_specs))
        self.image_size = int(manifest.get("image_size") or self.runner.input_specs[self.input_name].shape[1])
        self.class_names = list(manifest.get("class_names", []))
        self.size_bytes = folder_bytes(manifest)
        self.max_batch = getattr(self.runner, "max_batch", None)
        self.threads = threads

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.infer({self.input_name: pixels})

    def close(self) -> None:
        self.runner.deactivate()

    def flops(self) -> dict[str, Any] | None:
        """FLOPs per cell from the ONNX graph (an engine's source graph, where it is still there)."""
        from dorl.benchmarks.flops import count_flops
        from dorl.runtime.onnxrt import model_file

        manifest = self.manifest
        if manifest["kind"] == "engine":
            source = Path(str(manifest.get("source_onnx", {}).get("folder", "")))
            if not (source / "manifest.json").is_file():
                return None
            manifest = read_manifest(source, "onnx", verify=False)
        return count_flops(model_file(manifest), batch=1).to_dict()


class TorchSession:
    """The PyTorch eager FP32 baseline from a model bundle."""

    def __init__(self, path: str, device: str, threads: int | None) -> None:
        import torch

        from dorl.bundle import load_bundle

        if threads is not None:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.model = load_bundle(path, device=device)
        manifest = read_manifest(path, "bundle", verify=False)
        self.image_size = int(self.model.config.image_size)
        self.class_names = list(self.model.config.class_names)
        self.size_bytes = folder_bytes(manifest)
        self.max_batch = None
        self.threads = torch.get_num_threads()

    def _forward(self, pixels: np.ndarray) -> dict[str, Any]:
        images = self.torch.from_numpy(to_nchw_float(pixels)).to(self.device)
        with self.torch.inference_mode():
            return dict(self.model(images))

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.float().cpu().numpy() for name, value in self._forward(pixels).items()}

    def close(self) -> None:
        del self.model

    def flops(self) -> dict[str, Any]:
        """FLOPs per cell counted by torch's FlopCounterMode on one cell (2·MACs of matmuls/convs)."""
        from torch.utils.flop_counter import FlopCounterMode

        cell = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        with FlopCounterMode(display=False) as counter:
            self._forward(cell)
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
        return {"flops_per_cell": float(counter.get_total_flops()), "by_op_per_cell": by_op,
                "note": "torch.utils.flop_counter.FlopCounterMode: 2*MACs of matmul/conv/attention ops"}


def open_session(target: Any, settings: Any) -> RunnerSession | TorchSession:
    """Load and activate the session for a harness `Target` under `BenchSettings`."""
    if target.backend == "pytorch":
        return TorchSession(target.path, settings.device, settings.threads)
    return RunnerSession(target.path, settings.device, settings.threads)
