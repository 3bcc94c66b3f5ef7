"""Stage 1, LoRA-SAM: fine-tune the encoder's LoRA adapters with the prompt encoder and mask decoder.

As DoRL (after SAMed): no prompts, two mask channels (background, cell) at 56×56, loss
0.2·CE + 0.8·Dice on those low-resolution logits, AdamW (lr 1e-4, wd 0.1), warm-up then
cosine. The encoder stays frozen apart from LoRA, and in eval mode, so TinyViT's BatchNorm
statistics do not drift. A mask is the argmax of the logits upsampled to the input size,
then its largest connected component.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dorl.config import LoraConfig
from dorl.data.domains import Domain, Sample
from dorl.data.masks import largest_component, mask_dice, mask_iou
from dorl.data.pseudo_masks import measure_pseudo_mask_iou
from dorl.data.splits import holdout_split
from dorl.models.dorl_model import DoRLModel
from dorl.models.lora import apply_lora, is_lora, merge_lora
from dorl.pretrained import build_pretrained
from dorl.training.config import SegTrainConfig, TrainConfig
from dorl.training.datasets import Augment, SegDataset, cell_masks, load_images, spread
from dorl.training.device import autocast
from dorl.training.distributed import RowShard, data_parallel, gather_rows
from dorl.training.diverged import check_loss
from dorl.training.progress import NullReporter, Reporter
from dorl.training.schedule import warmup_cosine_scheduler

Triple = tuple[float, float, float]


def pixel_stats(images: np.ndarray) -> tuple[Triple, Triple]:
    """Per-channel mean and std (0–255 scale) of uint8 images [N,S,S,3]."""
    data = images.reshape(-1, 3).astype(np.float64)
    mean, std = data.mean(0), np.maximum(data.std(0), 1e-3)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def add_lora(model: DoRLModel, config: LoraConfig) -> None:
    """Wrap the model's encoder with LoRA adapters (once); everything else in it is frozen."""
    if is_lora(model.encoder):
        return
    encoder = model.encoder
    if not hasattr(encoder, "qkv_layout"):
        # TinyViT states its qkv layout on each attention module only; split_qkv reads it from the encoder.
        layouts = {m.qkv_layout for m in encoder.modules() if hasattr(m, "qkv_layout")}
        if len(layouts) == 1:
            encoder.qkv_layout = layouts.pop()
    model.encoder = apply_lora(encoder, config)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 0.2, dice_weight: float = 0.8,
             dice_per_image: bool = False) -> torch.Tensor:
    """ce_weight·CE + dice_weight·Dice (SAMed's soft Dice: squared sums, mean over classes).

    Args:
        logits: mask logits [B,K,h,w].
        target: class indices [B,h,w].
        dice_per_image: Dice of each image and class, then the mean (every cell counts alike);
            SAMed's sums over the whole batch, where large cells outweigh small ones.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims: tuple[int, ...] = (2, 3) if dice_per_image else (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = 1 - (2 * inter + 1e-5) / ((probs * probs).sum(dims) + (onehot * onehot).sum(dims) + 1e-5)
    return ce_weight * ce + dice_weight * dice.mean()


def mask_logits(model: DoRLModel, images: torch.Tensor) -> torch.Tensor:
    """Mask logits [B,K,S/4,S/4] of images float [B,3,S,S] (0–255)."""
    _, neck = model.encode(images)
    return model.mask_decoder(neck)


def masks_from_logits(mask_logits: torch.Tensor, size: int) -> np.ndarray:
    """Mask logits [B,K,h,w] → cell masks bool [B,size,size]: upsample, argmax > 0, largest component."""
    up = F.interpolate(mask_logits.float(), size=(size, size), mode="bilinear", align_corners=False)
    cells = (up.argmax(dim=1) > 0).cpu().numpy()
    return np.stack([largest_component(c) for c in cells]) if len(cells) else cells


def trainable_parameters(model: DoRLModel) -> list[torch.nn.Parameter]:
    """The LoRA adapters and the whole prompt encoder + mask decoder."""
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    lora = [p for n, p in model.encoder.named_parameters() if "lora_" in n]
    return lora + list(model.mask_decoder.parameters())


def train_segmentation(model: DoRLModel, images: np.ndarray, masks: np.ndarray, config: SegTrainConfig,
                       device: torch.device, reporter: Reporter | None = None, seed: int = 0) -> list[float]:
    """Fine-tune LoRA-SAM on cells and their masks, in place.

    Args:
        model: the model; LoRA adapters are added to its encoder if it has none.
        images: uint8 [N,S,S,3] training cells.
        masks: bool [N,S,S] cell masks.
        config: the stage's schedule and loss weights.
        device: where to train.
        reporter: progress ("seg" task, one step per batch).
        seed: augmentation and shuffling seed.

    Returns:
        The mean loss of each epoch.
    """
    reporter = reporter or NullReporter()
    add_lora(model, model.config.lora or LoraConfig())
    model.to(device)
    augment = Augment(config.flip, config.rotate, config.jitter, config.hue)
    loader = DataLoader(RowShard(SegDataset(images, masks, augment, seed)), batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=len(images) > config.batch_size)
    params = trainable_parameters(model)
    step = data_parallel(model, params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(loader)
    scheduler = warmup_cosine_scheduler(optimizer, total, round(config.warmup_epochs * len(loader)))
    model.encoder.eval()
    model.mask_decoder.train()
    losses: list[float] = []
    reporter.start("seg", total)
    for _ in range(config.epochs):
        running = []
        for batch, target in loader:
            batch, target = batch.to(device), target.to(device)
            with autocast(device):
                logits = step(mask_logits, batch)
            logits, target = gather_rows(logits, target)
            loss = seg_loss(logits, target, config.ce_weight, config.dice_weight, config.dice_per_image)
            value = check_loss("seg", float(loss.detach()), scheduler.last_epoch + 1, total,
                               optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running.append(value)
            reporter.advance("seg", loss=value)
        losses.append(float(np.mean(running)))
    reporter.finish("seg")
    model.eval()
    return losses


@torch.no_grad()
def predict_masks(model: DoRLModel, images: np.ndarray, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Cell masks bool [N,S,S] of uint8 images [N,S,S,3] (argmax, largest component)."""
    model.eval()
    size = images.shape[1]
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2).float()
        with autocast(device):
            _, neck = model.encode(batch)
            out.append(masks_from_logits(model.mask_decoder(neck), size))
    return np.concatenate(out) if out else np.zeros((0, size, size), bool)


