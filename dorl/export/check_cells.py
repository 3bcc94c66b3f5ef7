"""The cells an export check runs, fed to each graph the way the analyzer feeds it.

A whole-image artifact sees each image once, resized. A cell-centric one (its framing's input
is "cell") is run twice by the analyzer: pass 1 on the whole image gives the mask, pass 2 on the
cell cut out of the image gives the label, probabilities and feature. A check that ran pass 1
alone would score the classifier on images it never classifies: on the full demo's bundle the
INT8 graph agreed with FP32 on 100 % of whole images and on 12 of 40 cells in the analyzer. So
every check of an export (FP32 parity with PyTorch, the FP16 check, INT8 calibration, the INT8
gate and its sweep) goes through `CheckCells.run`, which returns what the analyzer records:
pass 2's outputs with pass 1's mask logits, each graph cutting its cells from its own masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dorl.contract import MASK_LOGITS

Infer = Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 [N,S,S,3] -> the graph's outputs by name


@dataclass(frozen=True)
class CheckCells:
    """Real cells for a check: the resized whole images and, for a cell-centric artifact, what pass 2 needs.

    Attributes:
        pixels: uint8 [N,S,S,3], the whole images as pass 1 (and a whole-image model) sees them.
        names: a name per cell (its path) for reports.
        framing: the artifact's `dorl.data.framing.FramingConfig`; None (or input "whole"): one pass.
        decoded: the images as decoded, which the crops are cut from (cell-centric only).
        crops: the crops when they do not depend on the graph (the stain-based pseudo mask).
    """

    pixels: np.ndarray
    names: tuple[str, ...]
    framing: Any = None
    decoded: tuple[np.ndarray, ...] = ()
    crops: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def two_pass(self) -> bool:
        return self.framing is not None and self.framing.cell

    @classmethod
    def load(cls, sources: Sequence[Any], size: int, framing: Any = None) -> CheckCells:
        """Decode `sources` once; resize them and, for a cell-centric framing with the pseudo mask, cut the cells.

        Args:
            sources: image paths, encoded bytes or arrays.
            size: the model's input side.
            framing: the artifact's FramingConfig (None: a whole-image artifact).

        Raises:
            ConfigError: no images were given. ImageError: an image cannot be read.
        """
        from dorl.data.images import describe_source, load_rgb, resize_square
        from dorl.export.parity import prepare_images

        names = tuple(describe_source(s) for s in sources)
        if framing is None or not framing.cell or len(sources) == 0:
            return cls(prepare_images(sources, size), names)  # (no images: its clear error)
        decoded = tuple(load_rgb(s) for s in sources)
        pixels = np.stack([resize_square(rgb, size) for rgb in decoded])
        if framing.mask == "segmenter":  # each graph cuts its cells from its own masks
            return cls(pixels, names, framing, decoded)
        from dorl.deps import require
        from dorl.runtime.cell_framing import frame_batch

        require("scipy", "this artifact's cell crop (framing mask 'pseudo': dorl.data.pseudo_masks)")
        crops, _, _ = frame_batch(decoded, None, framing, size)
        return cls(pixels, names, framing, crops=crops)

    def cut(self, mask_logits: np.ndarray | None) -> np.ndarray:
        """Pass 2's input: each cell framed from pass 1's `mask_logits` (or its pseudo mask), uint8 [N,S,S,3]."""
        from dorl.runtime.cell_framing import frame_batch

        crops, _, _ = frame_batch(self.decoded, mask_logits, self.framing, self.size)
        return crops

    def run(self, infer: Infer) -> dict[str, np.ndarray]:
        """The outputs the analyzer records for these cells: pass 1's alone, or pass 2's with pass 1's mask logits."""
        first = infer(self.pixels)
        if not self.two_pass:
            return first
        return self.classify(infer, first.get(MASK_LOGITS))

    def classify(self, infer: Infer, mask_logits: np.ndarray | None) -> dict[str, np.ndarray]:
        """Pass 2 on the cells framed from pass 1's `mask_logits` (or the fixed crops), which it returns with them.

        On its own it spares pass 1 for a graph whose masks are known: e.g. one that differs from
        the reference only in nodes the masks do not depend on.
        """
        crops = self.crops if self.crops is not None else self.cut(mask_logits)
        second = dict(infer(crops))
        if mask_logits is not None:
            second[MASK_LOGITS] = mask_logits
        return second

    def framed(self, mask_logits: np.ndarray | None) -> CheckCells:
        """These cells with their crops cut once from `mask_logits` (cell-centric only)."""
        return self if self.crops is not None else replace(self, crops=self.cut(mask_logits))

    def inputs(self, infer: Infer | None = None) -> np.ndarray:
        """Every image a graph meets on these cells, for calibration: the whole images, then the crops.

        Args:
            infer: the reference graph, whose masks cut the cells when they come from the segmenter.
        """
        if not self.two_pass:
            return self.pixels
        crops = self.crops
        if crops is None:
            if infer is None:
                raise ValueError("cells cut by the segmenter's masks need the graph that makes them")
            crops = self.cut(infer(self.pixels).get(MASK_LOGITS))
        return np.concatenate([self.pixels, crops])

    def rows(self, rows: np.ndarray | slice) -> CheckCells:
        """The cells at `rows` (e.g. the INT8 sweep's subset)."""
        index = np.arange(len(self))[rows]
        return replace(self, pixels=self.pixels[index], names=tuple(self.names[i] for i in index),
                       decoded=tuple(self.decoded[i] for i in index) if self.decoded else (),
                       crops=self.crops[index] if self.crops is not None else None)
