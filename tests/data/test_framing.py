from __future__ import annotations

import numpy as np
import pytest

from dorl.data.framing import GREY, crop_cell, crop_cells, fit_mask, mask_bbox, square_box
from dorl.data.images import load_rgb
from dorl.data.pseudo_masks import pseudo_mask
from dorl.errors import ImageError
from dorl.paths import ASSETS_DIR

SAMPLE = ASSETS_DIR / "sample"


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_square_box_adds_the_margin_around_the_centre() -> None:
    assert square_box((10, 30, 40, 50), 0.1) == (8, 32, 33, 57)  # side 20 * 1.2 = 24, centred on (20, 45)
    assert square_box((0, 5, 0, 5), 0.0) == (0, 5, 0, 5)


def test_crop_of_a_synthetic_cell_has_its_values() -> None:
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[...] = (200, 50, 10)  # red "background" that must become grey
    cell = _disc((100, 120), (50, 60), 20)
    rgb[cell] = (30, 60, 90)
    crop = crop_cell(rgb, cell, size=48, margin=0.1)
    assert crop.image.shape == (48, 48, 3) and crop.image.dtype == np.uint8
    assert not crop.empty and not crop.touches_border
    assert crop.box == (26, 75, 36, 85)  # the 41 px box (rows 30..70) + 10 % per side: 49 px, square
    assert crop.coverage == pytest.approx(cell.mean())
    assert tuple(crop.image[24, 24]) == (30, 60, 90)  # the cell, in the middle
    assert tuple(crop.image[0, 0]) == (GREY, GREY, GREY)  # background outside the mask is grey
    assert not np.any(np.all(crop.image == (200, 50, 10), axis=-1))  # nothing of the background is left


def test_cell_at_the_border_is_flagged_and_padded_grey() -> None:
    rgb = np.full((60, 60, 3), 250, np.uint8)
    cell = _disc((60, 60), (5, 30), 12)  # cut off by the top edge
    rgb[cell] = 40
    crop = crop_cell(rgb, cell, size=32)
    assert crop.touches_border and not crop.empty
    assert crop.box is not None and crop.box[0] < 0  # the square reaches above the image
    assert (crop.image[0] == GREY).all()  # padded with grey there


def test_empty_mask_is_flagged_and_keeps_the_whole_image() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    crop = crop_cell(rgb, np.zeros((40, 50), bool), size=40)
    assert crop.empty and crop.box is None and crop.coverage == 0.0
    assert crop.image.shape == (40, 40, 3)


def test_coarse_mask_is_resized_smoothly() -> None:
    coarse = _disc((56, 56), (28, 28), 10)
    fine = fit_mask(coarse, (224, 224))
    assert fine.shape == (224, 224)
    assert mask_bbox(fine) == pytest.approx((72, 156, 72, 156), abs=3)  # 4x the coarse box (rows 18..38)
    assert abs(fine.mean() - coarse.mean()) < 0.01


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        crop_cell(np.zeros((10, 10), np.uint8), np.ones((10, 10), bool))
    with pytest.raises(ImageError, match="2-D"):
        crop_cell(np.zeros((10, 10, 3), np.uint8), np.ones((1, 10, 10), bool))


@pytest.mark.parametrize("lab", ["pbc", "bccd"])
def test_real_cells_are_framed_on_the_cell(lab: str) -> None:
    """Bundled real cells with their pseudo masks: the cell fills the crop, its surround is grey."""
    paths = sorted((SAMPLE / lab / "lymphocyte").iterdir())[:3] + sorted((SAMPLE / lab / "neutrophil").iterdir())[:3]
    images = [load_rgb(p) for p in paths]
    masks = [pseudo_mask(i) for i in images]
    crops, empty, touches = crop_cells(images, masks, size=224)
    assert crops.shape == (6, 224, 224, 3) and not empty.any()
    for image, mask, crop in zip(images, masks, crops):
        grey = np.all(crop == GREY, axis=-1)
        # The cell covers 3-60 % of the lab's image but about half of its crop (a disc in the
        # square box + margin would cover pi/4/1.44 = 55 %).
        assert 0.03 < mask.mean() < 0.6
        assert 0.3 < 1 - grey.mean() < 0.75
        assert grey[:8].all() and grey[-8:].all()  # the margin is grey
        centre = crop[96:128, 96:128].reshape(-1, 3).mean(0)
        assert centre.min() < 200  # stained cell, not background or grey, in the middle
    # pbc's cells sit well inside the field; BCCD's crops are cut tight, two of these six to the edge.
    assert touches.sum() == {"pbc": 0, "bccd": 2}[lab]
