"""Cut a white cell out of a frame the way the single-cell training images were cut.

The BCCD single-cell images the model learnt from are squares cut from the same 640x480 frames
at full resolution (no rescaling), centred on the nucleus, their side about 1.45 times the
nucleus's longer side, and shifted back inside the frame where the cell sits near an edge rather
than padded. Measured by locating each of the 258 BCCD single-cell images of these frames in its
frame (normalised cross-correlation, `python -m dorl.fields.benchmark`): crop side / the finder's
nucleus side has median 1.44 (quartiles 1.36-1.50), and this rule's crop boxes overlap the real
ones with median IoU 0.91 (mean 0.85).
"""

from __future__ import annotations

import numpy as np

from dorl.fields.finder import Box

CROP_SCALE = 1.45  # crop side / the longer side of the nucleus box (measured)
MIN_CROP = 64  # px: smaller crops hold too little of a cell to classify


def crop_box(nucleus_box: Box, frame_hw: tuple[int, int], scale: float = CROP_SCALE) -> Box:
    """The square part of the frame to give the analyzer for one cell.

    Args:
        nucleus_box: the cell's nucleus box in the frame (x0, y0, x1, y1).
        frame_hw: the frame's (height, width).
        scale: crop side as a multiple of the nucleus box's longer side.

    Returns:
        A square box inside the frame, centred on the cell unless the frame's edge is in the way;
        its side is capped at the frame's shorter side.
    """
    height, width = frame_hw
    x0, y0, x1, y1 = nucleus_box
    side = round(max(x1 - x0, y1 - y0) * scale)
    side = max(min(side, height, width), min(MIN_CROP, height, width))
    left = _place((x0 + x1) / 2 - side / 2, side, width)
    top = _place((y0 + y1) / 2 - side / 2, side, height)
    return left, top, left + side, top + side


def _place(start: float, side: int, limit: int) -> int:
    """The start of a span of `side` px near `start`, shifted to lie within [0, limit)."""
    return int(min(max(round(start), 0), limit - side))


def cut(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `box` (a contiguous copy, so the frame can be freed)."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])
