"""A training loss that stops being a number ends the run at once, with what to do."""

from __future__ import annotations

import math

from dorl.errors import TrainingError


def check_loss(stage: str, loss: float, step: int, total: int, lr: float) -> float:
    """`loss` if it is finite; else a TrainingError naming the stage, the step and the learning rate.

    A NaN or infinite loss poisons every weight at the next optimiser step, so going on would only
    write a useless checkpoint and bundle (whose manifest could not even record the loss).

    Args:
        stage: "seg" or "cae".
        step: the 1-based optimiser step that produced `loss`; total: the stage's steps.
        lr: the learning rate of that step.
    """
    if math.isfinite(loss):
        return loss
    raise TrainingError(f"the {stage} loss became {loss} at step {step} of {total} (learning rate {lr:.3g}): "
                        f"training diverged and nothing of this stage was saved; check the training images (and "
                        f"a token cache written by another dorl) and run again with --no-resume.")
