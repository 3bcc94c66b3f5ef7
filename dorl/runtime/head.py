"""The classifier head on the host, in numpy, for site-adapted inference (issue 7).

An exported artifact carries the head's weights (scaler folded in) in `head.safetensors`
beside the graph, and the source domain's feature statistics. With a site profile, the
analyzer takes the graph's `feature` output, applies the profile's affine map and this head,
so the engine itself is never rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ArtifactError

HEAD_FILE = "head.safetensors"


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


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
    tensors = load_file(str(Path(manifest["folder"]) / HEAD_FILE))
    weights = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    source = {k[len("source."):]: v for k, v in tensors.items() if k.startswith("source.")}
    if "mean" not in source or "std" not in source:
        raise ArtifactError(f"{HEAD_FILE} of {manifest.get('folder')} lacks the source feature statistics: "
                            "re-export from a bundle trained with this version of dorl.")
    return NumpyHead(info["kind"], weights), source
