"""Stage 2's inputs: every cell's pre-neck tokens and SSIM target, computed once and kept on disk.

The frozen (LoRA-merged) encoder runs once over every image of every domain, on the input the
framing makes of it (the whole image, or the cell cut out with its crop mask:
`dorl.training.cell_inputs`); the SSIM target is cut from the best mask of each cell. The
segmenter (mask decoder, argmax, largest component) runs on the whole image where its masks
are needed; pseudo masks are computed once per image and kept in `<cache>/<domain>.pseudo.npz`,
keyed by the image files' sha256, since they depend on the pixels only.

Each domain is one safetensors file (`<cache>/<domain>.safetensors`): tokens in float16,
targets in uint8, and in its metadata the sha256 of every image file (the row keys), the
labels, a fingerprint of the weights that made them, the input settings (framing and target
masks), and how many targets came from each mask source. A file whose fingerprint, settings or
keys differ from the current model, settings and images is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dorl.artifacts import sha256_file
from dorl.contract import VIEWS, view
from dorl.data.domains import Domain, Sample
from dorl.data.framing import FramingConfig
from dorl.data.images import load_rgb, resize_square
from dorl.data.masks import load_cell_mask
from dorl.data.pseudo_masks import pseudo_mask
from dorl.models.dorl_model import DoRLModel
from dorl.safe_write import atomic_file
from dorl.training.cell_inputs import SSIM_MASKS, CellMasks, cell_inputs
from dorl.training.device import autocast
from dorl.training.distributed import main_writes, sharded_encode
from dorl.training.progress import NullReporter, Reporter
from dorl.training.seg import masks_from_logits

CACHE_VERSION = "2"


@dataclass(frozen=True)
class InputSettings:
    """What the cached tokens and targets were made from, besides the weights and the images.

    Attributes:
        framing: the encoder's input (whole image or cell crop, and the crop's mask).
        ssim_masks: "best" or "segmenter" (see `dorl.training.cell_inputs.target_mask`).
        trusted: domains whose segmenter masks may cut SSIM targets where no better mask exists.
        view: the view of the framed input the encoder reads (`dorl.contract.VIEWS`: a flip for
            test-time augmentation); the SSIM targets are the plain view's.
    """

    framing: FramingConfig = field(default_factory=FramingConfig)
    ssim_masks: str = "best"
    trusted: tuple[str, ...] = ()
    view: str = "plain"

    def __post_init__(self) -> None:
        if self.ssim_masks not in SSIM_MASKS:
            raise ValueError(f"ssim_masks must be one of {SSIM_MASKS}, got {self.ssim_masks!r}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")

    def key(self, domain: str) -> str:
        """This domain's settings as a JSON string (what a cache file must match); a plain view's key
        names no view, so caches written before views existed still match."""
        settings = {"framing": dataclasses.asdict(self.framing), "ssim_masks": self.ssim_masks,
                    "trust_segmenter": domain in self.trusted}
        if self.view != "plain":
            settings["view"] = self.view
        return json.dumps(settings, sort_keys=True)


@dataclass
class TokenSet:
    """One domain's cached cells, row i from the domain's i-th sample."""

    domain: str
    keys: list[str]  # sha256 of each image file
    labels: list[str]
    tokens: torch.Tensor  # float16 [N,C,g,g]
    targets: torch.Tensor  # uint8 [N,3,128,128]
    info: dict[str, Any] = field(default_factory=dict)  # mask sources of the targets, flagged crops

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


def _needs(settings: InputSettings, domain: Domain) -> tuple[bool, bool]:
    """(pseudo masks needed, segmenter masks needed) for these settings on this domain."""
    framing = settings.framing
    segmenter = settings.ssim_masks == "segmenter" or domain.name in settings.trusted \
        or (framing.cell and framing.mask == "segmenter")
    unmasked = any(s.mask_path is None for s in domain.samples)  # cells whose targets need a pseudo mask
    pseudo = (settings.ssim_masks == "best" and unmasked) or (framing.cell and framing.mask == "pseudo")
    return pseudo, segmenter


def _read(samples: Sequence[Sample]) -> list[np.ndarray]:
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        return list(pool.map(lambda s: load_rgb(s.path), samples))


@torch.no_grad()
def _segment(model: DoRLModel, whole: np.ndarray, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """(pre-neck tokens, segmenter masks [B,S,S]) of whole images uint8 [B,S,S,3]."""
    batch = torch.from_numpy(whole).to(device).permute(0, 3, 1, 2).float()
    with autocast(device):
        token_map, neck = model.encode(batch)
        masks = masks_from_logits(model.mask_decoder(neck), whole.shape[1])
    return token_map, masks


@torch.no_grad()
def _encode(model: DoRLModel, inputs: np.ndarray, device: torch.device) -> torch.Tensor:
    """Pre-neck tokens of uint8 inputs [B,S,S,3]."""
    with autocast(device):
        token_map, _ = model.encode(torch.from_numpy(inputs).to(device).permute(0, 3, 1, 2).float())
    return token_map


@torch.no_grad()
def encode_domain(model: DoRLModel, domain: Domain, device: torch.device, batch_size: int = 32,
                  reporter: Reporter | None = None, settings: InputSettings | None = None,
                  pseudo: np.ndarray | None = None) -> TokenSet:
    """Tokens and SSIM targets of every cell of a domain.

    Args:
        model: the (LoRA-merged) encoder and mask decoder.
        domain: its cells.
        device: where the model runs.
        batch_size: images per encoder pass.
        reporter: progress, one step per cell.
        settings: framing and target masks (default: whole images, best targets).
        pseudo: the domain's pseudo masks bool [N,S,S], needed by the settings (`domain_pseudo_masks`).
    """
    reporter = reporter or NullReporter()
    settings = settings or InputSettings()
    need_pseudo, need_segmenter = _needs(settings, domain)
    if need_pseudo and pseudo is None:
        raise ValueError("these settings need the domain's pseudo masks: pass pseudo=domain_pseudo_masks(...)")
    model.eval().to(device)
    size = model.config.image_size
    samples = list(domain.samples)
    tokens, targets, sources, empty, touches = [], [], [], 0, 0
    task = f"tokens {domain.name}" + ("" if settings.view == "plain" else f" ({settings.view})")
    reporter.start(task, len(samples))
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = _read(chunk)
        whole = np.stack([resize_square(i, size) for i in images])
        seg = None
        if need_segmenter or (not settings.framing.cell and settings.view == "plain"):
            whole_tokens, seg = _segment(model, whole, device)
        masks = [CellMasks(expert=None if s.mask_path is None else load_cell_mask(s.mask_path),
                           pseudo=None if pseudo is None else pseudo[start + i],
                           segmenter=None if seg is None else seg[i]) for i, s in enumerate(chunk)]
        batch = cell_inputs(images, masks, settings.framing, size, domain.name in settings.trusted,
                            settings.ssim_masks)
        if settings.framing.cell or settings.view != "plain":
            token_map = _encode(model, view(batch.inputs, settings.view), device)
        else:
            token_map = whole_tokens
        tokens.append(token_map.to("cpu", torch.float16))
        targets.append(torch.from_numpy(batch.targets).permute(0, 3, 1, 2))
        sources += batch.target_sources
        empty, touches = empty + int(batch.empty.sum()), touches + int(batch.touches_border.sum())
        reporter.advance(task, len(chunk))
    reporter.finish(task)
    info = {"target_masks": dict(Counter(sources)), "empty_crop_masks": empty, "crop_masks_touching_border": touches}
    return TokenSet(domain.name, [sha256_file(s.path) for s in samples], [s.label for s in samples],
                    torch.cat(tokens).contiguous(), torch.cat(targets).contiguous(), info)


def _encode_rows(model: DoRLModel, part: Domain, rows: slice, pseudo: np.ndarray | None = None,
                 **options: Any) -> TokenSet:
    """`encode_domain` on `part`, the cells `rows` of a domain whose pseudo masks are `pseudo`."""
    return encode_domain(model, part, pseudo=None if pseudo is None else pseudo[rows], **options)


def domain_pseudo_masks(domain: Domain, keys: list[str], size: int, cache_dir: str | Path,
                        reporter: Reporter | None = None) -> np.ndarray:
    """Pseudo masks bool [N,size,size] of a domain's cells, computed on the resized image (as the
    analyzer will) and kept in `<cache>/<domain>.pseudo.npz`, reused while the image files match."""
    reporter = reporter or NullReporter()
    path = Path(cache_dir) / f"{domain.name}.pseudo.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if data["keys"].tolist() == keys and int(data["size"]) == size:
                    return np.unpackbits(data["bits"], axis=1)[:, : size * size].reshape(-1, size, size).astype(bool)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a damaged file is computed again
            pass
    task = f"pseudo masks {domain.name}"
    reporter.start(task, len(keys))
    masks = []
    for start in range(0, len(domain.samples), 32):
        for image in _read(domain.samples[start:start + 32]):
            masks.append(pseudo_mask(resize_square(image, size)))
            reporter.advance(task)
    reporter.finish(task)
    stacked = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as f:  # a killed run leaves no half-written file behind
        np.savez(f, keys=np.array(keys), size=np.array(size), bits=np.packbits(stacked.reshape(len(stacked), -1), axis=1))
    return stacked


def save_token_set(tokens: TokenSet, path: Path, fingerprint: str, settings: str = "") -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": CACHE_VERSION, "domain": tokens.domain, "fingerprint": fingerprint, "settings": settings,
            "keys": json.dumps(tokens.keys), "labels": json.dumps(tokens.labels), "info": json.dumps(tokens.info)}
    save_file({"tokens": tokens.tokens, "targets": tokens.targets}, str(path), metadata=meta)


def load_token_set(path: Path, fingerprint: str, keys: list[str], settings: str = "",
                   labels: list[str] | None = None) -> TokenSet | None:
    """The cached set at `path` if it was made by these weights and settings from these files; None otherwise.

    `labels` (the files' labels now) replace the cached ones: a file moved to another class folder keeps its
    tokens but takes its new label."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if (meta.get("version"), meta.get("fingerprint"), meta.get("settings")) != (CACHE_VERSION, fingerprint,
                                                                                        settings):
                return None
            if json.loads(meta.get("keys", "[]")) != keys:
                return None
            tokens, targets = f.get_tensor("tokens"), f.get_tensor("targets")
    except (SafetensorError, OSError, ValueError, KeyError):  # a truncated or foreign file is computed again
        return None
    return TokenSet(meta["domain"], keys, list(labels) if labels is not None else json.loads(meta["labels"]), tokens,
                    targets, json.loads(meta["info"]))


