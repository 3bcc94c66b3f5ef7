import numpy as np
import pytest

from dorl.data.framing import FramingConfig, crop_cell
from dorl.data.images import load_rgb, resize_square
from dorl.data.pseudo_masks import pseudo_mask
from dorl.errors import ConfigError
from dorl.paths import ASSETS_DIR
from dorl.training.cell_inputs import CellMasks, cell_inputs, target_mask
from dorl.training.ssim import ssim_target


def _box(top: int, size: int = 20) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    mask[top:top + size, 10:30] = True
    return mask


def test_the_target_is_cut_from_the_best_mask_there_is() -> None:
    expert, pseudo, seg, empty = _box(0), _box(10), _box(20), np.zeros((64, 64), bool)
    assert target_mask(CellMasks(expert, pseudo, seg), True)[1] == "expert"
    assert target_mask(CellMasks(None, pseudo, seg), True)[1] == "pseudo"
    assert target_mask(CellMasks(None, empty, seg), True)[1] == "segmenter"  # pseudo found nothing
    assert target_mask(CellMasks(None, empty, seg), False) == (None, "none")  # segmenter not trusted
    mask, source = target_mask(CellMasks(expert, pseudo, seg), False, ssim_masks="segmenter")  # DoRL's choice
    assert source == "segmenter" and mask is seg


def test_framing_config_is_checked() -> None:
    assert not FramingConfig().cell and FramingConfig(input="cell").cell
    with pytest.raises(ConfigError, match="framing input"):
        FramingConfig(input="field")
    with pytest.raises(ConfigError, match="framing mask"):
        FramingConfig(mask="expert")


def test_inputs_and_targets_of_real_cells() -> None:
    paths = sorted((ASSETS_DIR / "sample" / "pbc" / "monocyte").iterdir())[:3]
    images = [load_rgb(p) for p in paths]
    pseudo = [pseudo_mask(resize_square(i, 224)) for i in images]
    masks = [CellMasks(pseudo=p) for p in pseudo[:2]] + [CellMasks()]  # the third has no mask at all
    whole = cell_inputs(images, masks, FramingConfig(), 224)
    assert whole.inputs.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(whole.inputs[0], resize_square(images[0], 224))
    np.testing.assert_array_equal(whole.targets[1], ssim_target(resize_square(images[1], 224), pseudo[1]))
    assert whole.target_sources == ["pseudo", "pseudo", "none"] and not whole.empty.any()
    cell = cell_inputs(images, masks, FramingConfig(input="cell"), 224)
    np.testing.assert_array_equal(cell.inputs[0], crop_cell(images[0], pseudo[0], 224).image)
    np.testing.assert_array_equal(cell.targets, whole.targets)  # the target does not depend on the framing
    assert cell.empty.tolist() == [False, False, True]  # flagged, not silently framed
    np.testing.assert_array_equal(cell.inputs[2], resize_square(images[2], 224))
