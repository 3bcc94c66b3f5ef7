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

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dorl.data.framing import GREY, CellCrop, FramingConfig, crop_cell
from dorl.errors import ImageError
from dorl.runtime import postprocess

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

    def in_image(self, decoded_hw: tuple[int, int], size_hw: tuple[int, int]) -> Framed:
        """The box in the image's own pixels, for an image decoded at a reduced size `decoded_hw`."""
        if self.box is None or decoded_hw == size_hw:
            return self
        (h, w), (height, width) = decoded_hw, size_hw
        top, bottom, left, right = self.box
        box = (round(top * height / h), min(round(bottom * height / h), height),
               round(left * width / w), min(round(right * width / w), width))
        return replace(self, box=box)


def crop_mask(rgb: np.ndarray, segmenter_mask: np.ndarray | None, framing: FramingConfig,
              size: int | None = None) -> np.ndarray:
    """The mask the crop is cut from (any resolution; `crop_cell` fits it to the image).

    Args:
        rgb: the image as decoded, HxWx3 uint8.
        segmenter_mask: pass 1's low-resolution mask (None when its logits were not finite).
        framing: the artifact's framing.
        size: the model's input side; the pseudo mask is computed on the image resized to it, as
            training computes it (on the decoded image, its outline shifts by up to ~15 px on pbc).
    """
    if framing.mask == "pseudo":
        from dorl.data.images import resize_square
        from dorl.data.pseudo_masks import pseudo_mask

        return pseudo_mask(rgb if size is None else resize_square(rgb, size))
    return segmenter_mask if segmenter_mask is not None else np.zeros((1, 1), bool)


def frame_cell(rgb: np.ndarray, segmenter_mask: np.ndarray | None, framing: FramingConfig,
               size: int) -> CellCrop:
    """Pass 2's input for one image: its cell framed as in training (see `dorl.data.framing.crop_cell`)."""
    return crop_cell(rgb, crop_mask(rgb, segmenter_mask, framing, size), size, framing.margin)


def frame_batch(images: Sequence[np.ndarray], mask_logits: np.ndarray | None, framing: FramingConfig,
                size: int) -> tuple[np.ndarray, list[Framed | None], dict[int, str]]:
    """Pass 2's input for a batch: each image's cell framed from pass 1's mask logits (or its pseudo mask).

    One image whose crop cannot be made never costs the batch: its row is a grey square, listed
    in the failures.

    Args:
        images: the images as decoded, HxWx3 uint8 each.
        mask_logits: pass 1's `mask_logits` [N, ...] (None when the graph has none).
        framing: the artifact's framing.
        size: the model's input side.

    Returns:
        (crops uint8 [N,size,size,3], each row's `Framed` (None where it failed), row -> why it failed).
    """
    crops: list[np.ndarray] = []
    framed: list[Framed | None] = []
    failures: dict[int, str] = {}
    for row, rgb in enumerate(images):
        mask = postprocess.low_res_mask(mask_logits[row]) if mask_logits is not None else None
        try:
            crop = frame_cell(rgb, mask, framing, size)
        except (ImageError, ValueError) as exc:
            failures[row] = f"the cell could not be cut out of the image: {exc}"
            crops.append(np.full((size, size, 3), GREY, np.uint8))
            framed.append(None)
            continue
        crops.append(crop.image)
        framed.append(Framed.of(crop))
    return (np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)), framed, failures
