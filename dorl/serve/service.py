"""The model behind the endpoints: one analyzer, one inference thread, its metadata.

`ModelService` loads the artifact (checking every file's sha256) in the caller's thread, then
activates and warms the runner in the batcher's worker thread, which alone touches the model
from then on. Two kinds of job share the batcher: "tensor" jobs (a v2 infer request's uint8
images, answered with the graph's raw outputs) and "cell" jobs (encoded images, answered with the
analyzer's `CellResult`: decoding, resizing, the site profile and the mask are the analyzer's, so
a cell served here is the cell `dorl predict` reports).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError
from dorl.serve.batcher import Batcher, Job
from dorl.serve.config import ServeConfig
from dorl.serve.metrics import ServiceMetrics
from dorl.serve.protocol import MODEL_VERSION, tensor_metadata
from dorl.serve.triton import PLATFORMS, manifest_parameters, model_config

DEFAULT_MAX_BATCH = 8
STARTUP_TIMEOUT_S = 600.0  # activating a large engine on a Jetson takes a while


class ModelService:
    """An artifact loaded once, served through a dynamic batcher."""

    def __init__(self, artifact: str | Path, config: ServeConfig, site: str | Path | None = None) -> None:
        """Load (not yet activate) the artifact.

        Args:
            artifact: an "onnx" or "engine" artifact folder.
            config: the service's options.
            site: a site profile from `dorl adapt` for the cell endpoint (None: unadapted).
        """
        from dorl.artifacts import read_manifest
        from dorl.runtime.analyzer import Analyzer

        self.config = config
        manifest = read_manifest(artifact, kinds=("onnx", "engine"), verify=False)  # the runner verifies the files
        engine_max = manifest.get("max_batch") if manifest["kind"] == "engine" else None
        if config.max_batch is not None and engine_max is not None and config.max_batch > int(engine_max):
            raise ConfigError(f"max batch {config.max_batch} exceeds the engine's profile maximum {engine_max}: "
                              f"give --max-batch {engine_max} or less, or rebuild the engine.")
        batch = config.max_batch or int(engine_max or DEFAULT_MAX_BATCH)
        self.analyzer = Analyzer(artifact, backend=config.backend, batch_size=batch, threshold=config.threshold,
                                 threads=config.threads, site=site, tta=config.tta)
        runner = self.analyzer.runner
        self.manifest = getattr(runner, "manifest", None) or manifest
        self.max_batch = self.analyzer.batch_size
        self.name = config.model_name
        self.inputs, self.outputs = runner.input_specs, runner.output_specs
        self.metrics = ServiceMetrics(self.max_batch, lambda: self.batcher.depth)
        self.batcher = Batcher({"tensor": self._run_tensors, "cell": self._run_cells}, self.max_batch,
                               config.max_delay_ms / 1000.0, config.queue_size, on_batch=self.metrics.batch,
                               setup=self._activate, teardown=self.analyzer.close)
        self.ready = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Activate and warm up the model in the inference thread; raise its error if it fails."""
        self.batcher.start(STARTUP_TIMEOUT_S)
        self.ready = True

    def stop(self) -> None:
        """Finish queued work, then free the model."""
        self.ready = False
        self.batcher.stop()

    def _activate(self) -> None:
        runner = self.analyzer.runner
        runner.activate()
        spec = next(iter(self.inputs.values()))
        runner.infer({spec.name: np.zeros((1, self.analyzer.image_size, self.analyzer.image_size, 3), np.uint8)})

    # -- work (inference thread) -------------------------------------------------------------
    def _run_tensors(self, jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        name = self.analyzer.input_name
        feed = {name: np.concatenate([job.items for job in jobs]) if len(jobs) > 1 else jobs[0].items}
        outputs = self.analyzer.runner.infer(feed)
        results, start = [], 0
        for job in jobs:
            results.append({k: v[start:start + job.size] for k, v in outputs.items()})
            start += job.size
        return results

    def _run_cells(self, jobs: list[Job]) -> list[list[Any]]:
        cells = self.analyzer.analyze([item for job in jobs for item in job.items])
        results, start = [], 0
        for job in jobs:
            results.append(cells[start:start + job.size])
            start += job.size
        return results

    # -- requests (event loop) ---------------------------------------------------------------
    def submit_tensors(self, images: np.ndarray) -> Future:
        """Queue a uint8 [B, S, S, 3] batch; the future gets the graph's outputs for it."""
        return self.batcher.submit(Job("tensor", images))

    def submit_cell(self, image: bytes) -> Future:
        """Queue one encoded image; the future gets a one-element list of `CellResult`."""
        return self.batcher.submit(Job("cell", [image]))

    # -- description -------------------------------------------------------------------------
    @property
    def site(self) -> dict[str, Any] | None:
        """The site profile the cell endpoint applies, or None."""
        profile = self.analyzer.site
        if profile is None:
            return None
        return {"site": profile.site, "method": profile.method, "cells": int(profile.stats.n)}

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata, with the manifest's identity in `parameters`."""
        parameters: dict[str, Any] = dict(manifest_parameters(self.manifest, self.max_batch))
        parameters["class_names"] = list(self.analyzer.class_names)
        parameters["site_profile"] = self.site
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORMS[self.manifest["kind"]][0],
            "inputs": [tensor_metadata(s) for s in self.inputs.values()],
            "outputs": [tensor_metadata(s) for s in self.outputs.values()],
            "parameters": parameters,
        }

    def model_config(self) -> dict[str, Any]:
        """The Triton model configuration describing this model as served here."""
        return model_config(self.manifest, self.name, self.max_batch, int(self.config.max_delay_ms * 1000),
                            self.config.queue_size, labels=False)
