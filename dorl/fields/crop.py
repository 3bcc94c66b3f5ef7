"""Cut a white cell out of a frame the way the single-cell training images were cut.

The BCCD single-cell images the model learnt from are squares cut from the same 640x480 frames
at full resolution (no rescaling), centred on the nucleus, their side about 1.45 times the
nucleus's longer side, and never padded. Measured by locating each of the 258 BCCD single-cell
images of these frames in its frame (normalised cross-correlation, `python -m dorl.fields.benchmark`):
crop side / the finder's nucleus side has median 1.44 (quartiles 1.36-1.50).

Where that square leaves the frame, the images were cut in one of two ways, and the nucleus says
which. Usually the square is shifted back inside the frame, whole. But where the frame's edge
cuts the cell near its middle, the nucleus shows as a band along the edge (its extent along the
edge at least `EDGE_ASPECT` times its extent across it), and the image is only the part of the
centred square inside the frame, made square: flush with the edge, as deep as the square reached
into the frame, centred on the nucleus along the edge. A shifted square would hold mostly the
field beyond the cell. With both rules, the crop boxes of the 77 edge-cut cells overlap the real
ones with mean IoU 0.86 (0.82 shifting every square; the even frames chose `EDGE_ASPECT`).
"""

from __future__ import annotations

import numpy as np

from dorl.fields.finder import Box

CROP_SCALE = 1.45  # crop side / the longer side of the nucleus box (measured)
EDGE_ASPECT = 1.6  # a nucleus on the edge this much longer along it than across: a cell cut near its middle
MIN_CROP = 64  # px: smaller crops hold too little of a cell to classify


def crop_box(nucleus_box: Box, frame_hw: tuple[int, int], scale: float = CROP_SCALE) -> Box:
    """The square part of the frame to give the analyzer for one cell.

    Args:
        nucleus_box: the cell's nucleus box in the frame (x0, y0, x1, y1).
        frame_hw: the frame's (height, width).
        scale: crop side as a multiple of the nucleus box's longer side.

    Returns:
        A square box inside the frame, centred on the nucleus unless the frame's edge is in the
        way (then shifted inside, or cut to the frame for a cell cut near its middle); its side is
        capped at the frame's shorter side.
    """
    height, width = frame_hw
    x0, y0, x1, y1 = nucleus_box
    floor = min(MIN_CROP, height, width)
    side = max(min(round(max(x1 - x0, y1 - y0) * scale), height, width), floor)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if cut_near_middle(nucleus_box, frame_hw):
        spans = [(max(cx - side / 2, 0), min(cx + side / 2, width)), (max(cy - side / 2, 0), min(cy + side / 2, height))]
        side = max(round(min(end - start for start, end in spans)), floor)
        left, top = (_flush(centre, side, span, limit) for centre, span, limit in zip((cx, cy), spans, (width, height)))
    else:
        left, top = _place(cx - side / 2, side, width), _place(cy - side / 2, side, height)
    return left, top, left + side, top + side


def cut_near_middle(nucleus_box: Box, frame_hw: tuple[int, int], aspect: float = EDGE_ASPECT) -> bool:
    """The nucleus lies on the frame's edge as a band along it: the edge cuts the cell near its middle."""
    height, width = frame_hw
    x0, y0, x1, y1 = nucleus_box
    w, h = x1 - x0, y1 - y0
    return ((x0 <= 0 or x1 >= width) and h >= aspect * w) or ((y0 <= 0 or y1 >= height) and w >= aspect * h)


def _flush(centre: float, side: int, span: tuple[float, float], limit: int) -> int:
    """The start of a span of `side` px: flush with the frame's edge where the square left the frame
    on this axis, centred on `centre` otherwise."""
    start, end = span
    if start <= 0 < limit - end:
        return 0
    if end >= limit > start:
        return limit - side
    return _place(centre - side / 2, side, limit)


def _place(start: float, side: int, limit: int) -> int:
    """The start of a span of `side` px near `start`, shifted to lie within [0, limit)."""
    return int(min(max(round(start), 0), limit - side))


def cut(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `box` (a contiguous copy, so the frame can be freed)."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])
