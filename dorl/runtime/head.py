"""The classifier head on the host, in numpy, for site-adapted inference.

An exported artifact carries the head's weights (scaler folded in) in `head.safetensors`
beside the graph, and the source domain's feature statistics. With a site profile, the
analyzer takes the graph's `feature` output, applies the profile's affine map and this head,
so the engine itself is never rebuilt. The source statistics also tell how far a feature is
from the cells the model was trained on (`dorl.runtime.cell_check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ArtifactError

HEAD_FILE = "head.safetensors"


_LAYERS = {"linear": ("fc",), "mlp": ("fc1", "fc2")}


@dataclass(frozen=True)
class NumpyHead:
    """Linear (`fc`) or MLP (`fc1` → ReLU → `fc2`) head; weights are [out, in] as in torch."""

    kind: str
    weights: dict[str, np.ndarray]

    def logits(self, features: np.ndarray) -> np.ndarray:
        w = self.weights
        x = features.astype(np.float32)
        if self.kind == "linear":
            return x @ w["fc.weight"].T + w["fc.bias"]
        hidden = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0.0)
        return hidden @ w["fc2.weight"].T + w["fc2.bias"]

    @property
    def feature_dim(self) -> int:
        return int(self.weights[f"{_LAYERS[self.kind][0]}.weight"].shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weights[f"{_LAYERS[self.kind][-1]}.weight"].shape[0])


def load_head(manifest: dict[str, Any]) -> tuple[NumpyHead, dict[str, np.ndarray]]:
    """The head and the source feature statistics of a verified ONNX/engine manifest.

    Returns:
        (head, source statistics with `mean`, `std` and, when recorded, `cov`).
    """
    from safetensors.numpy import load_file

    info = manifest.get("head")
    if not info or HEAD_FILE not in manifest.get("files", {}):
        raise ArtifactError(
            f"{manifest.get('folder')} carries no host-side head ({HEAD_FILE}): export the bundle again with this "
            "version of dorl to use site profiles."
        )
    folder = manifest.get("folder")
    try:
        tensors = load_file(str(Path(str(folder)) / HEAD_FILE))
    except Exception as exc:  # safetensors raises its own error types for a malformed file
        raise ArtifactError(f"{HEAD_FILE} of {folder} cannot be read ({exc}): re-export the artifact.") from exc
    weights = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    source = {k[len("source."):]: v for k, v in tensors.items() if k.startswith("source.")}
    if "mean" not in source or "std" not in source:
        raise ArtifactError(f"{HEAD_FILE} of {folder} lacks the source feature statistics: "
                            "re-export from a bundle trained with this version of dorl.")
    kind = info.get("kind") if isinstance(info, dict) else None
    head = NumpyHead(str(kind), weights)
    _check_head(head, source, str(folder))
    return head, source


def _check_head(head: NumpyHead, source: dict[str, np.ndarray], folder: str) -> None:
    """Refuse a head whose layers are missing, mis-shaped or not finite."""
    layers = _LAYERS.get(head.kind)
    names = [f"{layer}.{part}" for layer in layers or () for part in ("weight", "bias")]
    problem = None
    if layers is None:
        problem = f"its head kind {head.kind!r} is not one of {', '.join(_LAYERS)}"
    elif missing := [n for n in names if n not in head.weights]:
        problem = f"it lacks the head tensors {missing}"
    elif any(head.weights[n].ndim != (2 if n.endswith("weight") else 1) for n in names):
        problem = "its head tensors have the wrong number of dimensions"
    elif not all(np.isfinite(head.weights[n]).all() for n in names):
        problem = "its head holds NaN or infinite weights"
    elif not all(np.isfinite(v).all() for v in source.values()):
        problem = "its source feature statistics hold NaN or infinite values"
    elif source["mean"].shape != (head.feature_dim,) or source["std"].shape != (head.feature_dim,):
        problem = (f"its source statistics have {source['mean'].shape} values for a head reading "
                   f"{head.feature_dim} features")
    if problem is not None:
        raise ArtifactError(f"{HEAD_FILE} of {folder} cannot be used: {problem}; re-export the artifact.")
