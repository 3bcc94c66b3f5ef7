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

from dorl.data.scan import ImageScan, scan_images
from dorl.errors import ConfigError
from dorl.runtime.options import AnalyzerOptions
from dorl.runtime.records import Tally
from dorl.runtime.stream import StopFlag, analyze_scan
from dorl.safe_write import check_output, output_lock


@dataclass(frozen=True)
class PredictRequest:
    """What `dorl predict` was asked to do."""

    analyzer: AnalyzerOptions
    images: tuple[Path, ...]
    save_masks: Path | None = None
    overwrite: bool = False


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
    request.analyzer.check_values()
    checked = request.analyzer.check_artifact()
    scan = scan_images(request.images)
    if not scan.entries:
        raise ConfigError(f"no image files found in {', '.join(map(str, request.images))}: give image files or "
                          "folders holding them.")
    if request.save_masks is not None:  # every folder an image was found in counts, links followed
        folders = {entry.path.parent for entry in scan.entries}
        check_output(request.save_masks, overwrite=request.overwrite,
                     inputs=[*request.images, request.analyzer.artifact], input_folders=folders)
    return PredictPlan(request, checked.class_names, checked.batch_size, scan, checked.notes)


def run_predict(plan: PredictPlan, emit: Callable[[dict[str, Any]], None], stop: StopFlag | None = None,
                progress: Callable[[int], None] | None = None, warn: Callable[[str], None] | None = None) -> Tally:
    """Load the model and analyse the plan's images, emitting each record as its batch ends."""
    from dorl.runtime.mask_files import MaskWriter

    request = plan.request
    masks_lock = output_lock(request.save_masks) if request.save_masks is not None else None
    with masks_lock or contextlib.nullcontext():
        masks = MaskWriter(request.save_masks, request.overwrite) if request.save_masks is not None else None
        with request.analyzer.open(plan.batch_size, warn) as analyzer:
            return analyze_scan(analyzer, plan.scan, emit, masks, stop, progress)
