"""SSIM (Gaussian window 11, σ 1.5) and DoRL's SSIM target: the masked, cropped cell.

The SSIM is that of `pytorch_ssim`, which DoRL's training imports: a Gaussian window applied
per channel with zero padding of half the window, C1 = 0.01², C2 = 0.03² (data range 1), the
map averaged over pixels, channels and the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

WINDOW = 11
SIGMA = 1.5
TARGET_SIZE = 128
PAD = 10  # px of grey around the mask's bounding box
GREY = 128


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """A normalised 2-D Gaussian window [size,size]."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] @ g[None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """Mean SSIM of two image batches.

    Args:
        x: images [B,C,H,W] in [0,1].
        y: images of the same shape in [0,1].
        window_size: side of the Gaussian window.
        sigma: its standard deviation.

    Returns:
        A scalar tensor; 1 where x equals y.
    """
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    channels = x.shape[1]
    window = gaussian_window(window_size, sigma).to(x)[None, None].expand(channels, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=window_size // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.mean()


def ssim_loss(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_ssim = 1 − SSIM(decoded image, SSIM target), both [B,3,128,128] in [0,1].

    Computed in float32 even under autocast: C1 = 1e-4 is below bfloat16's resolution near 1.
    """
    with torch.autocast(device_type=decoded.device.type, enabled=False):
        return 1.0 - ssim(decoded.float(), target.float())


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a mask's foreground, bottom/right exclusive; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def ssim_target(rgb: np.ndarray, mask: np.ndarray, size: int = TARGET_SIZE, pad: int = PAD) -> np.ndarray:
    """The image the CAE's decoder must draw for one cell.

    Background outside the mask is set to grey 128, the image is cropped to the mask's
    bounding box, `pad` px of grey are added on each side (the bounding box + 10 px, without
    clipping at the image border), and the result is resized to size×size (bicubic, as DoRL's
    cubic `zoom`). An empty mask keeps the whole image, unmasked.

    Args:
        rgb: an HxWx3 uint8 image (the model's input, e.g. 224×224).
        mask: an HxW bool mask of the cell (argmax of the mask logits, largest component).
        size: output side.
        pad: grey border in px.

    Returns:
        A size×size×3 uint8 image; `target_tensor` scales a batch of them to [0,1].
    """
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {rgb.shape[:2]} differ in size; resize the mask first")
    box = mask_bbox(mask)
    if box is None:
        crop = rgb
    else:
        top, bottom, left, right = box
        grey = np.where(mask[..., None], rgb, np.uint8(GREY)).astype(np.uint8)
        crop = np.pad(grey[top:bottom, left:right], ((pad, pad), (pad, pad), (0, 0)), constant_values=GREY)
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8).copy()


def target_tensor(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 targets [B,H,W,3] (or [B,3,H,W] tensors) → float [B,3,H,W] in [0,1]."""
    t = torch.as_tensor(targets)
    if t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    return t.float() / 255.0
