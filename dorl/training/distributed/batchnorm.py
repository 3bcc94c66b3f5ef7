"""Batch normalisation over the whole global batch while its rows are spread over processes.

In training mode a BatchNorm normalises with its batch's statistics; with the rows dealt out,
each process would see only its own. While a distributed step runs, `global_batch_norms` stands
each BatchNorm of a module in for one whose mean and variance are summed over every process
(two all-reduces, as a two-pass variance) and whose running statistics move exactly as one
process's would; a process without rows takes part with zero counts. torch's SyncBatchNorm does
the same on GPUs only (it refuses CPU tensors), and averages the per-process losses rather than
taking one loss of the whole batch (see `dorl.training.distributed.rows`); here the all-reduce's
backward sums, which matches that one loss. The module gets its own BatchNorms back afterwards,
with their parameters and running statistics updated in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dorl.training.distributed.processes import rows_group


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.contiguous().clone()
        dist.all_reduce(y, group=rows_group())
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=rows_group())
        return total


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over every process, differentiable (the backward sums the gradients too)."""
    return _AllReduceSum.apply(x)


def global_batch_norm(x: torch.Tensor, bn: _BatchNorm) -> torch.Tensor:
    """`bn(x)` in training mode with the statistics of every process's rows of the batch.

    Args:
        x: this process's rows [b,C,...] (b may be 0).
        bn: the BatchNorm whose parameters, eps, momentum and running statistics apply.
    """
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    values = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 rows: statistics in fp32
    count = torch.tensor([values.numel() // max(1, values.shape[1])], dtype=torch.float64, device=x.device)
    dist.all_reduce(count, group=rows_group())
    n = float(count.item())
    mean = all_reduce_sum(values.sum(dims)) / n
    centred = values - mean.view(shape)
    var = all_reduce_sum((centred * centred).sum(dims)) / n
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    tracked = bn.num_batches_tracked
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None and tracked is not None:
        with torch.no_grad():
            tracked.add_(1)
            factor = 1.0 / float(tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
            unbiased = var * (n / max(n - 1, 1.0))
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
    return y.to(x.dtype)


class GlobalBatchNorm(nn.Module):
    """Stands in for a BatchNorm: global statistics in training mode, the BatchNorm itself otherwise."""

    bn: _BatchNorm

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        object.__setattr__(self, "bn", bn)  # not a submodule: its parameters stay where they are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        bn._check_input_dim(x)
        return global_batch_norm(x, bn)


@contextmanager
def global_batch_norms(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm in `module` computes its statistics over every process's rows."""
    swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if isinstance(child, _BatchNorm)]
    for parent, name, child in swapped:
        parent._modules[name] = GlobalBatchNorm(child)
    try:
        yield
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child
