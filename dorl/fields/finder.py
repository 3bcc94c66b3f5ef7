"""Find the white cells in a whole camera frame by their nuclear stain (numpy and Pillow only).

In a Giemsa or May-Grünwald-Giemsa smear the white-cell nucleus is the one large blue-violet
object of the field: it absorbs red light and lets blue through, while red cells absorb green
and blue (they are pink) and the background absorbs nothing. So the finder works on

    stain = OD(red) - OD(blue),   OD(c) = log(background_c / pixel_c),

the optical densities relative to the frame's own bright background (its 95th percentile per
channel, which removes the lamp's tint). The stain is near 0 on red cells and background and
0.25-0.7 on nuclei (OD(red) alone, the pseudo-masks' channel, cannot tell a nucleus from the
red cells around it in a whole field). Pixels above `threshold` form pieces; pieces close to
each other join into one nucleus as long as it stays nucleus-sized (the lobes of a neutrophil or
eosinophil); nuclei smaller than `min_area` are platelets or specks. The cell's box is the
nucleus box grown by `margin`, the convention of the annotated white-cell boxes it was tuned
against (they hold the whole cell); a cell whose box leaves the frame is cut by the edge.

Everything runs at 1/`scale` of the frame's resolution: a nucleus is 100-250 px across in a
640x480 frame, platelets 15-30 px, so a 4x reduction keeps both apart and makes the search a few
tens of milliseconds per frame. The defaults were chosen on the even-numbered BCCD frames and
checked on the odd-numbered ones (`python -m dorl.fields.benchmark`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dorl.errors import ConfigError, ImageError
from dorl.runtime.postprocess import label_components

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels, x1/y1 exclusive
BACKGROUND_PERCENTILE = 95.0


@dataclass(frozen=True)
class FinderConfig:
    """How white cells are found in a frame; lengths and areas are in frame pixels."""

    scale: int = field(default=4, metadata={"help": "the frame is reduced by this factor before the search"})
    threshold: float = field(default=0.125, metadata={"help": "stain contrast OD(red) - OD(blue) of a nucleus pixel"})
    min_area: int = field(default=5000, metadata={"help": "smallest nucleus area; platelets are far smaller"})
    min_piece: int = field(default=256, metadata={"help": "pieces smaller than this never join a nucleus"})
    lobe_gap: int = field(default=24, metadata={"help": "pieces at most this far apart may be lobes of one nucleus"})
    max_extent: int = field(default=260, metadata={"help": "lobes never join into a nucleus longer than this"})
    margin: int = field(default=20, metadata={"help": "from the nucleus box to the cell box, each side"})

    def __post_init__(self) -> None:
        checks = [
            (self.scale >= 1, f"scale must be at least 1, got {self.scale}."),
            (self.threshold > 0, f"threshold must be positive, got {self.threshold}."),
            (self.min_area >= 1 and self.min_piece >= 1, "min_area and min_piece must be at least 1 px."),
            (self.lobe_gap >= 0 and self.margin >= 0, "lobe_gap and margin must not be negative."),
            (self.max_extent >= 1, f"max_extent must be at least 1 px, got {self.max_extent}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"finder: {message}")


@dataclass(frozen=True, eq=False)
class FoundCell:
    """One white cell found in a frame."""

    box: Box  # the cell's box, clipped to the frame
    nucleus_box: Box  # the nucleus's box
    nucleus: np.ndarray  # bool mask of the nucleus over nucleus_box (its shape is the box's)
    area: int  # nucleus pixels
    stain: float  # mean stain contrast over the nucleus
    edge: bool  # the cell reaches beyond the frame: cut by its edge

    def frame_mask(self, frame_hw: tuple[int, int]) -> np.ndarray:
        """The nucleus as an HxW bool mask of the whole frame."""
        mask = np.zeros(frame_hw, dtype=bool)
        x0, y0, x1, y1 = self.nucleus_box
        mask[y0:y1, x0:x1] = self.nucleus
        return mask


def find_white_cells(rgb: np.ndarray, config: FinderConfig | None = None) -> list[FoundCell]:
    """Find the white cells of one frame.

    Args:
        rgb: the frame, HxWx3 uint8 (as `dorl.data.images.load_rgb` returns).
        config: the finder's settings (default: `FinderConfig()`).

    Returns:
        The cells, largest nucleus first.

    Raises:
        ImageError: the array is not an HxWx3 uint8 image.
    """
    config = config or FinderConfig()
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"the finder needs an HxWx3 uint8 frame, got {rgb.shape} {rgb.dtype}: use load_rgb first.")
    height, width = rgb.shape[:2]
    small = _reduce(rgb, config.scale)
    stain = stain_contrast(small)
    groups, count = _nucleus_groups(stain > config.threshold, config)
    cells = [_cell(groups == i, stain, config, (height, width)) for i in range(1, count + 1)]
    found = [c for c in cells if c is not None]
    return sorted(found, key=lambda c: -c.area)


def stain_contrast(rgb: np.ndarray) -> np.ndarray:
    """OD(red) - OD(blue) per pixel, relative to the image's bright background (float32 HxW)."""
    levels = np.arange(256, dtype=np.float32)
    red, blue = (  # one look-up table per channel: OD[v] = log((background + 1) / (v + 1))
        np.log(np.float32(_percentile_u8(rgb[..., c], BACKGROUND_PERCENTILE) + 1) / (levels + 1)) for c in (0, 2)
    )
    return red[rgb[..., 0]] - blue[rgb[..., 2]]


