"""Cell masks: read expert mask files, resize them, compare them, keep the main component.

Mask files follow the layout of `../shared/data/wbc` (`<root>/masks/<class>/<id>.png`): 0 is
background, 128 cytoplasm, 255 nucleus; the cell is every pixel above 0. Torch-free; scipy is
imported only by `largest_component`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dorl.deps import require
from dorl.errors import ImageError

CYTOPLASM_VALUE = 128
NUCLEUS_VALUE = 255


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as its raw label values.

    Args:
        path: a PNG (or any PIL-readable) mask; colour masks are converted to grey.

    Returns:
        An HxW uint8 array (0 background, 128 cytoplasm, 255 nucleus in the expert masks).

    Raises:
        ImageError: the file is missing, not an image, or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"mask {path} does not exist: check the masks/ folder.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16L", "I;16B", "I"):
                return (np.asarray(img, dtype=np.int64) > 0).astype(np.uint8) * 255
            return np.array(img.convert("L"), dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise ImageError(f"mask {path} is not an image PIL can read: save masks as PNG.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"mask {path} could not be decoded ({exc}): the file is truncated or corrupt.") from exc


def cell_mask(mask: np.ndarray) -> np.ndarray:
    """The whole cell (cytoplasm and nucleus) of a label mask, as a bool array."""
    return np.asarray(mask) > 0


def nucleus_mask(mask: np.ndarray) -> np.ndarray:
    """The nucleus of a label mask (value 255), as a bool array."""
    return np.asarray(mask) == NUCLEUS_VALUE


def load_cell_mask(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file and return its cell as bool, optionally resized (nearest).

    Args:
        path: the mask file.
        size: None keeps the file's size; an int gives size x size; a pair is (height, width).

    Returns:
        An HxW bool array.
    """
    cell = cell_mask(read_mask(path))
    return cell if size is None else resize_mask(cell, size)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a 2-D mask with nearest-neighbour sampling, so labels are never blended.

    Args:
        mask: an HxW bool or uint8 array.
        size: an int for size x size (as `resize_square` does for images), or (height, width).

    Returns:
        The resized mask, with the input's dtype.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ImageError(f"a mask must be 2-D, got shape {mask.shape}: pass one mask at a time.")
    height, width = (size, size) if isinstance(size, int) else size
    if mask.shape == (height, width):
        return mask.copy()
    data = mask.astype(np.uint8) * 255 if mask.dtype == np.bool_ else mask.astype(np.uint8)
    resized = np.asarray(Image.fromarray(data).resize((width, height), Image.Resampling.NEAREST))
    return resized > 0 if mask.dtype == np.bool_ else resized.astype(mask.dtype)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}; resize one with resize_mask.")
    return a, b


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (non-zero is foreground); 1.0 when both are empty."""
    a, b = _pair(a, b)
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks (non-zero is foreground); 1.0 when both are empty."""
    a, b = _pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def largest_component(mask: np.ndarray, connectivity: int = 4, fill_holes: bool = False) -> np.ndarray:
    """Keep the largest connected foreground component (DoRL's post-processing of the mask).

    The default connectivity is the runtime's (`dorl.runtime.postprocess`), so training-time
    evaluation and the analyzer keep the same pixels; ties go to the first in raster order.
    (The runtime has its own numpy labelling, which keeps the analyzer free of scipy; it is fast
    on its 56x56 maps but takes ~50 s on a 1024x1024 mask, where scipy takes milliseconds.)

    Args:
        mask: an HxW array; non-zero is foreground.
        connectivity: 4 (edges) or 8 (edges and corners).
        fill_holes: also fill holes inside the kept component.

    Returns:
        An HxW bool array; all False when the mask is empty.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    require("scipy", "keeping the largest connected component of a mask")
    from scipy import ndimage

    fg = np.asarray(mask) > 0
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, count = ndimage.label(fg, structure=structure)
    if count == 0:
        return np.zeros_like(fg)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    kept = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(kept) if fill_holes else kept
