"""The deployed model's contract, written once: tensor and file names, the cells' preprocessing,
probabilities and the agreement between two runs of the model.

Training, export, calibration, the runtime and the benchmarks all import these instead of
repeating them, so a cell is prepared the same way everywhere and two backends are compared by
the same rule. Torch-free (numpy and pillow): the runtime imports it. Decoding itself lives in
`dorl.data.images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dorl.data.images import ImageSource, load_rgb, resize_square

# -- the graph's tensors (fixed by the export wrapper; the runtime reads them from the manifest) --
INPUT_NAME = "images"  # uint8 [batch, S, S, 3], RGB
LOGITS, PROBS, FEATURE, MASK_LOGITS = "logits", "probs", "feature", "mask_logits"
OUTPUT_NAMES = (LOGITS, PROBS, FEATURE, MASK_LOGITS)
BATCH_DIM = "batch"
CELL_CHANNEL = 1  # mask_logits channel 0 is background, every other channel is cell


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a graph input or output, as manifests record them; a str dimension is dynamic."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


# -- the files of the artifacts ----------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"  # a bundle's weights (LoRA merged)
FEATURE_STATS_FILE = "feature_stats.safetensors"  # a bundle's source feature statistics
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # the graph's external weights, past protobuf's 2 GB
HEAD_FILE = "head.safetensors"  # the host-side head and source statistics (site profiles)
EXTERNAL_DATA_BYTES = 2**31 - 2**27  # protobuf's 2 GB limit, less room for the graph itself

# A cell whose reference top-2 probabilities are closer than this is a near tie: reduced precision
# may flip it, and its top probability is at most 0.525, at the analyzer's 0.5 uncertainty threshold.
NEAR_TIE_MARGIN = 0.05


# -- preprocessing ------------------------------------------------------------------------------
def load_cells(sources: Sequence[ImageSource] | np.ndarray, size: int) -> np.ndarray:
    """Decode and resize cells as training and the analyzer do: uint8 [N, size, size, 3].

    Args:
        sources: image paths, encoded bytes or arrays (an [N,H,W,3] array is N images).
        size: the model's input side.

    Raises:
        ImageError: an image cannot be read.
    """
    items = list(sources) if isinstance(sources, np.ndarray) and sources.ndim == 4 else sources
    if len(items) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_square(load_rgb(source), size) for source in items])


def to_nchw_float(cells: np.ndarray) -> np.ndarray:
    """uint8 NHWC cells → float32 NCHW on the 0–255 scale (the model normalises; the graph does this
    in-graph, the PyTorch model is fed it)."""
    return np.ascontiguousarray(np.asarray(cells).transpose(0, 3, 1, 2), dtype=np.float32)


# -- test-time views ----------------------------------------------------------------------------
# The views of a classified input that test-time augmentation averages the class probabilities
# over, by mode; "plain" (the input itself) is always first and is what the features, the "no
# cell" check and site profiles read. Flips keep the cell and its grey surround and change only
# the orientation, which a cell on a slide does not have.
VIEWS = ("plain", "flip_h", "flip_v", "flip_hv")
TTA_MODES: dict[str, tuple[str, ...]] = {"none": ("plain",), "flips": VIEWS}


def view(cells: np.ndarray, name: str) -> np.ndarray:
    """One view (a name of VIEWS) of uint8 cells [N, S, S, 3], contiguous."""
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}: choose among {', '.join(VIEWS)}.")
    flipped = cells[:, :, ::-1] if name in ("flip_h", "flip_hv") else cells
    flipped = flipped[:, ::-1] if name in ("flip_v", "flip_hv") else flipped
    return np.ascontiguousarray(flipped)


def check_tta(mode: str, name: str = "test-time augmentation") -> None:
    """Refuse a mode that is not a key of TTA_MODES, naming it as `name` (e.g. the option "--tta").

    Raises:
        ConfigError: with the choices.
    """
    if mode not in TTA_MODES:
        from dorl.errors import ConfigError

        raise ConfigError(f"unknown {name} {mode!r}: choose among {', '.join(TTA_MODES)}.")


def tta_views(mode: str) -> tuple[str, ...]:
    """The views a test-time augmentation mode (a key of TTA_MODES) averages over, "plain" first."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}: choose among {', '.join(TTA_MODES)}.")
    return TTA_MODES[mode]


# -- probabilities and agreement ----------------------------------------------------------------
def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in float32."""
    values = np.asarray(logits, dtype=np.float32)
    exp = np.exp(values - values.max(axis=axis, keepdims=True))
    return exp / np.sum(exp, axis=axis, keepdims=True)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """Per row, the top probability minus the second ([N]; the top itself for one class)."""
    ranked = np.sort(np.asarray(probs), axis=1)
    return ranked[:, -1] - (ranked[:, -2] if ranked.shape[1] > 1 else 0.0)


def top1(table: np.ndarray) -> np.ndarray:
    """The top-1 class of each row of an [N, C] probability (or logit) table; -1 where a row is not
    all finite (an overflowed graph's NaN row names no class, it does not silently become class 0)."""
    x = np.asarray(table)
    return np.where(np.isfinite(x).all(axis=1), x.argmax(axis=1), -1)


def top1_matches(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per row of two [N, C] probability (or logit) tables, whether their top-1 classes agree (never
    where either row is not finite)."""
    ref, cand = top1(reference), top1(candidate)
    return (ref == cand) & (ref >= 0)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The fraction of rows whose top-1 class agrees (1.0 for no rows)."""
    same = top1_matches(reference, candidate)
    return float(same.mean()) if same.size else 1.0


def cell_masks(mask_logits: np.ndarray) -> np.ndarray:
    """The cell pixels of mask_logits [N, M, H, W] (argmax not background): bool [N, H, W]."""
    return np.asarray(mask_logits).argmax(axis=1) >= CELL_CHANNEL


def mask_iou(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-image IoU of the cell masks of two mask_logits [N, M, H, W]; 1 where both are empty."""
    a, b = cell_masks(reference), cell_masks(candidate)
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))
