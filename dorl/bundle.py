"""Model bundles: a trained DoRL model as safetensors + a JSON manifest.

A bundle folder holds `weights.safetensors` (LoRA merged into plain weights) and
`manifest.json` (format version, model config, class names, normalisation, sha256 of every
file, tool versions). `load_bundle` refuses a changed, missing or truncated file and never
touches pickle.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from dorl.artifacts import CLASS_NAMES_KEY, write_manifest
from dorl.config import to_dict
from dorl.contract import FEATURE_STATS_FILE, WEIGHTS_FILE
from dorl.deps import versions
from dorl.errors import ArtifactError
from dorl.manifests import BundleManifest, read_bundle
from dorl.models.dorl_model import DoRLModel
from dorl.models.lora import is_lora, merge_lora
from dorl.models.registry import build_model


def merged_copy(model: DoRLModel) -> DoRLModel:
    """A copy of `model` with any LoRA adapters merged into plain encoder weights."""
    plain = copy.deepcopy(model)
    if is_lora(plain.encoder):
        plain.encoder = merge_lora(plain.encoder)
    return plain


def save_bundle(
    model: DoRLModel,
    folder: str | Path,
    metadata: dict[str, Any] | None = None,
    source_features: Any | None = None,
    stain_floor: float | None = None,
) -> dict[str, Any]:
    """Write `model` as a bundle folder.

    Args:
        model: the trained model (LoRA adapters, if any, are merged in a copy).
        folder: output folder (created).
        metadata: JSON-ready extras recorded in the manifest (training summary, data...).
        source_features: the source (anchor) domain's classification features [N, D] (array or
            tensor); their mean, std and covariance are stored so that site profiles (`dorl adapt`)
            can map a new lab's features onto the source's.
        stain_floor: the source cells' stain floor (`cell_check.stain_floor`), stored with those
            statistics: every artifact exported from the bundle answers "no cell" below it.

    Returns:
        The manifest written.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = merged_copy(model)
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in plain.state_dict().items()
             if v.is_floating_point()}
    names = json.dumps(list(model.config.class_names))  # bound into the weights: see dorl.artifacts
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "dorl_kind": "bundle", CLASS_NAMES_KEY: names})
    files = [WEIGHTS_FILE]
    if source_features is not None:
        stats = feature_statistics(source_features)
        if stain_floor is not None:
            from dorl.runtime.cell_check import MIN_STAIN_KEY

            stats[MIN_STAIN_KEY] = torch.tensor([stain_floor], dtype=torch.float32)
        save_file(stats, str(folder / FEATURE_STATS_FILE))
        files.append(FEATURE_STATS_FILE)
    config = model.config
    return write_manifest(
        folder,
        "bundle",
        files,
        config=to_dict(config),
        class_names=list(config.class_names),
        normalisation={"pixel_mean": list(config.pixel_mean), "pixel_std": list(config.pixel_std), "scale": 255},
        lora_merged=is_lora(model.encoder),
        versions=versions("torch", "segment-anything", "peft", "safetensors", "numpy"),
        metadata=metadata or {},
    )


def feature_statistics(features: Any) -> dict[str, torch.Tensor]:
    """Mean, std (ddof 1), covariance and count of features [N, D], as float32 tensors."""
    x = torch.as_tensor(features, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"source features must be [N>=2, D], got {tuple(x.shape)}")
    centred = x - x.mean(0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    stats = {"mean": x.mean(0).float(), "std": x.std(0).float(), "cov": cov.float(),
             "n": torch.tensor([float(x.shape[0])])}
    if x.shape[0] >= 10:  # the analyzer's "no cell" threshold: cell_check.QUANTILE of held-out cells' distances
        from dorl.runtime.cell_check import calibrate_threshold

        stats["distance_threshold"] = torch.tensor([calibrate_threshold(x.numpy())], dtype=torch.float32)
    return stats


def load_feature_stats(bundle: str | Path | BundleManifest) -> dict[str, torch.Tensor] | None:
    """The source feature statistics of a bundle (None for bundles saved without them)."""
    from safetensors.torch import load_file

    manifest = bundle if isinstance(bundle, BundleManifest) else read_bundle(bundle)
    if FEATURE_STATS_FILE not in manifest.files:
        return None
    return load_file(str(manifest.path(FEATURE_STATS_FILE)))


def read_bundle_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of a bundle folder, as a dict (`dorl.manifests.read_bundle` types it)."""
    return read_bundle(path).to_dict()


def load_bundle(bundle: str | Path | BundleManifest, device: str = "cpu") -> DoRLModel:
    """Load a bundle written by `save_bundle`, in eval mode.

    Args:
        bundle: the bundle folder, or its manifest already read (`dorl.manifests.read_bundle`).
        device: where the weights go.

    Raises:
        ArtifactError: the folder is not a bundle, a file changed, or the weights do not fit the config.
    """
    from safetensors.torch import load_file

    manifest = bundle if isinstance(bundle, BundleManifest) else read_bundle(bundle)
    model = build_model(manifest.config)
    state = load_file(str(manifest.path(WEIGHTS_FILE)), device=device)
    target = model.state_dict()
    missing = [k for k in target if target[k].is_floating_point() and k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        raise ArtifactError(
            f"{manifest.folder} holds weights that do not fit its own config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. {(missing + unexpected + wrong)[:2]}): "
            "re-create the bundle with this version of dorl."
        )
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
