"""Runs of the training's distributed pieces in real gloo processes, for tests/training/distributed.

`run_processes(name, world, folder)` spawns `world` CPU processes joined by `dorl.training.distributed.start`
(as torchrun's would be), runs the scenario `name` in each and returns each rank's result. The
scenarios compute with the package's own code on small real tensors; the tests compare their
results with one process's on the same data.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAMPLE_PBC = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "sample" / "pbc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_processes(name: str, world: int, folder: Path) -> list[dict[str, Any]]:
    """Each rank's result of the scenario `name`, run in `world` gloo processes."""
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_worker, args=(name, world, port, str(folder)), nprocs=world, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def _worker(rank: int, name: str, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from dorl.training.distributed import start, stop

    start("cpu", "gloo")
    result = SCENARIOS[name](Path(folder))
    torch.save(result, Path(folder) / f"rank{rank}.pt")
    stop()


# -- what one process computes (the reference) and each process's part --------------------------------
BATCH_ROWS, LOADER_BATCH = 11, 4


class Rows(torch.utils.data.Dataset):
    """Row i is the tensor [i]."""

    def __len__(self) -> int:
        return BATCH_ROWS

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index])


def loader_batches(dataset: Any) -> list[Any]:
    """The batches of a shuffled loader as the segmentation stage builds it."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=LOADER_BATCH, shuffle=True, generator=torch.Generator().manual_seed(3))
    return list(loader)


def seg_dataset() -> Any:
    """A SegDataset of 11 random images with every augmentation on."""
    from dorl.training.datasets import Augment, SegDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH_ROWS, 16, 16, 3), dtype=np.uint8)
    masks = rng.random((BATCH_ROWS, 16, 16)) > 0.5
    return SegDataset(images, masks, Augment(flip=True, rotate=True, jitter=0.2, hue=0.05), seed=4)


def bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2)).double()


def bn_batch() -> torch.Tensor:
    return torch.randn(7, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def bn_step(net: torch.nn.Module, batch: torch.Tensor) -> dict[str, Any]:
    """Two training steps of `net` (the rows dealt over the processes), then its state and gradients."""
    from dorl.training.distributed import data_parallel, gather_rows
    from dorl.training.distributed.processes import current

    procs = current()
    step = data_parallel(net)
    outputs = []
    for _ in range(2):
        net.zero_grad()
        mine = batch[procs.rank::procs.world_size]
        (out,) = gather_rows(step(lambda module, rows: module(rows), mine))
        (out.pow(2).mean() + out[:, 0].mean()).backward()
        outputs.append(out.detach())
    return {"out": outputs, "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
            "state": {k: v.clone() for k, v in net.state_dict().items()}}


def tiny_cae() -> Any:
    from dorl.models.cae import CAE

    torch.manual_seed(0)
    return CAE(dim=16, grid=14, depth=1, decoder_depth=1, num_heads=2, mask_ratio=0.75, projector_dim=4)


def cae_run(alignment: str) -> dict[str, Any]:
    """The CAE stage for 2 epochs of 2 batches on 18 random token maps of 3 domains."""
    from dorl.training.cae import train_cae
    from dorl.training.config import CaeTrainConfig
    from dorl.training.token_cache import TokenSet

    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(18, 16, 14, 14, generator=g).half()
    targets = (torch.rand(18, 3, 128, 128, generator=g) * 255).to(torch.uint8)
    ids = np.array([0] * 8 + [1] * 6 + [2] * 4)
    sets = [TokenSet(f"d{d}", [str(i) for i in np.flatnonzero(ids == d)], ["x"] * int((ids == d).sum()),
                     tokens[ids == d], targets[ids == d]) for d in range(3)]
    config = CaeTrainConfig(epochs=2, warmup_iters=2, batch_size=9, lr=1e-3, ssim_fraction=0.25, alignment=alignment)
    cae = tiny_cae()
    torch.manual_seed(5)
    history = train_cae(cae, sets, config, torch.device("cpu"), seed=3)
    return {"state": {k: v.clone() for k, v in cae.state_dict().items()}, "history": history}


def cae_step(alignment: str) -> dict[str, Any]:
    """One float64 step of the CAE's losses on 12 random token maps of 3 domains: losses, gradients, buffers."""
    from dorl.training.cae import cae_losses
    from dorl.training.config import CaeTrainConfig
    from dorl.training.distributed import data_parallel

    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(12, 16, 14, 14, generator=g, dtype=torch.float64)
    targets = torch.rand(12, 3, 128, 128, generator=g, dtype=torch.float64)
    ids = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    config = CaeTrainConfig(ssim_fraction=0.25, alignment=alignment)
    cae = tiny_cae().double().train()
    step = data_parallel(cae)
    torch.manual_seed(5)
    parts = step(cae_losses, tokens, targets, ids, config)
    parts["loss"].backward()
    return {"losses": {k: float(v.detach()) for k, v in parts.items()},
            "grads": {n: p.grad.clone() for n, p in cae.named_parameters() if p.grad is not None},
            "buffers": {n: b.clone() for n, b in cae.named_buffers()}}


@dataclass
class Encoded:
    """A per-cell encoding: a row per cell in `rows`, `names` and `labels`; `counts` and `domain` are per call."""

    domain: str
    rows: torch.Tensor
    names: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def encode_cells(part: Any, rows: slice) -> Encoded:
    names = [s.path.name for s in part.samples]
    counts: dict[str, int] = {}
    for s in part.samples:
        counts[s.label] = counts.get(s.label, 0) + 1
    return Encoded(part.name, torch.arange(rows.start, rows.stop).double()[:, None] * 2, names, counts)


def sample_domain() -> Any:
    from dorl.data.domains import load_domain

    return load_domain("pbc", SAMPLE_PBC, check=False)


# -- the scenarios ---------------------------------------------------------------------------------------
def pieces(folder: Path) -> dict[str, Any]:
    """Sharding, the loader's rows, augmentations, batch norms, the CAE, sharded encoding, one writer."""
    from dorl.errors import ArtifactError, ConfigError
    from dorl.training.distributed import RowShard, main_writes, sharded_encode
    from dorl.training.distributed.processes import current

    rank = current().rank
    result: dict[str, Any] = {"rank": rank, "world": current().world_size, "backend": current().backend}
    result["loader"] = [b.flatten().tolist() for b in loader_batches(RowShard(Rows()))]
    result["augmented"] = loader_batches(RowShard(seg_dataset()))
    result["batchnorm"] = bn_step(bn_net(), bn_batch())
    result["cae_step"] = {alignment: cae_step(alignment) for alignment in ("z", "cls_coral")}
    result["cae"] = cae_run("cls_coral")
    result["encoded"] = sharded_encode(encode_cells, sample_domain())

    def write() -> str:
        with open(folder / "written.txt", "a") as f:
            f.write(f"{rank}\n")
        return "wrote"

    result["writes"] = main_writes(write, lambda: (folder / "written.txt").read_text())

    def fail() -> None:
        raise ArtifactError("the disk is full")

    try:
        main_writes(fail)
    except (ArtifactError, ConfigError) as exc:
        result["failure"] = f"{type(exc).__name__}: {exc}"
    try:
        RowShard(Rows()).__getitems__([5])
    except ConfigError as exc:
        result["too_few_rows"] = str(exc)
    return result


SCENARIOS = {"pieces": pieces}
