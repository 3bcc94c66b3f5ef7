"""The rows of a global batch, dealt out to the processes and gathered back with their gradients.

Process r of N holds rows r, r+N, r+2N, ... of a global batch of B rows (dealt like cards, so
the leading rows, which `leading_rows` gives an extra pass, are spread evenly). Each process
computes its rows; `gather_rows` puts every process's results back into the global order on
every process, so that a loss computed from them is the loss of the whole batch: the same on
every process, and the same as one process computes. Its backward adds up the gradients every
process computed for a row (each computed that same loss) and keeps this process's rows: N
times the gradient of the loss, which DDP's average over the N processes brings back to
exactly the gradient of the one loss. Batch means, per-domain means, soft Dice sums and batch
norms are then those of the whole batch, whatever their number of rows per process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from dorl.errors import ConfigError
from dorl.training.distributed.processes import current, rows_group


@dataclass(frozen=True)
class Shard:
    """This process's rows of a global batch of `total` rows."""

    total: int
    rank: int
    world: int

    def count(self, limit: int | None = None) -> int:
        """How many of the global rows below `limit` (default: all) this process holds."""
        return len(range(self.rank, self.total if limit is None else limit, self.world))


_active: ContextVar[Shard | None] = ContextVar("dorl_rows_shard", default=None)


def batch_shard(total: int, what: str = "batch") -> Shard | None:
    """This process's rows of a global batch of `total` rows; None when the run is one process.

    Raises:
        ConfigError: fewer rows than processes (a process would have nothing to compute).
    """
    procs = current()
    if not procs.distributed:
        return None
    if total < procs.world_size:
        raise ConfigError(f"a {what} of {total} rows cannot be spread over {procs.world_size} processes: start "
                          f"at most {total} processes (torchrun --nproc_per_node), or use a larger batch.")
    return Shard(total, procs.rank, procs.world_size)


def leading_rows(fraction: float, rows: int) -> int:
    """How many leading rows of a batch of `rows` get an extra pass: ceil(fraction·rows), at least 1.

    Inside `rows_parallel` it is this process's share of the global batch's leading rows, so
    that the processes together pass exactly the rows one process would.
    """
    shard = _active.get()
    if shard is None:
        return max(1, math.ceil(fraction * rows))
    return shard.count(max(1, math.ceil(fraction * shard.total)))


def _backend_device(tensor: torch.Tensor) -> torch.device:
    return tensor.device if current().backend != "nccl" else torch.device("cuda", torch.cuda.current_device())


def _row_counts(tensors: tuple[torch.Tensor, ...]) -> list[list[int]]:
    """[process][tensor] row counts of every process's tensors."""
    world = current().world_size
    mine = torch.tensor([len(t) for t in tensors], dtype=torch.int64, device=_backend_device(tensors[0]))
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=rows_group())
    return [p.tolist() for p in parts]


def _layout(counts: list[int]) -> torch.Tensor:
    """Which cells of the [most, world] grid of dealt rows hold a row (row j of process r is global row r + j·N)."""
    most = max(counts)
    return torch.arange(most)[:, None] < torch.tensor(counts)[None, :]


def _all_gather(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    most, world = max(counts), len(counts)
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=rows_group())
    grid = torch.stack(parts, dim=1).reshape(most * world, *local.shape[1:])
    return grid[_layout(counts).reshape(-1).to(grid.device)]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.counts, ctx.rank = counts, rank
        return _all_gather(local, counts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=rows_group())
        counts, world = ctx.counts, len(ctx.counts)
        grid = torch.zeros((max(counts) * world, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        grid[_layout(counts).reshape(-1).to(grid.device)] = total
        mine = grid.reshape(max(counts), world, *grad.shape[1:])[:, ctx.rank]
        return mine[: counts[ctx.rank]], None, None


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows of each tensor, in the global batch's order, on every process.

    Each tensor holds this process's leading rows of one global tensor (row j is global row
    rank + j·N); processes may hold different numbers. Tensors that need a gradient pass it
    back to the process that computed the row. With one process the tensors come back as they are.
    """
    procs = current()
    if not procs.distributed or not tensors:
        return tensors
    if any(t.dim() == 0 for t in tensors):
        raise ValueError("gather_rows needs tensors with a batch dimension, got a scalar")
    counts = _row_counts(tensors)
    gathered = []
    for i, tensor in enumerate(tensors):
        mine = [c[i] for c in counts]
        on = tensor.to(_backend_device(tensor))
        out = _GatherRows.apply(on, mine, procs.rank) if tensor.requires_grad else _all_gather(on, mine)
        gathered.append(out.to(tensor.device))
    return tuple(gathered)


class _GlobalDraws(TorchFunctionMode):
    """torch.rand/randn calls whose first dimension is this process's row count draw the global batch's
    numbers (every process's generator advances alike) and keep this process's rows."""

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self.shard, self.local = shard, shard.count()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.rand, torch.randn):
            size = _size(args, kwargs)
            if size and size[0] == self.local:
                rest = {k: v for k, v in kwargs.items() if k != "size"}
                full = func(self.shard.total, *size[1:], **rest)
                return full[self.shard.rank::self.shard.world].contiguous()
        return func(*args, **kwargs)


def _size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    if "size" in kwargs:
        return tuple(kwargs["size"])
    if args and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args) if args and all(isinstance(a, int) for a in args) else None


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _rebuild(out: Any, gathered: list[torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        return gathered.pop(0)
    if isinstance(out, dict):
        return {k: _rebuild(v, gathered) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_rebuild(v, gathered) for v in out)
    return out


def rows_parallel(fn: Callable[..., Any], batch: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """`fn(batch, *args)` computed by the processes together: each on its rows, the results gathered.

    Every process passes the same global `batch`; each runs `fn` on its rows only, and gets back
    every tensor in `fn`'s result (a tensor, or dicts/lists/tuples of them) with the rows of all
    processes, in the global order. While `fn` runs, `leading_rows` counts this process's share,
    and random numbers drawn per row (torch.rand/randn with the row count first) are the global
    batch's draw cut to this process's rows, so masking or noise match one process's. Other
    random draws inside `fn` are each process's own. With one process it is `fn(batch, *args)`.
    """
    shard = None if _active.get() is not None else batch_shard(len(batch))  # nested: already this process's rows
    if shard is None:
        return fn(batch, *args, **kwargs)
    token = _active.set(shard)
    try:
        with _GlobalDraws(shard):
            out = fn(batch[shard.rank::shard.world], *args, **kwargs)
    finally:
        _active.reset(token)
    return _rebuild(out, list(gather_rows(*_tensors(out))))
