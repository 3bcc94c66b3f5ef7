"""The tiny artifact with a host-side head and the feature statistics of real source cells.

`with_head` copies the tiny artifact and adds `head.safetensors` (its head's weights, and the
mean, standard deviation and covariance of the tiny graph's features of the given cells), the
file `dorl non-cells` and site profiles work from.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.data.images import load_rgb, resize_square

SAMPLE = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "sample"
PLATELETS = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "non_cell" / "platelet"


def tiny_features(tiny: Any, paths: list[Path]) -> np.ndarray:
    """The tiny graph's features of `paths`, computed in numpy."""
    return tiny.reference(np.stack([resize_square(load_rgb(p), 224) for p in paths]))["feature"]


def with_head(tiny: Any, folder: Path, source_images: list[Path]) -> Path:
    """A copy of the tiny artifact at `folder` with head.safetensors and `source_images`' statistics."""
    from safetensors.numpy import save_file

    from dorl.runtime.head import HEAD_FILE

    shutil.copytree(tiny.folder, folder)
    source = tiny_features(tiny, source_images)
    save_file({"head.fc.weight": np.ascontiguousarray(tiny.w_head.T), "head.fc.bias": tiny.b_head,
               "source.mean": source.mean(0).astype(np.float32), "source.std": source.std(0, ddof=1).astype(np.float32),
               "source.cov": np.cov(source, rowvar=False).astype(np.float32)}, str(folder / HEAD_FILE))
    manifest = read_manifest(folder)
    fields = {k: v for k, v in manifest.items() if k not in ("files", "folder", "format_version", "kind", "created")}
    write_manifest(folder, "onnx", ["model.onnx", HEAD_FILE], **{**fields, "head": {"kind": "linear"}})
    return folder
