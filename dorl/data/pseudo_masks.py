"""Pseudo masks: a classical segmentation of the stained white blood cell, for domains without
expert masks.

Why each step (crops are centred on one WBC; backgrounds differ: pbc pink, bccd bluish, jtsc
yellow or white):

1. Optical density relative to the image's own background (its bright 95th percentile per
   channel) removes the background tint, so one rule serves every lab.
2. Nucleus: the red channel's density (the nuclear stain absorbs red, red cells hardly do),
   Otsu-thresholded; the component nearest the centre plus nearby lobes. When that is not most
   of the dark area (a platelet among red cells) the upper threshold of a 3-class Otsu is used.
3. Stained matter: total density above the lower 3-class Otsu threshold (background | pale
   cytoplasm | dark), holes filled. Holes away from the nucleus are red-cell pallor.
4. The cell is the union of the largest discs inside the stained matter that reach well into
   the nucleus and contain no red-cell pallor: touching red cells are discs that do not reach
   the nucleus, so they stay out.

On the 100 expert masks of jtsc this gives mean IoU 0.93 (see `measure_pseudo_mask_iou`).
Torch-free; scipy is imported when a mask is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dorl.data.images import load_rgb
from dorl.data.masks import load_cell_mask, mask_dice, mask_iou, resize_mask
from dorl.deps import require
from dorl.errors import ConfigError, ImageError

WORK_SIZE = 128  # px, longer side; the cell's outline needs no more and the disc union is fast
NUCLEUS_REACH = 0.5  # a disc joins the cell when the nucleus is within this fraction of its radius


def pseudo_mask(rgb: np.ndarray, work_size: int = WORK_SIZE) -> np.ndarray:
    """Segment the white blood cell at the centre of a crop.

    Args:
        rgb: an HxWx3 uint8 image (as `load_rgb` returns), the cell roughly centred.
        work_size: the longer side the image is reduced to before segmentation.

    Returns:
        An HxW bool mask of the whole cell (nucleus and cytoplasm).

    Raises:
        ImageError: the array is not HxWx3 uint8.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"pseudo_mask needs an HxWx3 uint8 image, got {rgb.shape} {rgb.dtype}: use load_rgb first.")
    height, width = rgb.shape[:2]
    scale = work_size / max(height, width)
    small = rgb
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    cell = _segment(small)
    if cell.shape == (height, width):
        return cell
    grey = Image.fromarray(cell.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(grey) > 127


def _segment(rgb: np.ndarray) -> np.ndarray:
    require("scipy", "computing pseudo masks")
    from scipy import ndimage

    size = min(rgb.shape[:2])
    density = _optical_density(rgb)
    nucleus = _nucleus(np.clip(density[..., 0], 0.0, None), size)
    stained, pallor = _stained_matter(density, nucleus, size)
    inside = ndimage.distance_transform_edt(stained)
    to_nucleus = ndimage.distance_transform_edt(~nucleus) if nucleus.any() else np.full(inside.shape, np.inf)
    to_pallor = ndimage.distance_transform_edt(~pallor) if pallor.any() else np.full(inside.shape, np.inf)
    centres = stained & (to_nucleus < NUCLEUS_REACH * inside) & (inside >= 0.02 * size) & (to_pallor > inside)
    cell = _disc_union(centres, inside) | nucleus
    labels, _ = ndimage.label(cell)
    touching = np.unique(labels[nucleus & cell])
    return ndimage.binary_fill_holes(np.isin(labels, touching[touching > 0]) | nucleus)


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """log(background / pixel) per channel: 0 on background, growing with the stain."""
    x = rgb.astype(np.float64)
    background = np.percentile(x.reshape(-1, 3), 95, axis=0)
    return np.log((background + 1.0) / (x + 1.0))


def _nucleus(red_density: np.ndarray, size: int) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(red_density, size / 120)
    dark = ndimage.binary_opening(f > _otsu(f))
    nucleus = _central_group(dark, size)
    darker = _otsu3(f)[1]
    # Red cells, not a nucleus, when the central group is a minority of the dark class, or when it
    # is several pieces hardly any of which reach the darkest class (a platelet among red cells).
    pieces = ndimage.label(nucleus)[1]
    if nucleus.sum() < 0.5 * dark.sum() or (pieces >= 3 and np.mean(f[nucleus] > darker) < 0.2):
        nucleus = _central_group(ndimage.binary_opening(f > darker), size)
    return nucleus


def _stained_matter(density: np.ndarray, nucleus: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels darker than background (holes filled), and the red-cell pallor among the holes."""
    from scipy import ndimage

    total = ndimage.gaussian_filter(np.sqrt((density**2).sum(-1)), size / 120)
    rest = total[~nucleus] if (~nucleus).any() else total.ravel()
    raw = (total > _otsu3(rest)[0]) | nucleus
    filled = ndimage.binary_fill_holes(raw)
    holes, count = ndimage.label(filled & ~raw)
    core = ndimage.binary_dilation(_convex_hull(nucleus), structure=_disk(max(1, int(0.03 * size))))
    area = np.bincount(holes.ravel(), minlength=count + 1)
    near_core = np.bincount(holes[core].ravel(), minlength=count + 1)
    is_pallor = (area >= (0.01 * size) ** 2) & (near_core == 0)
    is_pallor[0] = False
    stained = ndimage.binary_opening(filled, structure=_disk(max(1, int(0.02 * size))))
    return stained, is_pallor[holes]


def _disc_union(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of the open discs of radius floor(radii[p]) around every p in centres (one distance
    transform per radius, over the box its discs can reach).

    A disc lies inside a neighbour's when the neighbour's radius exceeds its own by at least their
    distance (one level for a side neighbour, two for a diagonal one): those are dropped first,
    which leaves about one centre in eight and shrinks the boxes.
    """
    from scipy import ndimage

    levels = np.where(centres, np.floor(radii), -np.inf)
    padded = np.pad(levels, 1, constant_values=-np.inf)
    height, width = levels.shape
    keep = centres.copy()
    for dy, dx, step in ((-1, 0, 1), (1, 0, 1), (0, -1, 1), (0, 1, 1), (-1, -1, 2), (-1, 1, 2), (1, -1, 2), (1, 1, 2)):
        keep &= padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] < levels + step
    union = np.zeros(centres.shape, bool)
    for r in np.unique(levels[keep]):
        at = keep & (levels == r)
        # only pixels within r of this level's centres can join: the distance transform runs on their box
        ys, xs = np.nonzero(at)
        reach = int(r) + 1
        y0, y1 = max(int(ys.min()) - reach, 0), min(int(ys.max()) + reach + 1, height)
        x0, x1 = max(int(xs.min()) - reach, 0), min(int(xs.max()) + reach + 1, width)
        union[y0:y1, x0:x1] |= ndimage.distance_transform_edt(~at[y0:y1, x0:x1]) < r
    return union


def _central_group(mask: np.ndarray, size: int) -> np.ndarray:
    """The component nearest the image centre, plus components close to it (nuclear lobes)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w]
    from_centre = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    index = np.arange(1, count + 1)
    area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    nearest = ndimage.minimum(from_centre, labels, index) - 1e-3 * area
    central = labels == index[int(np.argmin(nearest))]
    gap = ndimage.minimum(ndimage.distance_transform_edt(~central), labels, index)
    lobes = (np.asarray(gap) < 0.12 * size) & (area >= 20 * (size / 120) ** 2)
    return central | np.isin(labels, index[lobes])


def _otsu(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of the values in x."""
    hist, edges = np.histogram(x.ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * centres)
    w1, m1 = w0[-1] - w0, m0[-1] - m0
    between = w0 * w1 * (m0 / np.maximum(w0, 1) - m1 / np.maximum(w1, 1)) ** 2
    return float(centres[int(np.argmax(between))])


def _otsu3(x: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """The two thresholds of a 3-class Otsu split, searched over all pairs of histogram edges."""
    hist, edges = np.histogram(x.ravel(), bins=bins)
    p = hist / max(hist.sum(), 1)
    weight = np.concatenate([[0.0], np.cumsum(p)])
    moment = np.concatenate([[0.0], np.cumsum(p * (edges[:-1] + edges[1:]) / 2)])

    def term(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        w = weight[b] - weight[a]
        return np.where(w > 0, (moment[b] - moment[a]) ** 2 / np.where(w > 0, w, 1.0), 0.0)

    i, j = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")
    score = term(np.zeros_like(i), i) + term(i, j) + term(j, np.full_like(j, bins))
    score[j <= i] = -np.inf
    a, b = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(edges[i[a, b]]), float(edges[j[a, b]])


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a mask (Andrew's monotone chain, drawn with PIL)."""
    if np.count_nonzero(mask) < 3:
        return mask.copy()
    # every hull vertex is the first or last pixel of its row: the chain needs only those
    rows = np.flatnonzero(mask.any(axis=1))
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    points = sorted(set(zip(first.tolist(), rows.tolist())) | set(zip(last.tolist(), rows.tolist())))  # (x, y)

    def half(chain_points: list[tuple[int, int]]) -> list[tuple[int, int]]:
        chain: list[tuple[int, int]] = []
        for p in chain_points:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    polygon = half(points) + half(points[::-1])
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def measure_pseudo_mask_iou(domain: Any, limit: int | None = None,
                            segment: Callable[[np.ndarray], np.ndarray] = pseudo_mask) -> dict[str, float]:
    """Compare pseudo masks with a domain's expert masks.

    Args:
        domain: a `dorl.data.domains.Domain`; only samples with a mask are used.
        limit: use at most this many masked samples, spread evenly over them (None: all).
        segment: the segmentation to measure (default `pseudo_mask`).

    Returns:
        {"n", "mean", "median", "min"} of the cell IoU, plus "dice_mean".

    Raises:
        ConfigError: the domain has no expert masks.
    """
    masked = [s for s in domain.samples if s.mask_path is not None]
    if not masked:
        raise ConfigError(f"domain {domain.name!r} has no expert masks (expected under "
                          f"{domain.root}/masks/<class>/<stem>.png): nothing to measure pseudo masks against.")
    if limit is not None and 0 < limit < len(masked):
        masked = [masked[i] for i in np.linspace(0, len(masked) - 1, limit).round().astype(int)]
    ious, dices = [], []
    for sample in masked:
        rgb = load_rgb(sample.path)
        expert = resize_mask(load_cell_mask(sample.mask_path), rgb.shape[:2])
        predicted = segment(rgb)
        ious.append(mask_iou(predicted, expert))
        dices.append(mask_dice(predicted, expert))
    values = np.asarray(ious)
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "dice_mean": float(np.mean(dices))}
