"""Torch datasets over domains: decoded cells, mask targets with augmentations, domain batches.

Every image goes through `dorl.data.images` (`load_rgb`, then `resize_square`), the one
preprocessing the deployed analyzer shares, and stays uint8 until the model normalises it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from dorl.data.domains import Sample
from dorl.data.images import load_rgb, resize_square
from dorl.data.masks import load_cell_mask
from dorl.data.pseudo_masks import pseudo_mask


def load_images(samples: Sequence[Sample], size: int, done: Callable[[int], None] | None = None) -> np.ndarray:
    """Decode and resize cells: uint8 [N,size,size,3] in sample order.

    Args:
        samples: the cells to read.
        size: the model's input side.
        done: called with 1 after each image (progress).
    """

    def read(sample: Sample) -> np.ndarray:
        image = resize_square(load_rgb(sample.path), size)
        if done is not None:
            done(1)
        return image

    if not samples:
        return np.zeros((0, size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        return np.stack(list(pool.map(read, samples)))


def cell_masks(samples: Sequence[Sample], images: np.ndarray, use_expert: bool = True) -> tuple[np.ndarray, list[str]]:
    """The mask to train on for each cell: the expert's where there is one, else a pseudo mask.

    Args:
        samples: the cells.
        images: their resized images [N,S,S,3] (pseudo masks are computed on these).
        use_expert: False computes pseudo masks for every cell.

    Returns:
        Bool masks [N,S,S] and, per cell, "expert" or "pseudo".
    """
    size = images.shape[1]
    masks, kinds = [], []
    for sample, image in zip(samples, images):
        if use_expert and sample.mask_path is not None:
            masks.append(load_cell_mask(sample.mask_path, size))
            kinds.append("expert")
        else:
            masks.append(pseudo_mask(image))
            kinds.append("pseudo")
    return np.stack(masks) if masks else np.zeros((0, size, size), bool), kinds


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)


def colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
    """Brightness, contrast, saturation and hue changes of a uint8 RGB image [H,W,3].

    Args:
        image: uint8 RGB [H,W,3].
        brightness: multiplies every pixel.
        contrast: scales the distance from the mean grey.
        saturation: scales the distance from each pixel's grey.
        hue: rotation of the chroma plane (YIQ), as a fraction of a turn.

    Returns:
        The changed image, uint8. Plain numpy on purpose: torchvision's hue change goes through
        HSV (~0.5 s per 224×224 image on a CPU core), and small torch ops stall when the
        cores are shared.
    """
    x = image.astype(np.float32) * brightness
    grey = x @ _LUMA
    x = (x - grey.mean()) * contrast + grey.mean()
    grey = (x @ _LUMA)[..., None]
    x = (x - grey) * saturation + grey
    if hue:
        angle = 2 * math.pi * hue
        rotate = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]],
                          np.float32)
        x = x @ (np.linalg.inv(_TO_YIQ) @ rotate @ _TO_YIQ).T
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Augment:
    """Random flips, 90° rotations and colour jitter (brightness, contrast, saturation, hue)."""

    flip: bool = True
    rotate: bool = True
    jitter: float = 0.2
    hue: float = 0.05

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Args: image uint8 [S,S,3], mask [S,S]. Returns: both transformed alike (colour: image only)."""
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.flip and rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        if self.rotate:
            k = int(rng.integers(4))
            image, mask = np.rot90(image, k), np.rot90(mask, k)
        if self.jitter > 0 or self.hue > 0:
            low, high = 1 - self.jitter, 1 + self.jitter
            brightness, contrast, saturation = (float(rng.uniform(low, high)) for _ in range(3))
            image = colour_jitter(image, brightness, contrast, saturation, float(rng.uniform(-self.hue, self.hue)))
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def mask_target(mask: np.ndarray, size: int) -> torch.Tensor:
    """A cell mask [S,S] → class indices long [size,size] (0 background, 1 cell) by area fraction > 0.5."""
    s = mask.shape[0] // size
    area = np.asarray(mask, np.float32)[: size * s, : size * s].reshape(size, s, size, s).mean(axis=(1, 3))
    return torch.from_numpy((area > 0.5).astype(np.int64))


class SegDataset(Dataset):
    """(image float [3,S,S] on the 0–255 scale, mask target long [S/4,S/4]) pairs."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: Augment | None = None, seed: int = 0) -> None:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks = images, masks
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.target_size = images.shape[1] // 4

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.augment is not None:
            image, mask = self.augment(image, mask, self.rng)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(), mask_target(mask, self.target_size)


class DomainBatches:
    """Batches of indices in which every domain appears, sized in proportion to the domains.

    Each batch takes `max(min_per_domain, round(batch_size · n_d / N))` items of domain d,
    drawn without replacement within an epoch (a small domain is recycled when exhausted),
    in shuffled order; an epoch has ceil(N / batch_size) batches.
    """

    def __init__(self, domain_ids: np.ndarray, batch_size: int, min_per_domain: int = 2, seed: int = 0) -> None:
        self.domain_ids = np.asarray(domain_ids)
        self.groups = [np.flatnonzero(self.domain_ids == d) for d in np.unique(self.domain_ids)]
        total = len(self.domain_ids)
        self.shares = [max(min_per_domain, round(batch_size * len(g) / total)) for g in self.groups]
        self.num_batches = -(-total // batch_size)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        queues: list[list[int]] = [[] for _ in self.groups]
        for _ in range(self.num_batches):
            batch = []
            for queue, group, share in zip(queues, self.groups, self.shares):
                while len(queue) < share:
                    queue.extend(self.rng.permutation(group).tolist())
                batch.extend(queue[:share])
                del queue[:share]
            yield self.rng.permutation(np.asarray(batch))


def spread(groups: Sequence[Sequence[int]], limit: int | None, seed: int = 0) -> list[int]:
    """At most `limit` items drawn round-robin from `groups` (each shuffled), so every group is represented.

    Args:
        groups: index lists (e.g. one per domain).
        limit: how many to keep; None keeps all.
        seed: shuffling seed.

    Returns:
        The chosen indices, sorted.
    """
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.asarray(g, dtype=int))) for g in groups]
    total = sum(map(len, pools))
    want = total if limit is None else min(limit, total)
    chosen: list[int] = []
    while len(chosen) < want:
        for pool in pools:
            if pool and len(chosen) < want:
                chosen.append(int(pool.pop()))
    return sorted(chosen)
