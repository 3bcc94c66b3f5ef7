"""Stage 2's inputs: every cell's pre-neck tokens and SSIM target, computed once and kept on disk.

The frozen (LoRA-merged) encoder runs once over every image of every domain; the same pass
gives the mask (mask decoder, argmax, largest component) from which the SSIM target is cut.
Each domain is one safetensors file (`<cache>/<domain>.safetensors`): tokens in float16,
targets in uint8, and in its metadata the sha256 of every image file (the row keys), the
labels, and a fingerprint of the weights that made them. A file whose fingerprint or keys
differ from the current model and images is computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dorl.artifacts import sha256_file
from dorl.data.domains import Domain
from dorl.models.dorl_model import DoRLModel
from dorl.training.datasets import load_images
from dorl.training.device import autocast
from dorl.training.progress import NullReporter, Reporter
from dorl.training.seg import masks_from_logits
from dorl.training.ssim import ssim_target

CACHE_VERSION = "1"


@dataclass
class TokenSet:
    """One domain's cached cells, row i from the domain's i-th sample."""

    domain: str
    keys: list[str]  # sha256 of each image file
    labels: list[str]
    tokens: torch.Tensor  # float16 [N,C,g,g]
    targets: torch.Tensor  # uint8 [N,3,128,128]

    def __len__(self) -> int:
        return len(self.keys)


def model_fingerprint(model: DoRLModel) -> str:
    """sha256 over the encoder and mask-decoder weights and the pixel normalisation."""
    digest = hashlib.sha256(json.dumps([model.config.pixel_mean, model.config.pixel_std]).encode())
    for part in (model.encoder, model.mask_decoder):
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_domain(model: DoRLModel, domain: Domain, device: torch.device, batch_size: int = 32,
                  reporter: Reporter | None = None) -> TokenSet:
    """Run the encoder and mask decoder over a domain: tokens and SSIM targets of every cell."""
    reporter = reporter or NullReporter()
    model.eval().to(device)
    size = model.config.image_size
    samples = list(domain.samples)
    tokens, targets = [], []
    task = f"tokens {domain.name}"
    reporter.start(task, len(samples))
    for start in range(0, len(samples), batch_size):
        images = load_images(samples[start:start + batch_size], size)
        batch = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
        with autocast(device):
            token_map, neck = model.encode(batch)
            masks = masks_from_logits(model.mask_decoder(neck), size)
        tokens.append(token_map.to("cpu", torch.float16))
        targets.append(torch.from_numpy(np.stack([ssim_target(i, m) for i, m in zip(images, masks)])).permute(0, 3, 1, 2))
        reporter.advance(task, len(images))
    reporter.finish(task)
    return TokenSet(domain.name, [sha256_file(s.path) for s in samples], [s.label for s in samples],
                    torch.cat(tokens).contiguous(), torch.cat(targets).contiguous())


def save_token_set(tokens: TokenSet, path: Path, fingerprint: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": CACHE_VERSION, "domain": tokens.domain, "fingerprint": fingerprint,
            "keys": json.dumps(tokens.keys), "labels": json.dumps(tokens.labels)}
    save_file({"tokens": tokens.tokens, "targets": tokens.targets}, str(path), metadata=meta)


def load_token_set(path: Path, fingerprint: str, keys: list[str]) -> TokenSet | None:
    """The cached set at `path` if it was made by these weights from these files; None otherwise."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if (meta.get("version"), meta.get("fingerprint")) != (CACHE_VERSION, fingerprint):
                return None
            if json.loads(meta.get("keys", "[]")) != keys:
                return None
            tokens, targets = f.get_tensor("tokens"), f.get_tensor("targets")
    except (SafetensorError, OSError, ValueError, KeyError):  # a truncated or foreign file is computed again
        return None
    return TokenSet(meta["domain"], keys, json.loads(meta["labels"]), tokens, targets)


def cached_tokens(model: DoRLModel, domains: list[Domain], cache_dir: str | Path, device: torch.device,
                  batch_size: int = 32, reporter: Reporter | None = None) -> list[TokenSet]:
    """Tokens and SSIM targets of every domain, read from `cache_dir` or computed and saved there.

    Args:
        model: the model whose (merged) encoder and mask decoder make the tokens and masks.
        domains: the domains, anchor first.
        cache_dir: folder of `<domain>.safetensors` files.
        device: where the encoder runs.
        batch_size: images per encoder pass.
        reporter: progress, and a note per domain read from the cache.

    Returns:
        One TokenSet per domain, in order.
    """
    reporter = reporter or NullReporter()
    fingerprint = model_fingerprint(model)
    out = []
    for domain in domains:
        path = Path(cache_dir) / f"{domain.name}.safetensors"
        keys = [sha256_file(s.path) for s in domain.samples]
        cached = load_token_set(path, fingerprint, keys) if path.is_file() else None
        if cached is not None:
            reporter.note(f"tokens of {domain.name}: read from {path}")
            cached.domain = domain.name
            out.append(cached)
            continue
        token_set = encode_domain(model, domain, device, batch_size, reporter)
        save_token_set(token_set, path, fingerprint)
        out.append(token_set)
    return out
