"""Where dorl finds the weights and data it may use without downloading anything.

Lookup order: an environment variable, the project's `shared/` folder beside the checkout
(`<repo>/../shared`), then copies bundled in the package (`dorl/assets/`).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
TINYVIT_WEIGHTS = "mobile_sam_tinyvit5m_image_encoder.safetensors"
DECODER_WEIGHTS = "sam_prompt_encoder_mask_decoder.safetensors"


def shared_dir() -> Path | None:
    """The project's shared folder (`$DORL_SHARED_DIR` or `<repo>/../shared`), if present."""
    env = os.environ.get("DORL_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(PACKAGE_DIR.parents[1] / "shared")
    return next((c for c in candidates if c.is_dir()), None)


def find_weights(name: str) -> Path | None:
    """A pretrained weights file by name: `$DORL_WEIGHTS_DIR`, shared/weights, then dorl/assets/weights."""
    dirs = []
    if env := os.environ.get("DORL_WEIGHTS_DIR"):
        dirs.append(Path(env))
    if (shared := shared_dir()) is not None:
        dirs.append(shared / "weights")
    dirs.append(ASSETS_DIR / "weights")
    return next((d / name for d in dirs if (d / name).is_file()), None)


def wbc_data_dir() -> Path | None:
    """The shared real white-blood-cell images (`shared/data/wbc`), if present."""
    shared = shared_dir()
    path = shared / "data" / "wbc" if shared else None
    return path if path is not None and path.is_dir() else None
