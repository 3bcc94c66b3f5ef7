"""Host-side postprocessing of the graph's outputs, in numpy (no scipy, no torch).

The cell mask is the paper's: argmax over the (background, cell) mask logits, then the
largest connected component of the cell class, then a nearest-neighbour resize back to the
input image's size. The class decision flags a cell as uncertain when its top probability is
below a threshold or any of its outputs is not finite; a non-finite cell never gets a label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

CELL_CHANNEL = 1  # mask_logits channel 0 is background, 1 is cell
_NEIGHBOURS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in float32."""
    shifted = logits.astype(np.float32) - np.max(logits, axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


def label_components(mask: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Label the connected components of a 2-D boolean mask.

    Min-label propagation between neighbours with pointer jumping, vectorised over the map; it
    converges in a few dozen passes on a 56x56 mask.

    Args:
        mask: an HxW boolean array.
        connectivity: 4 (edges) or 8 (edges and corners).

    Returns:
        (labels, count): int32 labels, 0 for background and 1..count numbered in raster order
        of each component's first pixel; and the number of components.
    """
    if connectivity not in _NEIGHBOURS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    background = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), background)
    while True:
        previous = labels.copy()
        for dy, dx in _NEIGHBOURS[connectivity]:
            a = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
            b = (slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
            joined = np.minimum(labels[a], labels[b])  # background stays background: it is the max
            both = mask[a] & mask[b]
            labels[a] = np.where(both, joined, labels[a])
            labels[b] = np.where(both, np.minimum(labels[b], joined), labels[b])  # labels only decrease
        flat = labels.reshape(-1)
        foreground = flat < background
        flat[foreground] = flat[flat[foreground]]  # pointer jumping: follow each label to its label
        if np.array_equal(labels, previous):
            break
    roots, dense = np.unique(labels[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int32)
    out[mask] = dense.reshape(-1).astype(np.int32) + 1
    return out, len(roots)


def largest_component(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Keep only the largest connected component of a boolean mask (ties: the first in raster order).

    Returns:
        A boolean array of the same shape; all False when the mask is empty.
    """
    labels, count = label_components(mask, connectivity)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1


def low_res_mask(mask_logits: np.ndarray, connectivity: int = 4) -> np.ndarray | None:
    """The cell mask of one image at the graph's mask resolution: argmax, then the largest component.

    Args:
        mask_logits: a [2, h, w] array (channel 0 background, channel 1 cell).
        connectivity: neighbourhood of the connected-component step.

    Returns:
        An hxw boolean mask, or None when the logits are not all finite.
    """
    if mask_logits.ndim != 3 or mask_logits.shape[0] != 2:
        raise ValueError(f"mask_logits must be [2, h, w], got {mask_logits.shape}")
    if not np.isfinite(mask_logits).all():
        return None
    return largest_component(np.argmax(mask_logits, axis=0) == CELL_CHANNEL, connectivity)


def upscale_mask(low_res: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A low-resolution boolean mask brought to (height, width) by nearest-neighbour resizing."""
    height, width = size_hw
    if low_res.shape == (height, width):
        return low_res.copy()
    image = Image.fromarray(low_res.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image) > 127


def cell_mask(mask_logits: np.ndarray, size_hw: tuple[int, int], connectivity: int = 4) -> np.ndarray | None:
    """The cell mask of one image from its mask logits, at the image's original size.

    Args:
        mask_logits: a [2, h, w] array (channel 0 background, channel 1 cell).
        size_hw: (height, width) of the original image.
        connectivity: neighbourhood of the connected-component step.

    Returns:
        An HxW boolean mask, or None when the logits are not all finite.
    """
    low_res = low_res_mask(mask_logits, connectivity)
    return None if low_res is None else upscale_mask(low_res, size_hw)


def decide(probs: np.ndarray, class_names: Sequence[str], threshold: float, finite: bool = True) -> tuple[str | None, bool]:
    """The label of one cell and whether it is uncertain.

    Args:
        probs: the cell's class probabilities, [C].
        class_names: the C class names, in the head's order.
        threshold: a top probability below this marks the cell uncertain.
        finite: False when any output of this cell is NaN or infinite.

    Returns:
        (label, uncertain): label is None when the outputs are not finite.
    """
    if not finite or not np.isfinite(probs).all():
        return None, True
    top = int(np.argmax(probs))
    return class_names[top], bool(probs[top] < threshold)


def finite_rows(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Per batch item, whether every output tensor of that item is finite.

    Returns:
        A boolean [B] array.
    """
    rows: np.ndarray | None = None
    for array in outputs.values():
        if not np.issubdtype(array.dtype, np.floating):
            continue
        ok = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        rows = ok if rows is None else rows & ok
    if rows is None:
        batch = next(iter(outputs.values())).shape[0] if outputs else 0
        return np.ones(batch, dtype=bool)
    return rows
