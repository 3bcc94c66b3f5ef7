"""Where training runs: the device by name, and mixed precision on CUDA."""

from __future__ import annotations

import contextlib

import torch

from dorl.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for `name`: "auto" (CUDA when available), "cpu" or "cuda".

    Raises:
        ConfigError: an unknown name, or "cuda" without a usable GPU.
    """
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast on CUDA (no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
