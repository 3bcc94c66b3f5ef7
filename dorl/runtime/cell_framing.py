"""The host-side step of a cell-centric analyzer: frame each image's white cell between two passes.

A model trained on framed cells (`dorl.data.framing`: the cell cut to its mask's box + margin,
square, background grey) must see the same framing when deployed. The analyzer runs the one
exported graph twice back to back: pass 1 on the whole image gives the segmenter's mask; here
the image (as decoded, not the resized copy) is cut to the cell; pass 2 on that crop gives the
label, probabilities and feature. The crop's mask is the one the model was trained with: the
segmenter's own (`framing.mask == "segmenter"`, pass 1's mask) or the stain-based pseudo mask
(`"pseudo"`, computed here from the image). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dorl.data.framing import CellCrop, FramingConfig, crop_cell

EMPTY_CROP = "the cell mask the crop is cut from is empty: no cell to frame"
BORDER_NOTE = "the cell's mask touches the image's border: the cell may be cut off"


@dataclass(frozen=True)
class Framed:
    """Where one image's cell was cut: the crop's box in the image's pixels and its flags."""

    box: tuple[int, int, int, int] | None  # (top, bottom, left, right); None for an empty mask
    empty: bool
    touches_border: bool

    @classmethod
    def of(cls, crop: CellCrop) -> Framed:
        return cls(crop.box, crop.empty, crop.touches_border)


def crop_mask(rgb: np.ndarray, segmenter_mask: np.ndarray | None, framing: FramingConfig) -> np.ndarray:
    """The mask the crop is cut from (any resolution; `crop_cell` fits it to the image).

    Args:
        rgb: the image as decoded, HxWx3 uint8.
        segmenter_mask: pass 1's low-resolution mask (None when its logits were not finite).
        framing: the artifact's framing.
    """
    if framing.mask == "pseudo":
        from dorl.data.pseudo_masks import pseudo_mask

        return pseudo_mask(rgb)
    return segmenter_mask if segmenter_mask is not None else np.zeros((1, 1), bool)


def frame_cell(rgb: np.ndarray, segmenter_mask: np.ndarray | None, framing: FramingConfig,
               size: int) -> CellCrop:
    """Pass 2's input for one image: its cell framed as in training (see `dorl.data.framing.crop_cell`)."""
    return crop_cell(rgb, crop_mask(rgb, segmenter_mask, framing), size, framing.margin)
