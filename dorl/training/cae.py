"""Stage 2: the cross-domain autoencoder (CAE) on cached tokens of every domain, without labels.

L = L_ssim + 2·(L_mmd + 0.5·L_rec), as in DoRL's `train.py` and `losses.py`:
L_ssim = 1 − SSIM(decoded image, SSIM target); L_mmd = Σ_d MSE(mean z | anchor, mean z | d)
over the other domains present in the batch (the anchor is the first domain), z =
Linear(GAP(decoded tokens)); L_rec = MSE(tokens, decoded tokens). AdamW (lr 1e-4, wd 0.05),
warm-up then cosine. Every batch holds cells of every domain (`DomainBatches`). `mmd_weight` 0
trains the "CAE without mean-matching" baseline.

In DoRL the head reads the CLS token, which L_mmd never touches directly. The alignments
`cls_mean` and `cls_coral` (see ALIGNMENTS) act on that feature instead: the CLS of an unmasked
pass, the one the head reads, standardised by its batch statistics (so the loss cannot be
lowered by shrinking the feature), its domain means matched, and for `cls_coral` also its
covariances (Deep CORAL's ||C_anchor − C_d||²_F / 4D²).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dorl.errors import ConfigError
from dorl.models.cae import CAE
from dorl.training.config import CaeTrainConfig
from dorl.training.datasets import DomainBatches
from dorl.training.device import autocast
from dorl.training.distributed import data_parallel, leading_rows, rows_parallel
from dorl.training.diverged import check_loss
from dorl.training.progress import NullReporter, Reporter
from dorl.training.schedule import warmup_cosine_scheduler
from dorl.training.ssim import ssim_loss, target_tensor
from dorl.training.token_cache import TokenSet

LOSS_NAMES = ("loss", "ssim", "mmd", "rec")


def mean_matching(z: torch.Tensor, domain_ids: torch.Tensor, anchor: int = 0) -> torch.Tensor:
    """Σ over the other domains d present of MSE(mean z of the anchor, mean z of d).

    Args:
        z: projections [B,P].
        domain_ids: [B] domain index of each row.
        anchor: the index of the anchor domain.

    Returns:
        A scalar (0 when the batch holds no anchor row or no other domain).
    """
    z = z.float()
    is_anchor = domain_ids == anchor
    loss = z.new_zeros(())
    if not bool(is_anchor.any()):
        return loss
    anchor_mean = z[is_anchor].mean(0)
    for d in torch.unique(domain_ids).tolist():
        if d != anchor:
            loss = loss + F.mse_loss(anchor_mean, z[domain_ids == d].mean(0))
    return loss


def standardised(x: torch.Tensor) -> torch.Tensor:
    """x divided by its per-feature batch standard deviation, taken as a constant (no gradient)."""
    x = x.float()
    return x / x.detach().std(dim=0).clamp_min(1e-6)


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(len(x) - 1, 1)


def coral(x: torch.Tensor, domain_ids: torch.Tensor, anchor: int = 0) -> torch.Tensor:
    """Σ over the other domains d with 2+ rows of ||C_anchor − C_d||²_F / (4 D²) (Deep CORAL).

    Returns:
        A scalar (0 when the anchor or every other domain has fewer than 2 rows).
    """
    x = x.float()
    is_anchor = domain_ids == anchor
    loss = x.new_zeros(())
    if int(is_anchor.sum()) < 2:
        return loss
    anchor_cov = _covariance(x[is_anchor])
    scale = 4 * x.shape[1] ** 2
    for d in torch.unique(domain_ids).tolist():
        rows = domain_ids == d
        if d != anchor and int(rows.sum()) >= 2:
            loss = loss + ((anchor_cov - _covariance(x[rows])) ** 2).sum() / scale
    return loss


def alignment_loss(cae: CAE, tokens: torch.Tensor, z: torch.Tensor, domain_ids: torch.Tensor,
                   alignment: str) -> torch.Tensor:
    """L_mmd of one batch for `alignment` (see ALIGNMENTS): on z, or on the unmasked CLS feature."""
    if alignment == "z":
        return mean_matching(z, domain_ids)
    cls = standardised(rows_parallel(cae.feature, tokens))
    loss = mean_matching(cls, domain_ids)
    return loss + coral(cls, domain_ids) if alignment == "cls_coral" else loss


def cae_outputs(cae: CAE, tokens: torch.Tensor, ssim_fraction: float = 1.0) -> dict[str, torch.Tensor]:
    """The CAE's training pass, drawing the image for only the first ceil(fraction·B) rows.

    With `ssim_fraction` 1 this is `cae(tokens)`. Below 1 (the CPU schedule) the transposed
    convolutions, most of a step's cost, run on part of the batch; batches come shuffled, so
    that part is a random sample and L_ssim stays an unbiased estimate.
    """
    if ssim_fraction >= 1.0:
        return cae(tokens)
    latent, ids_restore = cae.encode(tokens.flatten(2).transpose(1, 2), cae.mask_ratio)
    rec = cae.decode(latent, ids_restore)
    rows = leading_rows(ssim_fraction, len(tokens))
    return {"feature": latent[:, 0], "z": cae.project(rec), "tokens": rec, "image": cae.image_decoder(rec[:rows])}


def cae_losses(cae: CAE, tokens: torch.Tensor, targets: torch.Tensor, domain_ids: torch.Tensor,
               config: CaeTrainConfig) -> dict[str, torch.Tensor]:
    """The CAE's training losses on one batch.

    Args:
        cae: the autoencoder (masking at its configured ratio).
        tokens: float token maps [B,C,g,g].
        targets: SSIM targets [B,3,128,128] in [0,1].
        domain_ids: [B] domain indices, 0 the anchor.
        config: the loss weights and `ssim_fraction`.

    Returns:
        "loss" (the weighted total), "ssim", "mmd" and "rec".
    """
    out = rows_parallel(lambda rows: cae_outputs(cae, rows, config.ssim_fraction), tokens)
    mmd = alignment_loss(cae, tokens, out["z"], domain_ids, config.alignment) if config.mmd_weight > 0 \
        else out["z"].new_zeros(())
    parts = {
        "ssim": ssim_loss(out["image"], targets[: len(out["image"])]),
        "mmd": mmd,
        "rec": F.mse_loss(out["tokens"].float(), tokens.float()),
    }
    latent = config.mmd_weight * parts["mmd"] + config.rec_weight * parts["rec"]
    parts["loss"] = config.ssim_weight * parts["ssim"] + config.latent_weight * latent
    return parts


def pooled(token_sets: Sequence[TokenSet]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """All domains' tokens [N,C,g,g] fp16, targets [N,3,128,128] uint8 and domain indices [N]."""
    if not token_sets or any(len(t) == 0 for t in token_sets):
        raise ConfigError("the CAE needs at least one cell in every domain; check the --domain folders.")
    ids = np.concatenate([np.full(len(t), i) for i, t in enumerate(token_sets)])
    return torch.cat([t.tokens for t in token_sets]), torch.cat([t.targets for t in token_sets]), ids


