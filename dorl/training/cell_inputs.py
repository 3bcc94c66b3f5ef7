"""Each cell's encoder input and SSIM target, from its image and the masks available for it.

Two masks matter per cell, for different reasons:

- The **crop mask** frames the encoder's input when the framing is cell-centric
  (`dorl.data.framing`). It must come from something the deployed analyzer runs too, so that
  training sees the crops the analyzer will see: the stain-based pseudo mask or the model's own
  segmenter, as `FramingConfig.mask` says; never an expert mask.
- The **target mask** cuts the CAE's SSIM target. It should simply be the best mask there is:
  the expert's where the data has one, else the pseudo mask, else the segmenter's where its
  held-out IoU on that domain clears a threshold, else none (the target is then the whole image,
  unmasked). With `ssim_masks="segmenter"` the target is cut from the segmenter's mask as in
  DoRL's code, whatever its quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dorl.data.framing import FramingConfig, crop_cell, fit_mask
from dorl.data.images import resize_square
from dorl.training.config import SSIM_MASKS
from dorl.training.ssim import ssim_target

TARGET_SOURCES = ("expert", "pseudo", "segmenter", "none")
__all__ = ["SSIM_MASKS", "TARGET_SOURCES", "CellInputs", "CellMasks", "cell_inputs", "target_mask"]


@dataclass(frozen=True)
class CellMasks:
    """The masks of one cell, each at its image's resolution or any other (None: not available)."""

    expert: np.ndarray | None = None
    pseudo: np.ndarray | None = None
    segmenter: np.ndarray | None = None


@dataclass
class CellInputs:
    """A batch of cells ready for the encoder and the CAE.

    Attributes:
        inputs: uint8 [N,S,S,3], the encoder's input (whole image or framed cell).
        targets: uint8 [N,128,128,3], the SSIM targets.
        target_sources: per cell, which of TARGET_SOURCES cut the target.
        empty: per cell, the crop mask was empty (cell framing only; the input is then the whole image).
        touches_border: per cell, the crop mask reached the image's border (cell framing only).
    """

    inputs: np.ndarray
    targets: np.ndarray
    target_sources: list[str]
    empty: np.ndarray
    touches_border: np.ndarray


def target_mask(masks: CellMasks, trust_segmenter: bool, ssim_masks: str = "best") -> tuple[np.ndarray | None, str]:
    """The mask the SSIM target is cut from, and its source (one of TARGET_SOURCES).

    Args:
        masks: the cell's masks.
        trust_segmenter: the segmenter's held-out IoU on this cell's domain clears the threshold.
        ssim_masks: "best" (expert, pseudo, trusted segmenter, none) or "segmenter" (DoRL's choice).
    """
    if ssim_masks == "segmenter":
        return masks.segmenter, "segmenter" if masks.segmenter is not None and masks.segmenter.any() else "none"
    if masks.expert is not None and masks.expert.any():
        return masks.expert, "expert"
    if masks.pseudo is not None and masks.pseudo.any():
        return masks.pseudo, "pseudo"
    if trust_segmenter and masks.segmenter is not None and masks.segmenter.any():
        return masks.segmenter, "segmenter"
    return None, "none"


def cell_inputs(images: Sequence[np.ndarray], masks: Sequence[CellMasks], framing: FramingConfig, size: int,
                trust_segmenter: bool = False, ssim_masks: str = "best") -> CellInputs:
    """Encoder inputs and SSIM targets of a batch of cells.

    Args:
        images: HxWx3 uint8 images at their own resolution (`load_rgb`'s output).
        masks: each image's masks; the crop needs `framing.mask`'s.
        framing: whole image or cell-centric, and the crop's mask.
        size: the encoder's input side.
        trust_segmenter: the segmenter's masks of this domain are good enough for SSIM targets.
        ssim_masks: see `target_mask`.

    Returns:
        The batch; a cell without the crop's mask is framed as empty (flagged, whole image).
    """
    n = len(images)
    inputs, targets, sources = [], [], []
    empty, touches = np.zeros(n, bool), np.zeros(n, bool)
    for i, (image, cell) in enumerate(zip(images, masks)):
        whole = resize_square(image, size)
        if framing.cell:
            crop_mask = getattr(cell, framing.mask)
            crop = crop_cell(image, crop_mask if crop_mask is not None else np.zeros(image.shape[:2], bool),
                             size, framing.margin)
            inputs.append(crop.image)
            empty[i], touches[i] = crop.empty, crop.touches_border
        else:
            inputs.append(whole)
        mask, source = target_mask(cell, trust_segmenter, ssim_masks)
        target_in = np.zeros((size, size), bool) if mask is None else fit_mask(mask, (size, size))
        targets.append(ssim_target(whole, target_in))
        sources.append(source)
    return CellInputs(np.stack(inputs), np.stack(targets), sources, empty, touches)