def _percentile_u8(channel: np.ndarray, q: float) -> int:
    """The q-th percentile of uint8 values from their histogram (the lowest level reaching q %)."""
    cumulative = np.cumsum(np.bincount(channel.reshape(-1), minlength=256))
    return int(np.searchsorted(cumulative, q / 100.0 * cumulative[-1]))


def _reduce(rgb: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).reduce(scale))  # box filter: a mean over scale x scale blocks


def _nucleus_groups(mask: np.ndarray, config: FinderConfig) -> tuple[np.ndarray, int]:
    """Label the nuclei: pieces of stained pixels, each big enough, joined when they are lobes of one.

    Pieces join, the closest pairs first, when their gap is at most `lobe_gap` and the joined
    nucleus still spans at most `max_extent`: the lobes of a segmented or bilobed nucleus are
    close and small together, two neighbouring white cells are close but too large together.
    """
    pieces, count = label_components(mask, connectivity=8)
    areas = np.bincount(pieces.reshape(-1), minlength=count + 1) * config.scale**2
    kept = [i for i in range(1, count + 1) if areas[i] >= config.min_piece]
    if not kept:
        return np.zeros_like(pieces), 0
    boundary = mask & ~_erode(mask)
    points = {i: np.argwhere((pieces == i) & boundary) for i in kept}
    boxes = {i: np.concatenate([points[i].min(axis=0), points[i].max(axis=0)]) for i in kept}
    parent = {i: i for i in kept}
    for gap, i, j in _close_pairs(kept, points, boxes, config):
        a, b = _root(parent, i), _root(parent, j)
        if a == b:
            continue
        joined = np.concatenate([np.minimum(boxes[a][:2], boxes[b][:2]), np.maximum(boxes[a][2:], boxes[b][2:])])
        if (joined[2:] - joined[:2] + 1).max() * config.scale <= config.max_extent:
            parent[b], boxes[a] = a, joined
    roots = sorted({_root(parent, i) for i in kept})
    number = {r: n + 1 for n, r in enumerate(roots)}
    lookup = np.zeros(count + 1, dtype=np.int32)
    for i in kept:
        lookup[i] = number[_root(parent, i)]
    return lookup[pieces], len(roots)


def _close_pairs(kept: list[int], points: dict[int, np.ndarray], boxes: dict[int, np.ndarray],
                 config: FinderConfig) -> list[tuple[float, int, int]]:
    """(gap in frame px, i, j) for the pairs of pieces at most `lobe_gap` apart, closest first."""
    reach = config.lobe_gap / config.scale + 1  # centre-to-centre distance of pixels `lobe_gap` apart
    pairs = []
    for n, i in enumerate(kept):
        for j in kept[n + 1:]:
            apart = np.maximum(boxes[i][:2] - boxes[j][2:], boxes[j][:2] - boxes[i][2:])
            if np.hypot(*np.maximum(apart, 0)) > reach:
                continue  # the boxes alone are too far apart
            d = np.sqrt(((points[i][:, None, :] - points[j][None, :, :]) ** 2).sum(-1).min())
            if d <= reach:
                pairs.append((float(d - 1) * config.scale, i, j))
    return sorted(pairs)


def _root(parent: dict[int, int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are all in the mask (the frame's border counts as outside)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return inner


def _cell(nucleus: np.ndarray, stain: np.ndarray, config: FinderConfig, frame_hw: tuple[int, int]) -> FoundCell | None:
    s = config.scale
    area = int(np.count_nonzero(nucleus)) * s * s
    if area < config.min_area:
        return None
    ys, xs = np.nonzero(nucleus)
    sy0, sy1, sx0, sx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    height, width = frame_hw
    nucleus_box = (sx0 * s, sy0 * s, min(sx1 * s, width), min(sy1 * s, height))
    full = np.repeat(np.repeat(nucleus[sy0:sy1, sx0:sx1], s, axis=0), s, axis=1)
    full = full[: nucleus_box[3] - nucleus_box[1], : nucleus_box[2] - nucleus_box[0]]
    m = config.margin
    grown = (nucleus_box[0] - m, nucleus_box[1] - m, nucleus_box[2] + m, nucleus_box[3] + m)
    edge = grown[0] < 0 or grown[1] < 0 or grown[2] > width or grown[3] > height
    box = (max(grown[0], 0), max(grown[1], 0), min(grown[2], width), min(grown[3], height))
    return FoundCell(box=box, nucleus_box=nucleus_box, nucleus=full, area=area,
                     stain=float(stain[nucleus].mean()), edge=edge)
