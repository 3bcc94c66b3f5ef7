"""Loading pretrained weights into the model family: official SAM checkpoints, the shared
TinyViT encoder and SAM decoder (safetensors), with clear errors.

An official SAM checkpoint (`sam_vit_b_01ec64.pth` ...) is the only pickle `dorl` ever
loads, and only with `torch.load(..., weights_only=True)`. At an input size other than
1024 its absolute position embedding and the global-attention relative-position tables are
interpolated (bilinear, as SAMed and DoRL do) from the checkpoint's 64×64 grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dorl.errors import ArtifactError
from dorl.paths import TINYVIT_WEIGHTS as TINYVIT_WEIGHTS_FILE

_TINYVIT_PREFIX = "image_encoder."  # keys of a full SAM state dict


@dataclass
class LoadReport:
    """Which tensors of a module were loaded and which kept their fresh initialisation."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.loaded)} tensors loaded"
        if self.reinitialised:
            text += f", {len(self.reinitialised)} re-initialised ({', '.join(self.reinitialised)})"
        if self.unused:
            text += f", {len(self.unused)} checkpoint tensors unused"
        return text


def read_torch_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """An official SAM checkpoint as a flat state dict (weights_only pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"SAM checkpoint {path} does not exist: download it from the segment-anything release "
                            "page and give its path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean the same to the user
        raise ArtifactError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}): give an official "
                            "SAM checkpoint such as sam_vit_b_01ec64.pth.") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path} does not hold a state dict of tensors: give an official SAM checkpoint.")
    return state


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"weights file {path} does not exist: check the path.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a valid safetensors file ({exc}): copy it again.") from exc


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of `state` under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def resize_sam_encoder_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Interpolate `pos_embed` and `rel_pos_*` tables of `state` to the shapes of `target`."""
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key == "pos_embed" and value.shape[-1] == want.shape[-1]:
            grid = want.shape[1:3]
            out[key] = F.interpolate(value.permute(0, 3, 1, 2), size=grid, mode="bilinear",
                                     align_corners=False).permute(0, 2, 3, 1)
        elif "rel_pos" in key and value.shape[1] == want.shape[1]:
            out[key] = F.interpolate(value[None, None], size=tuple(want.shape), mode="bilinear",
                                     align_corners=False)[0, 0]
    return out


def load_sam_encoder(encoder: nn.Module, path: str | Path) -> None:
    """Load an official SAM checkpoint's image encoder into a SamEncoder of any input size."""
    state = sub_state(read_torch_checkpoint(path), "image_encoder")
    if not state:
        raise ArtifactError(f"{path} has no image_encoder.* tensors: give a full SAM checkpoint.")
    target = encoder.state_dict()
    state = resize_sam_encoder_state(state, target)
    bad = [k for k in target if k in state and state[k].shape != target[k].shape]
    missing = [k for k in target if k not in state]
    if bad or missing:
        raise ArtifactError(
            f"{path} does not fit this encoder ({len(missing)} missing, {len(bad)} of another shape, e.g. "
            f"{(missing + bad)[:2]}): the checkpoint is for another SAM size; choose the matching --encoder."
        )
    encoder.load_state_dict({k: state[k] for k in target}, strict=True)


def load_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor of `state` whose key and shape match; report the rest."""
    target = module.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in target.items():
        if key in state and state[key].shape == value.shape:
            usable[key] = state[key]
            report.loaded.append(key)
        else:
            report.reinitialised.append(key)
    report.unused = [k for k in state if k not in target or k in report.reinitialised]
    module.load_state_dict(usable, strict=False)
    return report


def load_decoder(decoder: nn.Module, path: str | Path) -> LoadReport:
    """Load SAM prompt-encoder + mask-decoder weights (shared safetensors or an official .pth)."""
    path = Path(path)
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)
    state = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if not state:
        raise ArtifactError(f"{path} has no prompt_encoder.*/mask_decoder.* tensors: give SAM decoder weights.")
    return load_matching(decoder, state)


def load_tinyvit_weights(model: nn.Module, path: str | Path | dict[str, torch.Tensor]) -> int:
    """Load MobileSAM-layout weights into `model`, requiring every key and shape to match.

    Args:
        model: a `TinyViT` built by `tinyvit_5m`.
        path: a safetensors file, or a state dict already in memory; keys may carry the
            `image_encoder.` prefix of a full SAM state dict.

    Returns:
        The number of tensors loaded (271 for the shared file).

    Raises:
        ArtifactError: the file is missing, or its keys or shapes do not match the model.
    """
    if isinstance(path, dict):
        source, state = "the given state dict", path
    else:
        from safetensors.torch import load_file

        source = str(path)
        if not Path(path).is_file():
            raise ArtifactError(
                f"TinyViT weights file {source} does not exist: pass the path of "
                f"{TINYVIT_WEIGHTS_FILE} or set DORL_WEIGHTS_DIR to the folder that holds it."
            )
        state = load_file(source)
    state = {k.removeprefix(_TINYVIT_PREFIX): v for k, v in state.items()}
    expected = model.state_dict()
    # The file omits BatchNorm's num_batches_tracked counters (all zero); fill them explicitly.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    _check_tinyvit_keys(expected, state, source)
    model.load_state_dict(state, strict=True)
    return sum(1 for k in state if not k.endswith("num_batches_tracked"))


def _check_tinyvit_keys(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ArtifactError(
            f"{source} is not a TinyViT-5M (MobileSAM layout) image encoder: "
            f"{len(missing)} keys missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); use the file {TINYVIT_WEIGHTS_FILE} from shared/weights."
        )
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise ArtifactError(
            f"{source} has {len(wrong)} tensors whose shape does not match TinyViT-5M "
            f"(e.g. {k}: {tuple(state[k].shape)} instead of {tuple(expected[k].shape)}); "
            f"use the file {TINYVIT_WEIGHTS_FILE} from shared/weights."
        )
