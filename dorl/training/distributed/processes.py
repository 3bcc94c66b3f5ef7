"""The processes of a training run: one, or several that torchrun started (one per GPU, or CPU processes).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process it
starts; `start` joins them into one process group (NCCL on GPUs, gloo on CPUs) and sets the
process's GPU. Without those variables it does nothing and the run is the one process it always
was. Besides the default group, a second group carries this package's own collectives (row
gathers, batch statistics), so that they never queue behind DDP's gradient buckets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dorl.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = timedelta(minutes=30)  # the longest one process may wait for the others (e.g. rank 0 writing)

T = TypeVar("T")
_groups: dict[str, Any] = {}


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the run's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "" when the run is one process

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, the token cache and the bundle, and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"the environment variable {name}={env[name]!r} is not a number: launch with "
                          "torchrun, which sets it.") from None


def _from_env(env: Mapping[str, str]) -> Processes | None:
    """The processes torchrun describes in `env`; None when this process was not started by torchrun."""
    if "WORLD_SIZE" not in env:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} are not: start several processes with "
                          "torchrun (e.g. torchrun --nproc_per_node 2 -m dorl.cli train ...), which sets them all.")
    world, rank, local = _int(env, "WORLD_SIZE"), _int(env, "RANK"), _int(env, "LOCAL_RANK")
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local} are inconsistent: launch with "
                          "torchrun instead of setting them by hand.")
    return Processes(rank, world, local)


def _on_cuda(device: str) -> bool:
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def choose_backend(backend: str, device: str) -> str:
    """The process-group backend for `backend` ("auto": nccl on CUDA, gloo on CPUs) and a device name.

    Raises:
        ConfigError: an unknown backend, nccl without CUDA, or gloo with CUDA.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    on_cuda = _on_cuda(device)
    if backend == "auto":
        return "nccl" if on_cuda else "gloo"
    if backend == "nccl" and not on_cuda:
        raise ConfigError("the nccl backend needs CUDA GPUs and this run is on the CPU: use --backend gloo "
                          "(or auto), or run on GPUs with --device cuda.")
    if backend == "gloo" and on_cuda:
        raise ConfigError("training on GPUs goes through the nccl backend, not gloo: use --backend nccl (or auto), "
                          "or train on the CPU with --device cpu.")
    return backend


def _available(backend: str) -> None:
    """Raises ConfigError if this torch build lacks `backend`."""
    has = dist.is_available() and (dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available())
    if not has:
        raise ConfigError(f"this torch build has no {backend} backend for torch.distributed: install a torch "
                          "built with it (the official wheels have gloo, and nccl on Linux with CUDA).")


def _claim_gpu(local_rank: int, on_node: int) -> None:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"torchrun started {on_node} processes on this node but torch sees {count} GPU(s): "
                          f"use --nproc_per_node {count} or fewer (one process per GPU).")
    torch.cuda.set_device(local_rank)


def start(device: str = "auto", backend: str = "auto", env: Mapping[str, str] | None = None) -> Processes:
    """Join the process group that torchrun set up; a run not started by torchrun stays one process.

    Args:
        device: "auto", "cpu" or "cuda", as `dorl train --device` takes it.
        backend: "auto", "gloo" or "nccl".
        env: the environment (default: os.environ).

    Returns:
        This process's rank and the number of processes.

    Raises:
        ConfigError: torchrun's variables are incomplete, nccl without CUDA, gloo with CUDA, more
            processes on a node than GPUs, or an unknown backend.
    """
    environ = os.environ if env is None else env
    found = _from_env(environ)
    chosen = choose_backend(backend, device)
    if found is None or found.world_size == 1:
        return Processes()
    _available(chosen)
    if dist.is_initialized():
        return current()
    if _on_cuda(device):
        _claim_gpu(found.local_rank, int(environ.get("LOCAL_WORLD_SIZE", found.local_rank + 1)))
    dist.init_process_group(chosen, init_method="env://", rank=found.rank, world_size=found.world_size,
                            timeout=TIMEOUT)
    _groups["rows"] = dist.new_group(backend=chosen, timeout=TIMEOUT)
    return Processes(found.rank, found.world_size, found.local_rank, chosen)


def current() -> Processes:
    """This process's place in the run (one process when no process group was joined)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Processes()
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                     str(dist.get_backend()))


def rows_group() -> Any:
    """The process group of this package's own collectives."""
    return _groups.get("rows")


def stop() -> None:
    """Leave the process group (after the last collective); nothing when the run is one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        _groups.clear()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing when the run is one process)."""
    if current().distributed:
        dist.barrier()


def main_writes(write: Callable[[], T], read: Callable[[], T] | None = None) -> T | None:
    """`write()` on the main process only; the others wait for it, then return `read()` (or None).

    Every process must call this at the same point. The others read what the main process wrote
    from the same output folder, so several nodes need that folder on a shared filesystem.
    """
    procs = current()
    if not procs.distributed:
        return write()
    result: T | None = None
    failed: Exception | None = None
    if procs.is_main:
        try:
            result = write()
        except Exception as exc:  # noqa: BLE001 - re-raised below, once the others know to stop
            failed = exc
    flag = torch.tensor([int(failed is not None)])
    flag = flag.cuda() if procs.backend == "nccl" else flag
    dist.all_reduce(flag)
    if failed is not None:
        raise failed
    if int(flag.item()):
        raise ConfigError("the main process (rank 0) could not write its files; its error says why. Stopping.")
    return result if procs.is_main else (read() if read is not None else None)
