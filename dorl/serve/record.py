"""What `/analyze` answers about one cell: the analyzer's record, with the mask encoded for JSON.

`cell_record` is `dorl predict --json`'s record (`dorl.runtime.records.cell_record`: source,
status, label, confidence, uncertain, error, no_cell, probs, distance, size, notes, site), with
`mask` holding the mask itself instead of a file name, and `site_profile` describing the profile
that re-centred the features. Masks travel as a base64 PNG (0/255, the image's own size) or as
COCO's uncompressed run-length encoding (column-major runs starting with background), which
pycocotools and most annotation tools read.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from dorl.runtime import records
from dorl.runtime.cell_result import CellResult


def mask_png(mask: np.ndarray) -> str:
    """A boolean mask as a base64 PNG, 255 on the cell."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean mask as COCO uncompressed RLE: {"size": [h, w], "counts": [...]} over column-major pixels."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # runs start with background
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode `mask_rle`'s output (for clients and tests)."""
    height, width = rle["size"]
    values = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        values[position:position + count] = value
        position, value = position + count, not value
    return values.reshape((height, width), order="F")


def encode_mask(mask: np.ndarray | None, mask_format: str) -> Any:
    if mask is None or mask_format == "none":
        return None
    return {"format": "png", "png": mask_png(mask)} if mask_format == "png" else {"format": "rle", **mask_rle(mask)}


def cell_record(result: CellResult, mask_format: str, site: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON record of one analysed cell: predict's record, the mask encoded, the site profile described.

    Args:
        result: the analyzer's result.
        mask_format: "png", "rle" or "none".
        site: the site profile the analyzer applied (name, method, cells), or None.
    """
    record = records.cell_record(result)
    record["mask"] = encode_mask(result.mask, mask_format)
    record["mask_error"] = None
    record["site_profile"] = site
    return record
