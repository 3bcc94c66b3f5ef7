"""What the analyzer says about one image: a label, "no cell", or the error that stopped it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dorl.runtime import postprocess

STATUSES = ("ok", "uncertain", "no_cell", "failed")


@dataclass(frozen=True, eq=False)
class CellResult:
    """The analysis of one image.

    The mask is kept at the graph's mask resolution (56x56 for DoRL) with the image's own size
    beside it; `mask` scales it up on demand, so a run over many large images never holds a
    full-size mask per cell.
    """

    source: str  # path, or a description of bytes / an array
    label: str | None  # None when the image failed, holds no cell, or its outputs were not finite
    probs: dict[str, float]  # class name -> probability; empty on error
    feature: np.ndarray | None  # the classification feature [D] (before any site map); None on error
    mask_lowres: np.ndarray | None  # boolean cell mask at the graph's mask resolution
    size_hw: tuple[int, int] | None  # (height, width) of the image itself
    uncertain: bool  # top probability below the threshold, or no label
    error: str | None = None  # why this image could not be analysed
    no_cell: tuple[str, ...] = ()  # why the image holds no analysable white cell (empty: it holds one)
    distance: float | None = None  # the feature's distance to the source cells (see cell_check)
    non_cell_score: float | None = None  # its score towards the artifact's non-cell images (see cell_check)
    stain_area: float | None = None  # its largest stained (purple) share of the image, when a floor is recorded
    notes: tuple[str, ...] = ()  # how the image was read, when worth saying (e.g. its significant bits)
    site: str | None = None  # the site profile that mapped the feature, if any
    crop_box: tuple[int, int, int, int] | None = None  # where a cell-centric analyzer cut the cell (top, bottom, left, right)
    touches_border: bool | None = None  # the cut cell's mask touches the image border (None: not cell-framed)

    @property
    def ok(self) -> bool:
        """True when the image was analysed (it may still hold no cell)."""
        return self.error is None

    @property
    def status(self) -> str:
        """One of STATUSES: "ok", "uncertain" (labelled, low confidence), "no_cell" or "failed"."""
        if self.error is not None:
            return "failed"
        if self.no_cell:
            return "no_cell"
        return "uncertain" if self.uncertain else "ok"

    @property
    def confidence(self) -> float | None:
        """The top class probability (None without a label)."""
        return max(self.probs.values()) if self.probs and self.label is not None else None

    @property
    def mask(self) -> np.ndarray | None:
        """The boolean cell mask at the image's own size (computed on each call)."""
        if self.mask_lowres is None or self.size_hw is None:
            return None
        return postprocess.upscale_mask(self.mask_lowres, self.size_hw)

    @classmethod
    def failed(cls, source: str, error: str) -> CellResult:
        return cls(source=source, label=None, probs={}, feature=None, mask_lowres=None, size_hw=None,
                   uncertain=True, error=error)
