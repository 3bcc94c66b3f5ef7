import numpy as np
import torch

from dorl.data.domains import Domain
from dorl.training.datasets import (
    Augment,
    DomainBatches,
    SegDataset,
    cell_masks,
    colour_jitter,
    load_images,
    mask_target,
    spread,
)


def test_images_are_decoded_and_resized_uint8(tiny_domains: list[Domain]) -> None:
    samples = tiny_domains[2].samples[:3]
    done: list[int] = []
    images = load_images(samples, 224, done=done.append)
    assert images.shape == (3, 224, 224, 3) and images.dtype == np.uint8 and sum(done) == 3
    assert load_images([], 224).shape == (0, 224, 224, 3)


def test_masks_are_the_experts_where_there_are_some_else_pseudo(tiny_domains: list[Domain]) -> None:
    masked, pbc = tiny_domains[2], tiny_domains[0]
    samples = [masked.samples[0], pbc.samples[0]]
    images = load_images(samples, 224)
    masks, kinds = cell_masks(samples, images)
    assert masks.shape == (2, 224, 224) and masks.dtype == bool and kinds == ["expert", "pseudo"]
    assert 0.05 < masks.mean(axis=(1, 2)).min() and masks.mean(axis=(1, 2)).max() < 0.9  # a cell, not the frame
    _, kinds = cell_masks(samples, images, use_expert=False)
    assert kinds == ["pseudo", "pseudo"]


def test_mask_targets_are_class_indices_at_a_quarter_size() -> None:
    mask = np.zeros((224, 224), bool)
    mask[:112] = True
    mask[112:114] = True  # half of a 4-px block: not enough
    target = mask_target(mask, 56)
    assert target.shape == (56, 56) and target.dtype == torch.long
    assert target[:28].eq(1).all() and target[28:].eq(0).all()


def test_augmentation_moves_image_and_mask_together(cell_batch: np.ndarray) -> None:
    image = cell_batch[0]
    mask = np.zeros((224, 224), bool)
    mask[:50, :30] = True  # a corner, so flips and rotations show
    geometric = Augment(flip=True, rotate=True, jitter=0.0, hue=0.0)
    rng = np.random.default_rng(3)
    corners = set()
    for _ in range(8):
        marked = image.copy()
        marked[mask] = 0
        out_image, out_mask = geometric(marked, mask, rng)
        assert out_image.shape == (224, 224, 3) and out_mask.shape == (224, 224)
        assert (out_image[out_mask] == 0).all() and out_mask.sum() == mask.sum()
        corners.add((bool(out_mask[0, 0]), bool(out_mask[0, -1]), bool(out_mask[-1, 0]), bool(out_mask[-1, -1])))
    assert len(corners) > 1
    coloured, same = Augment(flip=False, rotate=False, jitter=0.3, hue=0.1)(image, mask, rng)
    assert (same == mask).all() and coloured.dtype == np.uint8 and not np.array_equal(coloured, image)


def test_colour_jitter_identity_and_hue_turn(cell_batch: np.ndarray) -> None:
    image = cell_batch[1]
    np.testing.assert_array_equal(colour_jitter(image, 1, 1, 1, 0.0), image)
    full_turn = colour_jitter(image, 1, 1, 1, 1.0).astype(int)
    assert np.abs(full_turn - image).max() <= 1
    grey = colour_jitter(image, 1, 1, 0, 0.0)
    assert np.abs(grey.astype(int) - grey[..., :1]).max() <= 1  # no saturation: R = G = B
    assert colour_jitter(image, 1.2, 1, 1, 0.0).mean() > image.mean()


def test_seg_dataset_items(cell_batch: np.ndarray) -> None:
    masks = np.zeros((6, 224, 224), bool)
    masks[:, 56:168, 56:168] = True
    data = SegDataset(cell_batch, masks, Augment(), seed=0)
    image, target = data[0]
    assert len(data) == 6 and image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 255 and target.shape == (56, 56)
    assert target.sum() == 28 * 28  # the centred square survives flips and rotations
    plain, _ = SegDataset(cell_batch, masks)[2]
    np.testing.assert_array_equal(plain.permute(1, 2, 0).numpy(), cell_batch[2])


def test_domain_batches_hold_every_domain_in_proportion() -> None:
    ids = np.array([0] * 60 + [1] * 30 + [2] * 10)
    batches = DomainBatches(ids, batch_size=10, min_per_domain=2, seed=0)
    assert len(batches) == 10 and batches.shares == [6, 3, 2]
    seen = []
    for batch in batches:
        counts = np.bincount(ids[batch], minlength=3)
        assert counts.tolist() == [6, 3, 2]
        seen.extend(batch[ids[batch] == 0].tolist())
    assert len(set(seen)) == 60  # the anchor is drawn without replacement within an epoch


def test_spread_takes_from_every_group() -> None:
    chosen = spread([list(range(50)), list(range(50, 55)), list(range(55, 100))], limit=12, seed=1)
    assert len(chosen) == 12 and chosen == sorted(chosen)
    assert sum(c < 50 for c in chosen) == 4 and sum(50 <= c < 55 for c in chosen) == 4
    assert spread([[1, 2], [3]], limit=None) == [1, 2, 3]
