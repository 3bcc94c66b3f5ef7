"""Per-cell features of a DoRL model: the CAE CLS token and the pooled encoder tokens.

DoRL's classification feature is the CAE encoder's CLS token (masking off); the baseline
feature is the same encoder's pre-neck token map averaged over its grid (no CAE). Both come
from one encoder pass, either directly from images (`extract_features`) or from token maps
already computed once (`dorl.training.token_cache`), so that the head's training and every row
of the evaluation are scored on the very same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dorl.contract import load_cells, to_nchw_float
from dorl.models.cae import CAE
from dorl.models.dorl_model import DoRLModel
from dorl.training.progress import NullReporter, Reporter


@dataclass(frozen=True)
class CellFeatures:
    """Features of N cells, row i belonging to the i-th image given.

    Attributes:
        cls: CAE CLS features [N,C] float32 (DoRL's classification feature).
        pooled: pre-neck tokens averaged over the grid [N,C] float32 (the baseline feature).
        tokens: pre-neck token maps [N,C,g,g] float16 (the token cache's dtype), or None when not kept.
    """

    cls: np.ndarray
    pooled: np.ndarray
    tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.cls.shape[0])


def to_model_input(cells: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC cells → the model's float NCHW input on the 0–255 scale (the model normalises)."""
    return torch.from_numpy(to_nchw_float(cells)).to(device)


@torch.no_grad()
def encode_cells(model: DoRLModel, cells: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One encoder pass: (pre-neck tokens [B,C,g,g], pooled [B,C], CAE CLS [B,C])."""
    device = next(model.parameters()).device
    tokens, _ = model.encode(to_model_input(cells, device))
    return tokens, tokens.mean(dim=(2, 3)), model.cae.feature(tokens)


def extract_features(
    model: DoRLModel,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    keep_tokens: bool = False,
    reporter: Reporter | None = None,
    task: str = "features",
) -> CellFeatures:
    """Features of every image in `paths`, in order.

    Args:
        model: a DoRL model (put in eval mode here: BatchNorm must not update).
        paths: cell image files.
        batch_size: cells per encoder pass.
        keep_tokens: also return the token maps (float16), e.g. to train or score another CAE.
        reporter: progress, one step per cell, under the name `task`.
        task: the progress task's name (e.g. "features pbc").

    Returns:
        The features; arrays with 0 rows for no paths.
    """
    reporter = reporter or NullReporter()
    model.eval()
    dim, grid, size = model.feature_dim, model.config.grid, model.config.image_size
    cls, pooled, tokens = [], [], []
    reporter.start(task, len(paths))
    for start in range(0, len(paths), batch_size):
        batch = load_cells(paths[start:start + batch_size], size)
        t, p, c = encode_cells(model, batch)
        cls.append(c.float().cpu().numpy())
        pooled.append(p.float().cpu().numpy())
        if keep_tokens:
            tokens.append(t.cpu().to(torch.float16).numpy())
        reporter.advance(task, len(batch))
    reporter.finish(task)
    return CellFeatures(
        _stack(cls, (0, dim), np.float32),
        _stack(pooled, (0, dim), np.float32),
        _stack(tokens, (0, dim, grid, grid), np.float16) if keep_tokens else None,
    )


def pooled_tokens(tokens: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Token maps [N,C,g,g] (any float dtype) averaged over the grid, in float32: [N,C]."""
    data = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    out = [data[i:i + batch_size].astype(np.float32).mean(axis=(2, 3)) for i in range(0, len(data), batch_size)]
    return _stack(out, (0, data.shape[1]), np.float32)


@torch.no_grad()
def cae_features(cae: CAE, tokens: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """CLS features [N,C] of a CAE (masking off) from token maps [N,C,g,g] (any float dtype)."""
    cae.eval()
    device = next(cae.parameters()).device
    data = tokens if isinstance(tokens, torch.Tensor) else torch.from_numpy(np.asarray(tokens))
    out = [cae.feature(data[i:i + batch_size].to(device, torch.float32)).cpu().numpy()
           for i in range(0, len(data), batch_size)]
    return _stack(out, (0, int(cae.dim)), np.float32)


def _stack(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype=dtype)