COLLAPSED_IOU = 0.05  # held-out IoU below this on every domain: the segmenter draws (almost) nothing


def collapse_warning(scores: dict[str, dict[str, float]]) -> str | None:
    """A warning when the trained segmenter's held-out masks are (almost) empty everywhere, else None.

    Its masks are the analyzer's record masks, and an empty mask is answered "no cell", so such a
    bundle would refuse nearly every image.
    """
    if not scores or any(value["iou"] >= COLLAPSED_IOU for value in scores.values()):
        return None
    worst = ", ".join(f"{name} {value['iou']:.3f}" for name, value in scores.items())
    return (f"WARNING: the segmenter's held-out masks are (almost) empty on every domain (IoU {worst}): its training "
            "collapsed, and an artifact exported from this bundle would answer \"no cell\" for nearly every image; "
            "train again with a lower segmentation learning rate (SegTrainConfig.lr) or more images.")


def mask_scores(predicted: np.ndarray, reference: np.ndarray, kinds: list[str]) -> dict[str, dict[str, float]]:
    """Mean IoU and Dice of predicted masks against reference masks, per reference kind ("expert", "pseudo")."""
    scores: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds)):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        ious = [mask_iou(predicted[i], reference[i]) for i in rows]
        dices = [mask_dice(predicted[i], reference[i]) for i in rows]
        scores[kind] = {"n": len(rows), "iou": float(np.mean(ious)), "dice": float(np.mean(dices))}
    return scores


def seg_split(domains: Sequence[Domain], config: SegTrainConfig, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Training and held-out cells for segmentation: every domain pooled, split per domain and class.

    Returns:
        (training cells, held-out cells), each capped by the config and spread over the domains.
    """
    samples = [s for d in domains for s in d.samples]
    strata = [f"{d.name}/{s.label}" for d in domains for s in d.samples]
    owner = np.asarray([i for i, d in enumerate(domains) for _ in d.samples])
    train_idx, held_idx = holdout_split(strata, config.holdout_fraction, seed)

    def pick(indices: np.ndarray, limit: int | None) -> list[Sample]:
        groups = [indices[owner[indices] == i] for i in range(len(domains))]
        return [samples[i] for i in spread(groups, limit, seed)]

    return pick(train_idx, config.max_train_images), pick(held_idx, config.max_holdout_images)


def run_segmentation(domains: Sequence[Domain], config: TrainConfig, checkpoint: str | None, device: torch.device,
                     reporter: Reporter | None = None) -> tuple[DoRLModel, dict[str, Any]]:
    """Stage 1 end to end: data, pixel statistics, LoRA-SAM training, merging, held-out scores.

    Args:
        domains: the domains (anchor first); all are pooled, without class labels.
        config: the run's configuration (its `seg` part and the model).
        checkpoint: pretrained encoder weights, or None for the shared ones.
        device: where to train.
        reporter: progress and notes.

    Returns:
        The model (LoRA merged into the encoder) and the stage's metrics: losses per epoch,
        held-out IoU/Dice per domain and mask kind, pseudo-mask IoU against expert masks.
    """
    reporter = reporter or NullReporter()
    seg, size = config.seg, config.model.image_size
    train_cells, held_cells = seg_split(domains, seg, config.seed)
    images = load_images(train_cells, size)
    masks, kinds = cell_masks(train_cells, images, seg.use_expert_masks)
    model_config = config.model
    if seg.pixel_stats == "train":
        mean, std = pixel_stats(images)
        model_config = dataclasses.replace(model_config, pixel_mean=mean, pixel_std=std)
    model, loaded = build_pretrained(model_config, checkpoint)
    torch.manual_seed(config.seed)
    losses = train_segmentation(model, images, masks, seg, device, reporter, config.seed)
    model.encoder = merge_lora(model.encoder)
    held = load_images(held_cells, size)
    reference, held_kinds = cell_masks(held_cells, held, use_expert=True)
    owners = {s.path: d.name for d in domains for s in d.samples}
    groups = [f"{owners[c.path]}/{k}" for c, k in zip(held_cells, held_kinds)]
    scores = mask_scores(predict_masks(model, held, device), reference, groups)
    pseudo = {d.name: measure_pseudo_mask_iou(d) for d in domains if d.num_masks}
    for name, value in pseudo.items():
        reporter.note(f"pseudo masks vs expert masks on {name}: mean IoU {value['mean']:.3f} (n={value['n']})")
    for name, value in scores.items():
        reporter.note(f"held-out masks {name}: IoU {value['iou']:.3f}, Dice {value['dice']:.3f} (n={value['n']})")
    collapsed = collapse_warning(scores)
    if collapsed:
        reporter.note(collapsed)
    return model, {"losses": losses, "holdout": scores, "pseudo_mask_vs_expert": pseudo, "loaded": loaded,
                   "train_images": len(train_cells), "train_masks": dict(Counter(kinds))}
