"""`dorl predict` as a library: check every option first, then stream the analysis.

`prepare_predict` refuses a bad option, artifact, site profile or output folder before any
model or image is loaded (only manifests are read and the paths walked); `run_predict` then
loads the model and streams records (see `dorl.runtime.stream`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dorl.artifacts import read_manifest
from dorl.data.scan import ImageScan, scan_images
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import Analyzer, batch_cap
from dorl.runtime.loader import BACKENDS, RUNNABLE_KINDS
from dorl.runtime.records import Tally
from dorl.runtime.stream import StopFlag, analyze_scan
from dorl.safe_write import check_output, output_lock


@dataclass(frozen=True)
class PredictRequest:
    """What `dorl predict` was asked to do."""

    artifact: Path
    images: tuple[Path, ...]
    save_masks: Path | None = None
    overwrite: bool = False
    batch_size: int = 8
    threshold: float = 0.5
    backend: str = "auto"
    site: Path | None = None
    check_cells: bool = True


@dataclass
class PredictPlan:
    """A checked request: the class names, the capped batch, the images found, and notes for the user."""

    request: PredictRequest
    class_names: list[str]
    batch_size: int
    scan: ImageScan
    notes: list[str] = field(default_factory=list)


def prepare_predict(request: PredictRequest) -> PredictPlan:
    """Check every option and find the images; nothing is loaded or written yet.

    Raises:
        ConfigError, ArtifactError, OutputError: a bad option, artifact, profile or output path.
    """
    if request.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {request.batch_size}.")
    if not 0.0 <= request.threshold <= 1.0:
        raise ConfigError(f"--threshold must be within [0, 1], got {request.threshold}.")
    if request.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {request.backend!r}: choose one of {', '.join(BACKENDS)}.")
    manifest = read_manifest(request.artifact, verify=False)
    if manifest["kind"] not in RUNNABLE_KINDS:
        raise ArtifactError(f"{request.artifact} is a {manifest['kind']!r} artifact, which cannot be run: give an "
                            "ONNX artifact from `dorl export` or an engine from `dorl build`.")
    if request.site is not None:
        read_manifest(request.site, "site-profile", verify=False)
    notes = []
    cap = batch_cap(manifest)
    if request.batch_size > cap:
        notes.append(f"--batch-size {request.batch_size} is above this artifact's limit of {cap} cells per call: "
                     f"using {cap}.")
    scan = scan_images(request.images)
    if not scan.entries:
        raise ConfigError(f"no image files found in {', '.join(map(str, request.images))}: give image files or "
                          "folders holding them.")
    if request.save_masks is not None:  # every folder an image was found in counts, links followed
        folders = {entry.path.parent for entry in scan.entries}
        check_output(request.save_masks, overwrite=request.overwrite, inputs=[*request.images, request.artifact],
                     input_folders=folders)
    names = [str(n) for n in manifest.get("class_names") or []]
    return PredictPlan(request, names, min(request.batch_size, cap), scan, notes)


def run_predict(plan: PredictPlan, emit: Callable[[dict[str, Any]], None], stop: StopFlag | None = None,
                progress: Callable[[int], None] | None = None, warn: Callable[[str], None] | None = None) -> Tally:
    """Load the model and analyse the plan's images, emitting each record as its batch ends."""
    from dorl.runtime.mask_files import MaskWriter

    request = plan.request
    masks_lock = output_lock(request.save_masks) if request.save_masks is not None else None
    with masks_lock or contextlib.nullcontext():
        masks = MaskWriter(request.save_masks, request.overwrite) if request.save_masks is not None else None
        with Analyzer(request.artifact, backend=request.backend, batch_size=plan.batch_size,
                      threshold=request.threshold, site=request.site, check_cells=request.check_cells,
                      warn=warn) as analyzer:
            return analyze_scan(analyzer, plan.scan, emit, masks, stop, progress)
