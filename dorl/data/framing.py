"""Cell-centric framing: the one crop that training, evaluation and the analyzer feed the encoder.

A white cell covers a median 13 % of a pbc image, 41 % of a bccd crop and 33 % of a jtsc
image; encoded whole, the lab's red cells, background and magnification decide the feature
more than the cell does. Framing removes that: the image is cut to the cell mask's bounding
box plus a margin, made square around the box's centre (padded with grey where the square
leaves the image), every pixel outside the mask is set to grey 128, and the result is resized
to the encoder's input side. The crop is taken from the image as given (the camera's
resolution), not from a downsized copy, so a small cell keeps its detail.

Two things are flagged instead of hidden: an empty mask (no cell found; the crop is then the
whole image, resized, and must not be trusted) and a mask touching the image border (the cell
may be cut off).

Torch-free and scipy-free (numpy and Pillow only): the analyzer runs it on the host between
the segmenter and the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dorl.errors import ConfigError, ImageError

GREY = 128
MARGIN = 0.1  # of the bounding box's longer side, on each side
FRAMINGS = ("whole", "cell")  # how an image becomes the encoder's input
CROP_MASKS = ("pseudo", "segmenter")  # where the crop's mask comes from (both run on the analyzer)


@dataclass(frozen=True)
class FramingConfig:
    """How a cell image becomes the encoder's input; written beside the model, read by the runtime."""

    input: str = field(default="whole", metadata={
        "help": f"one of {FRAMINGS}: 'whole' resizes the image as it is; 'cell' crops it to the cell (crop_cell)"})
    mask: str = field(default="pseudo", metadata={
        "help": f"the crop's mask, one of {CROP_MASKS}: 'pseudo' = dorl.data.pseudo_masks (stain-based, numpy), "
                "'segmenter' = the model's own mask decoder on the whole image"})
    margin: float = field(default=MARGIN, metadata={"help": "share of the mask box's longer side added on each side"})

    def __post_init__(self) -> None:
        if self.input not in FRAMINGS:
            raise ConfigError(f"framing input must be one of {FRAMINGS}, got {self.input!r}.")
        if self.mask not in CROP_MASKS:
            raise ConfigError(f"framing mask must be one of {CROP_MASKS}, got {self.mask!r}.")
        if not 0 <= self.margin <= 1:
            raise ConfigError(f"framing margin must be in [0, 1], got {self.margin}.")

    @property
    def cell(self) -> bool:
        return self.input == "cell"


@dataclass(frozen=True)
class CellCrop:
    """One framed cell.

    Attributes:
        image: uint8 [size,size,3], the encoder's input.
        box: (top, bottom, left, right) of the square cut, in the source image's pixels (may reach
            outside the image, where grey was padded); None for an empty mask.
        empty: the mask had no foreground; `image` is the whole image resized.
        touches_border: the mask reaches the image's first or last row or column.
        coverage: the mask's share of the source image's pixels.
    """

    image: np.ndarray
    box: tuple[int, int, int, int] | None
    empty: bool
    touches_border: bool
    coverage: float


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a mask's foreground, bottom/right exclusive; None if empty."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D mask brought to `shape` (height, width): bilinear on 0/255, then > 127, so a coarse mask
    (e.g. the segmenter's 56×56) gets smooth edges instead of blocks."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageError(f"a cell mask must be 2-D, got shape {mask.shape}: pass one mask per image.")
    mask = mask > 0
    if mask.shape == tuple(shape):
        return mask
    grey = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(grey) > 127


def square_box(box: tuple[int, int, int, int], margin: float = MARGIN) -> tuple[int, int, int, int]:
    """The square around a bounding box's centre whose side is its longer side plus `margin` of it on
    each side: (top, bottom, left, right), possibly beyond the image."""
    top, bottom, left, right = box
    side = max(1, round(max(bottom - top, right - left) * (1 + 2 * margin)))
    first_row = int(np.floor((top + bottom - side) / 2))
    first_col = int(np.floor((left + right - side) / 2))
    return first_row, first_row + side, first_col, first_col + side


def _cut(image: np.ndarray, box: tuple[int, int, int, int], fill: int) -> np.ndarray:
    """image[top:bottom, left:right], filled with `fill` where the box leaves the image."""
    top, bottom, left, right = box
    height, width = image.shape[:2]
    out = np.full((bottom - top, right - left, image.shape[2]), fill, dtype=np.uint8)
    r0, r1, c0, c1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    if r0 < r1 and c0 < c1:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = image[r0:r1, c0:c1]
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image.copy()
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


def crop_cell(rgb: np.ndarray, mask: np.ndarray, size: int = 224, margin: float = MARGIN,
              grey: int = GREY) -> CellCrop:
    """Frame one cell: cut to its mask's box + margin (square, padded), grey outside the mask, resize.

    Args:
        rgb: HxWx3 uint8 image holding the cell (any resolution; `load_rgb`'s output).
        mask: 2-D cell mask, non-zero on the cell, at the image's size or any other (it is resized).
        size: the encoder's input side.
        margin: the share of the box's longer side added on each side.
        grey: the value of every pixel outside the mask or the image.

    Returns:
        The crop and its flags; an empty mask gives the whole image resized, flagged `empty`.

    Raises:
        ImageError: `rgb` is not HxWx3 uint8, or the mask is not 2-D.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"crop_cell needs an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}: use load_rgb first.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    cell = fit_mask(mask, rgb.shape[:2])
    box = mask_bbox(cell)
    if box is None:
        return CellCrop(_resize(rgb, size), None, True, False, 0.0)
    touches = bool(cell[0].any() or cell[-1].any() or cell[:, 0].any() or cell[:, -1].any())
    masked = np.where(cell[..., None], rgb, np.uint8(grey)).astype(np.uint8)
    square = square_box(box, margin)
    crop = _resize(_cut(masked, square, grey), size)
    return CellCrop(crop, square, False, touches, float(cell.mean()))


def crop_cells(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int = 224,
               margin: float = MARGIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame a batch: crops uint8 [N,size,size,3], `empty` bool [N] and `touches_border` bool [N].

    One unusable mask never costs the batch: it is flagged and its row kept.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    crops = [crop_cell(image, mask, size, margin) for image, mask in zip(images, masks)]
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, bool), np.zeros(0, bool)
    return (np.stack([c.image for c in crops]), np.array([c.empty for c in crops]),
            np.array([c.touches_border for c in crops]))
