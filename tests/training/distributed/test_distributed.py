"""The distributed training pieces: one process as before, and 2 real gloo processes equal to one.

The 2-process run (`distributed_runs.pieces`) is spawned once per module; each test compares a
part of its results with what one process computes on the same data with the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_runs import (
    BATCH_ROWS,
    SAMPLE_PBC,
    Rows,
    bn_batch,
    bn_net,
    bn_step,
    cae_run,
    cae_step,
    encode_cells,
    loader_batches,
    run_processes,
    sample_domain,
    seg_dataset,
    tiny_cae,
)

from dorl.errors import ConfigError
from dorl.training.distributed import Processes, current, main_writes, sharded_encode, start
from dorl.training.distributed.data import share
from dorl.training.distributed.processes import choose_backend
from dorl.training.distributed.rows import Shard, leading_rows

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    folder = tmp_path_factory.mktemp("two_processes")
    return run_processes("pieces", 2, folder), folder


# -- one process --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "world"), [(80, 2), (51, 2), (7, 3), (3, 3), (131, 4)])
def test_shares_of_a_domain_are_disjoint_contiguous_and_cover_every_cell(total: int, world: int) -> None:
    rows = [list(range(total))[share(total, r, world)] for r in range(world)]
    assert [i for part in rows for i in part] == list(range(total))
    assert max(map(len, rows)) - min(map(len, rows)) <= 1


@pytest.mark.parametrize(("total", "world"), [(32, 2), (7, 2), (5, 3)])
def test_dealt_rows_of_a_batch_cover_it_once(total: int, world: int) -> None:
    counts = [Shard(total, r, world).count() for r in range(world)]
    assert sum(counts) == total and max(counts) - min(counts) <= 1
    # the leading rows (the SSIM pass) are shared out too: 2 of 7 with 2 processes -> rows 0 and 1, one each
    assert sum(Shard(total, r, world).count(2) for r in range(world)) == 2


def test_without_torchrun_the_run_is_one_process_that_writes() -> None:
    assert start("cpu", "auto", env={}) == Processes()
    assert current() == Processes() and current().is_main and not current().distributed
    assert start("cpu", "gloo", env={**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}) == Processes()
    assert main_writes(lambda: "wrote", lambda: "read") == "wrote"
    assert leading_rows(0.25, 7) == 2
    encoded = sharded_encode(encode_cells, sample_domain())
    assert encoded.rows[:, 0].tolist() == [2.0 * i for i in range(len(encoded.names))]


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
    ({**TORCHRUN, "RANK": "2"}, "RANK 2 / WORLD_SIZE 2 / LOCAL_RANK 0 are inconsistent"),
    ({**TORCHRUN, "RANK": "one"}, "RANK='one' is not a number"),
])
def test_a_broken_torchrun_environment_is_one_sentence(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        start("cpu", "gloo", env=env)


@pytest.mark.parametrize(("backend", "device", "message"), [
    ("mpi", "cpu", "unknown backend 'mpi'"),
    ("nccl", "cpu", "the nccl backend needs CUDA GPUs"),
    ("gloo", "cuda", "training on GPUs goes through the nccl backend"),
])
def test_a_backend_that_cannot_serve_the_device_is_one_sentence(backend: str, device: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_backend(backend, device)
    assert choose_backend("auto", "cpu") == "gloo"


# -- two gloo processes against one ---------------------------------------------------------------------
def test_two_processes_joined_with_gloo(ranks: tuple[list[dict[str, Any]], Path]) -> None:
    results, _ = ranks
    assert [(r["rank"], r["world"], r["backend"]) for r in results] == [(0, 2, "gloo"), (1, 2, "gloo")]


def test_each_process_loads_its_rows_of_every_batch_and_together_all_of_them(ranks: tuple[list[dict[str, Any]], Path]) \
        -> None:
    results, _ = ranks
    one = [b.flatten().tolist() for b in loader_batches(Rows())]
    assert sorted(i for b in one for i in b) == list(range(BATCH_ROWS))
    for r, result in enumerate(results):
        assert result["loader"] == [batch[r::2] for batch in one]


def test_augmentations_are_those_one_process_draws(ranks: tuple[list[dict[str, Any]], Path]) -> None:
    results, _ = ranks
    one = loader_batches(seg_dataset())
    for r, result in enumerate(results):
        for (images, masks), (mine_images, mine_masks) in zip(one, result["augmented"]):
            torch.testing.assert_close(mine_images, images[r::2], rtol=0, atol=0)
            torch.testing.assert_close(mine_masks, masks[r::2], rtol=0, atol=0)


def test_batch_norms_gradients_and_running_statistics_equal_one_process(ranks: tuple[list[dict[str, Any]], Path]) \
        -> None:
    results, _ = ranks
    one = bn_step(bn_net(), bn_batch())
    for result in results:
        got = result["batchnorm"]
        for a, b in zip(got["out"], one["out"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for name, grad in one["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-9, atol=1e-12, msg=name)
        for name, value in one["state"].items():
            torch.testing.assert_close(got["state"][name], value, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("alignment", ["z", "cls_coral"])
def test_a_cae_step_has_the_losses_and_gradients_of_one_process(ranks: tuple[list[dict[str, Any]], Path],
                                                                alignment: str) -> None:
    """Masking noise, the SSIM pass on the leading rows, domain means and covariances, batch norms:
    in float64, every process's gradient equals one process's to rounding."""
    results, _ = ranks
    one = cae_step(alignment)
    assert one["losses"]["mmd"] > 0 and len(one["grads"]) > 20
    for result in results:
        got = result["cae_step"][alignment]
        assert got["losses"] == pytest.approx(one["losses"], rel=1e-6)
        assert got["grads"].keys() == one["grads"].keys()
        for name, grad in one["grads"].items():  # the token MSE is taken in float32
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-8, msg=name)
        for name, value in one["buffers"].items():
            torch.testing.assert_close(got["buffers"][name], value, rtol=1e-9, atol=1e-12, msg=name)


def test_the_cae_stage_trains_to_the_weights_one_process_reaches(ranks: tuple[list[dict[str, Any]], Path]) -> None:
    """Four float32 AdamW steps (CLS alignment): the losses agree to rounding; Adam's normalised steps let float32
    rounding move a weight by up to a few learning rates (1e-3 each), against weights that moved
    far more."""
    results, _ = ranks
    one = cae_run("cls_coral")
    start_state = tiny_cae().state_dict()
    floats = [k for k, v in one["state"].items() if v.is_floating_point()]
    moved = max((one["state"][k] - start_state[k]).abs().max().item() for k in floats)
    assert moved > 0.05
    for result in results:
        got = result["cae"]
        for loss, values in one["history"].items():
            assert got["history"][loss] == pytest.approx(values, rel=1e-4, abs=1e-6), loss
        for name in floats:
            torch.testing.assert_close(got["state"][name], one["state"][name], rtol=0, atol=1e-2, msg=name)
        assert torch.equal(got["state"]["image_decoder.layers.1.num_batches_tracked"],
                           one["state"]["image_decoder.layers.1.num_batches_tracked"])


def test_sharded_encoding_gathers_every_cell_in_order_on_every_process(ranks: tuple[list[dict[str, Any]], Path]) \
        -> None:
    results, _ = ranks
    domain = sample_domain()
    one = encode_cells(domain, slice(0, len(domain.samples)))
    for result in results:
        got = result["encoded"]
        assert got.domain == "pbc" and got.names == one.names and got.counts == one.counts
        torch.testing.assert_close(got.rows, one.rows, rtol=0, atol=0)


def test_rank_zero_alone_writes_and_the_others_read_what_it_wrote(ranks: tuple[list[dict[str, Any]], Path]) -> None:
    results, folder = ranks
    assert (folder / "written.txt").read_text() == "0\n"
    assert [r["writes"] for r in results] == ["wrote", "0\n"]


def test_a_failed_write_stops_every_process_with_one_sentence(ranks: tuple[list[dict[str, Any]], Path]) -> None:
    results, _ = ranks
    assert results[0]["failure"] == "ArtifactError: the disk is full"
    assert results[1]["failure"].startswith("ConfigError: the main process (rank 0) could not write its files")


def test_a_batch_smaller_than_the_number_of_processes_says_how_many_to_start(ranks: tuple[list[dict[str, Any]], Path]) \
        -> None:
    results, _ = ranks
    for result in results:
        assert "a batch of the data loader of 1 rows cannot be spread over 2 processes: start at most 1" \
            in result["too_few_rows"]


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--backend", "nccl", "--device", "cpu"], {}, "the nccl backend needs CUDA GPUs"),
    (["--device", "cpu"], {"WORLD_SIZE": "2", "RANK": "1"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
])
def test_dorl_train_refuses_a_bad_setup_in_one_sentence(args: list[str], env: dict[str, str], message: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from dorl.commands.train import train

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = typer.Typer()
    app.command()(train)
    result = CliRunner().invoke(app, ["-d", f"pbc={SAMPLE_PBC}", "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
