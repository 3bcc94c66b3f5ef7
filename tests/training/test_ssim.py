import numpy as np
import pytest
import torch

from dorl.training.ssim import GREY, gaussian_window, mask_bbox, ssim, ssim_loss, ssim_target, target_tensor


def test_window_is_a_normalised_gaussian() -> None:
    window = gaussian_window(11, 1.5)
    assert window.shape == (11, 11) and window.sum().item() == pytest.approx(1.0)
    assert window[5, 5] == window.max() and torch.allclose(window, window.T)


def test_ssim_of_an_image_with_itself_is_one(cell_batch: np.ndarray) -> None:
    images = target_tensor(cell_batch[:2, :128, :128])
    assert images.shape == (2, 3, 128, 128)
    assert ssim(images, images).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim_loss(images, images).item() == pytest.approx(0.0, abs=1e-5)


def test_ssim_falls_with_noise_and_is_symmetric(cell_batch: np.ndarray) -> None:
    torch.manual_seed(0)
    images = target_tensor(cell_batch[:2, :128, :128])
    slightly = (images + 0.02 * torch.randn_like(images)).clamp(0, 1)
    heavily = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)
    assert 1.0 > ssim(images, slightly).item() > ssim(images, heavily).item() > 0.0
    assert ssim(images, heavily).item() == pytest.approx(ssim(heavily, images).item(), abs=1e-6)
    with pytest.raises(ValueError):
        ssim(images, images[:, :, :64])


def test_target_crops_the_masked_cell_with_a_grey_border() -> None:
    rgb = np.zeros((224, 224, 3), np.uint8)
    rgb[..., 0] = 200  # red everywhere, background included
    mask = np.zeros((224, 224), bool)
    mask[50:90, 100:180] = True  # a 40 x 80 cell
    assert mask_bbox(mask) == (50, 90, 100, 180)
    target = ssim_target(rgb, mask)
    assert target.shape == (128, 128, 3) and target.dtype == np.uint8
    # crop 60 x 100 (box + 10 px each side) resized to 128 x 128: the border is 10/60 and 10/100 of it
    assert (target[:15, 64] == GREY).all() and (target[-15:, 64] == GREY).all()
    assert (target[64, :8] == GREY).all() and (target[64, -8:] == GREY).all()
    centre = target[30:98, 20:108]
    assert (centre[..., 0] == 200).all() and (centre[..., 1] == 0).all()


def test_target_greys_the_background_inside_the_box_and_keeps_an_empty_mask_whole() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    mask[20:40, 20:40] = False  # a corner of the box outside the cell
    target = ssim_target(rgb, mask, size=80, pad=10)  # crop 80 x 80: no resampling
    assert (target[10:30, 10:30] == GREY).all()
    np.testing.assert_array_equal(target[30:70, 30:70], rgb[40:80, 40:80])
    whole = ssim_target(rgb, np.zeros((100, 100), bool), size=100)
    np.testing.assert_array_equal(whole, rgb)
    with pytest.raises(ValueError):
        ssim_target(rgb, mask[:50])


def test_target_tensor_scales_to_unit_range() -> None:
    t = target_tensor(np.full((2, 8, 8, 3), 255, np.uint8))
    assert t.shape == (2, 3, 8, 8) and t.max().item() == 1.0
    chw = target_tensor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert chw.shape == (1, 3, 8, 8)