def train_cae(cae: CAE, token_sets: Sequence[TokenSet], config: CaeTrainConfig, device: torch.device,
              reporter: Reporter | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Train the CAE in place on every domain's cached tokens (the first domain is the anchor).

    Args:
        cae: the autoencoder.
        token_sets: one per domain, anchor first.
        config: schedule and loss weights.
        device: where to train (bfloat16 autocast on CUDA).
        reporter: progress ("cae" task, one step per batch).
        seed: sampling seed (masking draws from torch's global generator).

    Returns:
        Per-epoch means of each of LOSS_NAMES.
    """
    reporter = reporter or NullReporter()
    tokens, targets, ids = pooled(token_sets)
    batches = DomainBatches(ids, config.batch_size, config.min_per_domain, seed)
    domain_ids = torch.from_numpy(ids).to(device)
    tokens, targets = tokens.to(device), targets.to(device)
    cae.to(device).train()
    step = data_parallel(cae)
    optimizer = torch.optim.AdamW(cae.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(batches)
    scheduler = warmup_cosine_scheduler(optimizer, total, min(config.warmup_iters, total))
    history: dict[str, list[float]] = {name: [] for name in LOSS_NAMES}
    reporter.start("cae", total)
    for _ in range(config.epochs):
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        for index in batches:
            rows = torch.from_numpy(index).to(device)
            with autocast(device):
                parts = step(cae_losses, tokens[rows].float(), target_tensor(targets[rows]), domain_ids[rows], config)
            loss = check_loss("cae", float(parts["loss"].detach()), scheduler.last_epoch + 1, total,
                              optimizer.param_groups[0]["lr"])
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for name in LOSS_NAMES:
                sums[name] += float(parts[name].detach()) / len(batches)
            reporter.advance("cae", loss=loss)
        for name in LOSS_NAMES:
            history[name].append(sums[name])
    reporter.finish("cae")
    cae.eval()
    return history
