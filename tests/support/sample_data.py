"""The tests' real cells, built from what the package bundles, so the suite runs on a fresh clone.

`build_test_data(root)` writes three labs under `root`, in the `<lab>/<class>/<image>` layout:

- `pbc/` and `bccd/`: the bundled real sample (`dorl/assets/sample`, 80 + 51 cells, 5 classes).
- `masked/`: a third lab with cell masks, made here from the bundled bccd cells. The shared jtsc
  images carry expert masks but their GPL terms keep them out of the repository, so this lab
  stands in for them: each bccd cell is tinted yellow (jtsc's background), reduced to 120x120 px
  and written as BMP, and its mask (`masked/masks/<class>/<id>.png`, 0 background, 128
  cytoplasm, 255 nucleus as in the expert masks) is the pseudo-mask of the tinted cell, with the
  darker half of its red channel as the nucleus. The masks are not expert masks: tests that
  measure the pseudo-masks against experts use the shared data (marker `shared_data`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dorl.paths import ASSETS_DIR

SAMPLE_DIR = ASSETS_DIR / "sample"
MASKED = "masked"  # the third lab: made here, with masks
LABS = ("pbc", "bccd", MASKED)
CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
MASKED_SIDE = 120
TINT = np.array([1.0, 0.93, 0.55])  # keeps red, dims blue: a pale background turns yellow
CYTOPLASM, NUCLEUS = 128, 255


def build_test_data(root: Path) -> Path:
    """Write the three labs under `root` (created) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    for lab in ("pbc", "bccd"):
        shutil.copytree(SAMPLE_DIR / lab, root / lab)
    _make_masked_lab(SAMPLE_DIR / "bccd", root / MASKED)
    return root


def _make_masked_lab(source: Path, out: Path) -> None:
    from dorl.data.images import find_images, load_rgb

    for path in find_images([source]):
        label = path.parent.name
        rgb = load_rgb(path)
        small = Image.fromarray(rgb).resize((MASKED_SIDE, MASKED_SIDE), Image.Resampling.BILINEAR)
        tinted = np.clip(np.asarray(small, np.float64) * TINT, 0, 255).round().astype(np.uint8)
        (out / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(tinted).save(out / label / f"{path.stem}.bmp")
        (out / "masks" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_mask(tinted)).save(out / "masks" / label / f"{path.stem}.png")


def label_mask(rgb: np.ndarray) -> np.ndarray:
    """A 0/128/255 mask of the cell at the centre of `rgb` (a centred disc if none is found)."""
    from dorl.data.pseudo_masks import pseudo_mask

    cell = pseudo_mask(rgb)
    if cell.sum() < 0.01 * cell.size:
        h, w = cell.shape
        ys, xs = np.ogrid[:h, :w]
        cell = (ys - h / 2) ** 2 + (xs - w / 2) ** 2 <= (0.3 * min(h, w)) ** 2
    red = rgb[:, :, 0].astype(np.float64)
    nucleus = cell & (red <= np.median(red[cell]))
    return np.where(nucleus, NUCLEUS, np.where(cell, CYTOPLASM, 0)).astype(np.uint8)