def cached_tokens(model: DoRLModel, domains: list[Domain], cache_dir: str | Path, device: torch.device,
                  batch_size: int = 32, reporter: Reporter | None = None,
                  settings: InputSettings | None = None) -> list[TokenSet]:
    """Tokens and SSIM targets of every domain, read from `cache_dir` or computed and saved there.

    Args:
        model: the model whose (merged) encoder and mask decoder make the tokens and masks.
        domains: the domains, anchor first.
        cache_dir: folder of `<domain>.safetensors` files (and pseudo masks).
        device: where the encoder runs.
        batch_size: images per encoder pass.
        reporter: progress, and a note per domain read from the cache.
        settings: framing and target masks (default: whole images, targets from the best mask).

    Returns:
        One TokenSet per domain, in order.
    """
    reporter = reporter or NullReporter()
    settings = settings or InputSettings()
    fingerprint = model_fingerprint(model)
    out = []
    for domain in domains:
        path = Path(cache_dir) / f"{domain.name}.safetensors"
        keys = [sha256_file(s.path) for s in domain.samples]
        key = settings.key(domain.name)
        cached = (load_token_set(path, fingerprint, keys, key, [s.label for s in domain.samples]) if path.is_file()
                  else None)
        if cached is not None:
            reporter.note(f"tokens of {domain.name}: read from {path}")
            cached.domain = domain.name
            out.append(cached)
            continue
        pseudo = None
        if _needs(settings, domain)[0]:  # rank 0 computes and keeps them, the other processes read them back
            masks = partial(domain_pseudo_masks, domain, keys, model.config.image_size, cache_dir, reporter)
            pseudo = main_writes(masks, masks)
        token_set = sharded_encode(partial(_encode_rows, model, device=device, batch_size=batch_size,
                                           reporter=reporter, settings=settings, pseudo=pseudo), domain)
        main_writes(partial(save_token_set, token_set, path, fingerprint, key))
        out.append(token_set)
    return out
