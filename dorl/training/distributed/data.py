"""Data for several processes: each loads its rows of every batch, each encodes its share of a domain.

`RowShard` wraps a map-style dataset so that a DataLoader over it yields, in each process, that
process's rows of the batch one process would load (rows rank, rank+N, ...): every process
draws the same batch order, and the dataset's augmentations stay those of one process because
rows of other processes still advance its random generator. `sharded_encode` runs a per-cell
encoding on one contiguous share of a domain's cells per process and gathers the shares, in
order, on every process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from dorl.data.domains import Domain
from dorl.training.distributed.processes import current, rows_group
from dorl.training.distributed.rows import batch_shard

_STAND_IN = (np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), bool))


def _advance(dataset: Any, index: int) -> None:
    """Draw the random numbers `dataset[index]` would draw, without decoding or augmenting the image.

    A dataset with an `augment(image, mask, rng)` and its `rng` (`SegDataset`) augments a one-pixel
    stand-in, which draws the same numbers (flips, rotation, jitter do not depend on the size);
    one without randomness of its own skips the row; any other dataset loads it.
    """
    if hasattr(dataset, "augment") and isinstance(getattr(dataset, "rng", None), np.random.Generator):
        if dataset.augment is not None:
            dataset.augment(*_STAND_IN, dataset.rng)
        return
    dataset[index]


class RowShard(Dataset):
    """This process's rows of each batch of `dataset` (every row with one process)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The DataLoader's batch of `indices`, cut to this process's rows."""
        shard = batch_shard(len(indices), "batch of the data loader")
        if shard is None:
            return [self.dataset[i] for i in indices]
        rows = []
        for position, index in enumerate(indices):
            if position % shard.world == shard.rank:
                rows.append(self.dataset[index])
            else:
                _advance(self.dataset, index)
        return rows


def share(total: int, rank: int, world: int) -> slice:
    """Process `rank`'s contiguous share of `total` cells: shares differ by at most one cell and cover them all."""
    bounds = np.linspace(0, total, world + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def _gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (rows may differ) concatenated in rank order, on every process."""
    device = torch.device("cuda", torch.cuda.current_device()) if current().backend == "nccl" else tensor.device
    counts = torch.tensor([len(tensor)], device=device)
    sizes = [torch.empty_like(counts) for _ in range(current().world_size)]
    dist.all_gather(sizes, counts, group=rows_group())
    most = max(int(s.item()) for s in sizes)
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=rows_group())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(tensor.device)


def _merge(values: list[Any]) -> Any:
    """Per-process values of one field joined: lists concatenated, numbers added (dicts key by key),
    anything else rank 0's."""
    first = values[0]
    if isinstance(first, list):
        return [item for value in values for item in value]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for value in values for k in value))
        return {k: _merge([value[k] for value in values if k in value]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(values)
    return first


def gather_parts(part: Any) -> Any:
    """A dataclass of per-row fields computed on a share of rows, joined over the processes in rank order.

    Tensor fields are concatenated along rows, list fields concatenated, dicts of counts added
    key by key, other fields taken from rank 0.
    """
    fields = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    tensors = {k: _gather_tensor(v) for k, v in fields.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in fields.items() if k not in tensors}
    every: list[dict[str, Any]] = [{} for _ in range(current().world_size)]
    dist.all_gather_object(every, rest, group=rows_group())
    merged = {k: _merge([e[k] for e in every]) for k in rest}
    return dataclasses.replace(part, **tensors, **merged)


def sharded_encode(encode: Callable[[Domain, slice], Any], domain: Domain) -> Any:
    """`encode(domain, all rows)` with each process encoding one contiguous share of the cells, gathered in order.

    Args:
        encode: a per-cell encoding `encode(part, rows)` of the cells `rows` of a domain, `part`
            the domain cut to those cells (e.g. their tokens), returning a dataclass whose tensor
            and list fields have one row per cell (see `gather_parts`).
        domain: the cells.

    Returns:
        What `encode(domain)` returns with one process, on every process.
    """
    procs = current()
    if not procs.distributed or len(domain.samples) < procs.world_size:  # a tiny domain: every process encodes it
        return encode(domain, slice(0, len(domain.samples)))
    rows = share(len(domain.samples), procs.rank, procs.world_size)
    return gather_parts(encode(dataclasses.replace(domain, samples=tuple(domain.samples[rows])), rows))
