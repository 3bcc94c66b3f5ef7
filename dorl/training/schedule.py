"""Learning-rate schedule of DoRL: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate factor (of the peak) at `step` (0-based).

    Args:
        step: optimiser steps taken so far.
        total_steps: steps in the whole run.
        warmup_steps: steps of linear warm-up (from 1/warmup to 1).

    Returns:
        A factor in [0, 1]: (step+1)/warmup during warm-up, then 0.5·(1 + cos(π·progress)).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                            warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `warmup_cosine` to every parameter group; call `.step()` after each step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps))
