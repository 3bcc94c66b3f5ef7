"""A training step under DistributedDataParallel: `data_parallel(module)(fn, *args)` runs `fn(module, *args)`.

The training loops call their model through functions (`encode` then the mask decoder; the
CAE's losses), not through one `forward`; DDP needs the pass to go through the module it
wraps, so the step wraps the model in a module whose forward calls the function given. With
one process that is a plain call, so a one-process run computes exactly what it did before.
With several, DDP averages the gradients of the parameters being trained (the others are left
out of its buckets), finds parameters a pass did not use (SAM's IoU head, for instance) and
leaves their gradients unset as one process would, and the module's BatchNorms use the global
batch's statistics during the pass (`global_batch_norms`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dorl.training.distributed.batchnorm import global_batch_norms
from dorl.training.distributed.processes import current

M = TypeVar("M", bound=nn.Module)


class _Pass(nn.Module):
    def __init__(self, module: nn.Module, distributed: bool) -> None:
        super().__init__()
        self.module = module
        self.distributed = distributed

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.distributed:
            return fn(self.module, *args, **kwargs)
        with global_batch_norms(self.module):
            return fn(self.module, *args, **kwargs)


class DataParallel:
    """Call with `(fn, *args)` to run `fn(module, *args)` as this process's part of a training step."""

    def __init__(self, module: nn.Module, trained: Iterable[nn.Parameter] | None = None) -> None:
        procs = current()
        self.module = module
        self.run: nn.Module = _Pass(module, procs.distributed)
        if procs.distributed:
            keep = None if trained is None else {id(p) for p in trained}
            ignored = [name for name, p in self.run.named_parameters() if keep is not None and id(p) not in keep]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.run, ignored)
            # the global batch statistics keep every process's buffers equal, so they are not broadcast;
            # newer torch calls broadcast_buffers deprecated (its replacement lacks the off switch yet)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.run = DistributedDataParallel(self.run, broadcast_buffers=False, find_unused_parameters=True)

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.run(fn, *args, **kwargs)


def data_parallel(module: nn.Module, trained: Iterable[nn.Parameter] | None = None) -> DataParallel:
    """A step that runs functions of `module` under DDP when the run has several processes.

    Args:
        module: the model being trained, already on its device.
        trained: the parameters the optimiser updates (default: all); DDP leaves the others alone.

    Returns:
        A callable: `step(fn, *args)` is `fn(module, *args)`, with gradients averaged over the
        processes when there are several.
    """
    return DataParallel(module, trained)
