import numpy as np
import pytest
import torch

from dorl.config import LoraConfig, ModelConfig
from dorl.data.domains import Domain
from dorl.models.lora import is_lora
from dorl.models.registry import build_model
from dorl.models.tinyvit import tinyvit_5m
from dorl.training.config import SegTrainConfig
from dorl.training.datasets import cell_masks, load_images
from dorl.training.seg import (
    add_lora,
    mask_scores,
    masks_from_logits,
    pixel_stats,
    predict_masks,
    seg_loss,
    seg_split,
    train_segmentation,
)

TINY_MODEL = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)
CPU = torch.device("cpu")


def test_loss_is_weighted_ce_plus_dice() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    right = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 20 - 10
    assert seg_loss(right, target).item() < 1e-3
    assert seg_loss(-right, target).item() > 0.9
    ce_only = seg_loss(-right, target, ce_weight=1.0, dice_weight=0.0)
    assert ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(-right, target).item(), rel=1e-5)


def test_dice_per_image_weighs_a_small_cell_like_a_large_one() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 1:7, 1:7] = 1  # a large cell (36 px), segmented perfectly
    target[1, 3:5, 3:5] = 1  # a small cell (4 px), missed
    logits = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 20 - 10
    logits[1, :, 3:5, 3:5] = logits[1, :, 3:5, 3:5].flip(0)
    pooled = seg_loss(logits, target, 0.0, 1.0)
    per_image = seg_loss(logits, target, 0.0, 1.0, dice_per_image=True)
    # Pooled over the batch: cell Dice 2*36/(36+40), background 2*88/(92+88), loss 1 - their mean = 0.0375.
    # Per image: Dice 1, 1 (first image), 0, 2*60/(64+60) (second), loss 1 - their mean = 0.258.
    assert pooled.item() == pytest.approx(1 - (72 / 76 + 176 / 180) / 2, abs=1e-3)
    assert per_image.item() == pytest.approx(1 - (2 + 120 / 124) / 4, abs=1e-3)


def test_masks_keep_the_largest_component_at_input_size() -> None:
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 1, 1:4, 1:4] = 5.0  # the cell
    logits[0, 1, 6, 6] = 5.0  # a speck
    masks = masks_from_logits(logits, 32)
    assert masks.shape == (1, 32, 32) and masks.dtype == bool
    assert masks[0, 8, 8] and not masks[0, 25, 25]


def test_pixel_stats_per_channel() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[..., 0] = 100
    images[1, ..., 1] = 200
    mean, std = pixel_stats(images)
    assert mean == pytest.approx((100, 100, 0)) and std[1] == pytest.approx(100) and std[0] > 0


def test_lora_goes_on_tinyvit_too() -> None:
    model = build_model(TINY_MODEL)
    model.encoder = tinyvit_5m(224)
    add_lora(model, LoraConfig())
    assert is_lora(model.encoder)
    names = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    add_lora(model, LoraConfig())  # a second call changes nothing
    assert is_lora(model.encoder)


def test_split_is_disjoint_capped_and_spread(tiny_domains: list[Domain]) -> None:
    train, held = seg_split(tiny_domains, SegTrainConfig(max_train_images=9, max_holdout_images=3), seed=1)
    assert len(train) == 9 and len(held) == 3 and not {s.path for s in train} & {s.path for s in held}
    for domain in tiny_domains:
        assert sum(s in domain.samples for s in train) == 3


def test_training_lowers_the_loss_on_real_cells_and_changes_only_lora_and_decoder(tiny_domains: list[Domain]) -> None:
    torch.manual_seed(0)
    samples = tiny_domains[2].samples[:4]  # the lab with masks
    images = load_images(samples, 224)
    masks, kinds = cell_masks(samples, images)
    assert set(kinds) == {"expert"}
    model = build_model(TINY_MODEL)
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    config = SegTrainConfig(epochs=4, warmup_epochs=0, batch_size=4, lr=1e-3, flip=False, rotate=False, jitter=0, hue=0)
    losses = train_segmentation(model, images, masks, config, CPU)
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    base = model.encoder.get_base_model().state_dict()
    for key, value in frozen.items():
        adapted = key.replace("qkv.", "qkv.base_layer.") if "qkv" in key else key
        if adapted in base:
            assert torch.equal(base[adapted], value), key
    assert any(not torch.equal(v, model.mask_decoder.state_dict()[k]) for k, v in decoder.items())
    predicted = predict_masks(model, images, CPU, batch_size=4)
    assert predicted.shape == (4, 224, 224) and predicted.dtype == bool
    scores = mask_scores(predicted, masks, ["a"] * 3 + ["b"])
    assert set(scores) == {"a", "b"} and scores["a"]["n"] == 3 and 0 <= scores["a"]["iou"] <= scores["a"]["dice"] <= 1


def test_a_segmenter_that_draws_nothing_anywhere_is_named() -> None:
    from dorl.training.seg import collapse_warning

    empty = {"pbc/pseudo": {"n": 15, "iou": 0.0, "dice": 0.0}, "bccd/pseudo": {"n": 9, "iou": 4e-5, "dice": 8e-5}}
    warning = collapse_warning(empty)
    assert warning is not None and "pbc/pseudo 0.000, bccd/pseudo 0.000" in warning and '"no cell"' in warning
    assert collapse_warning({**empty, "jtsc/expert": {"n": 13, "iou": 0.93, "dice": 0.96}}) is None  # one domain works
    assert collapse_warning({}) is None
