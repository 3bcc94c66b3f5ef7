"""One batch's graph outputs turned into a `CellResult` per image: the probabilities (averaged over the
test-time views), the site's map, the "no cell" check, the crop's flags. Read once per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from dorl.contract import FEATURE, MASK_LOGITS
from dorl.runtime import postprocess
from dorl.runtime.cell_check import CellCheck
from dorl.runtime.cell_framing import BORDER_NOTE, EMPTY_CROP, Framed
from dorl.runtime.cell_result import CellResult
from dorl.runtime.site_profile import DriftWatch, SiteProfile


class Reader(Protocol):
    """What a batch is read with: the analyzer's head, site profile, checks and labels."""

    site: SiteProfile | None
    drift_watch: DriftWatch | None
    cell_check: CellCheck | None
    class_names: list[str]
    threshold: float

    def class_probabilities(self, outputs: dict[str, np.ndarray], adapted: np.ndarray | None = None) -> np.ndarray: ...


class BatchResults:
    """One batch's outputs and what follows from them, read once per batch.

    `views` are the classifying pass's outputs on the other test-time views of its input: the
    probabilities are the mean over all views; everything else reads `outputs` (the plain view).
    """

    def __init__(self, analyzer: Reader, outputs: dict[str, np.ndarray],
                 views: Sequence[dict[str, np.ndarray]] = ()) -> None:
        self.analyzer, self.outputs = analyzer, outputs
        features = outputs.get(FEATURE)
        adapted = analyzer.site.apply(features) if analyzer.site is not None and features is not None else features
        self.probs = analyzer.class_probabilities(outputs, adapted)
        if views:
            self.probs = np.mean([self.probs, *(analyzer.class_probabilities(v) for v in views)], axis=0)
        self.finite = postprocess.finite_rows(outputs) & np.isfinite(self.probs).all(axis=1)
        self.distances: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        if features is not None and adapted is not None:
            if analyzer.drift_watch is not None:
                analyzer.drift_watch.update(features[self.finite])
            check = analyzer.cell_check
            if check is not None and check.distance is not None:
                self.distances = check.distance(adapted)  # after the site's map: distance to the source
            if check is not None and check.non_cell is not None:
                self.scores = check.non_cell(adapted)

    def cell(self, row: int, source: str, size_hw: tuple[int, int], notes: tuple[str, ...],
             framed: Framed | None = None, stain: float | None = None) -> CellResult:
        analyzer, outputs = self.analyzer, self.outputs
        site = analyzer.site.site if analyzer.site is not None else None
        if not self.finite[row]:
            return CellResult(source=source, label=None, probs={}, feature=None, mask_lowres=None, size_hw=size_hw,
                              uncertain=True, notes=notes, site=site,
                              error="the model's outputs for this image are not finite (NaN or infinity): compare with "
                                    "the FP32 artifact (`--backend onnxruntime`) and re-export or rebuild this "
                                    "one if it repeats.")
        probs = self.probs[row]
        mask = postprocess.low_res_mask(outputs[MASK_LOGITS][row]) if MASK_LOGITS in outputs else None
        distance = float(self.distances[row]) if self.distances is not None else None
        score = float(self.scores[row]) if self.scores is not None else None
        no_cell = analyzer.cell_check.reasons(mask, distance, score, stain) if analyzer.cell_check is not None else ()
        if framed is not None and framed.empty and not no_cell:
            no_cell = (EMPTY_CROP,)  # never a label from the whole field in place of the cell, even unchecked
        if framed is not None and framed.touches_border:
            notes = (*notes, BORDER_NOTE)
        label, uncertain = postprocess.decide(probs, analyzer.class_names, analyzer.threshold)
        return CellResult(
            source=source,
            label=None if no_cell else label,
            probs={name: float(p) for name, p in zip(analyzer.class_names, probs)},
            feature=outputs[FEATURE][row].copy() if FEATURE in outputs else None,
            mask_lowres=mask,
            size_hw=size_hw,
            uncertain=uncertain or bool(no_cell),
            no_cell=no_cell,
            distance=distance,
            non_cell_score=score,
            stain_area=stain,
            notes=notes,
            site=site,
            crop_box=framed.box if framed is not None else None,
            touches_border=framed.touches_border if framed is not None else None,
        )
