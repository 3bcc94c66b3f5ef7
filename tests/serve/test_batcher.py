"""The dynamic batcher: batches formed, order kept, bounded queue, failures isolated, drain on stop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from dorl.serve.batcher import Batcher, Job, QueueFull, Stopped


class Recorder:
    """A batch runner that doubles each item and records the batches it was given (by thread)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[list[int]]] = []
        self.threads: set[str] = set()
        self.gate = gate

    def __call__(self, jobs: list[Job]) -> list[list[int]]:
        if self.gate is not None:
            self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append([list(job.items) for job in jobs])
        if any(item < 0 for job in jobs for item in job.items):
            raise ValueError("negative item")
        return [[2 * item for item in job.items] for job in jobs]


def wait_taken(batcher: Batcher) -> None:
    """Wait until the worker has taken every queued job (and is held by the runner's gate)."""
    deadline = time.monotonic() + 10
    while batcher.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def started(runner: Recorder, max_batch: int = 4, delay: float = 0.2, queue_size: int = 16, **kinds) -> Batcher:
    batcher = Batcher({"a": runner, **kinds}, max_batch, delay, queue_size)
    batcher.start(10)
    return batcher


def test_jobs_waiting_together_form_one_batch_and_get_their_own_results() -> None:
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = started(runner, max_batch=4, delay=0.0)
    first = batcher.submit(Job("a", [1]))  # occupies the worker until the gate opens
    wait_taken(batcher)
    futures = [batcher.submit(Job("a", [i, i + 10])) for i in (2, 3, 4)]
    gate.set()
    assert first.result(10) == [2]
    assert [f.result(10) for f in futures] == [[4, 24], [6, 26], [8, 28]]
    batcher.stop(10)
    # 1 alone; then 2 jobs of 2 items fill the batch of 4; the third job starts the next batch
    assert runner.batches == [[[1]], [[2, 12], [3, 13]], [[4, 14]]]
    assert runner.threads == {"dorl-inference"}


def test_the_first_job_waits_up_to_the_delay_for_company() -> None:
    runner = Recorder()
    batcher = started(runner, max_batch=8, delay=0.5)
    futures = [batcher.submit(Job("a", [i])) for i in range(3)]
    assert [f.result(10) for f in futures] == [[0], [2], [4]]
    batcher.stop(10)
    assert runner.batches == [[[0], [1], [2]]]


def test_jobs_of_another_kind_go_to_their_own_batch() -> None:
    gate = threading.Event()
    a, b = Recorder(gate), Recorder()
    batcher = started(a, delay=0.0, b=b)
    batcher.submit(Job("a", [0]))
    wait_taken(batcher)
    futures = [batcher.submit(Job(kind, [i])) for i, kind in enumerate("aba", start=1)]
    gate.set()
    assert [f.result(10) for f in futures] == [[2], [4], [6]]
    batcher.stop(10)
    assert a.batches == [[[0]], [[1]], [[3]]] and b.batches == [[[2]]]


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    gate = threading.Event()
    batcher = started(Recorder(gate), max_batch=1, delay=0.0, queue_size=2)
    running = batcher.submit(Job("a", [1]))
    wait_taken(batcher)  # the worker holds job 1; the queue is empty
    waiting = [batcher.submit(Job("a", [2])), batcher.submit(Job("a", [3]))]
    assert batcher.depth == 2
    with pytest.raises(QueueFull, match="2 requests are already waiting: retry later"):
        batcher.submit(Job("a", [4]))
    gate.set()
    assert [f.result(10) for f in (running, *waiting)] == [[2], [4], [6]]
    assert batcher.submit(Job("a", [5])).result(10) == [10]
    batcher.stop(10)


def test_one_failing_job_does_not_fail_the_others_of_its_batch() -> None:
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = started(runner, max_batch=4, delay=0.0)
    batcher.submit(Job("a", [0]))
    wait_taken(batcher)
    good, bad, other = (batcher.submit(Job("a", items)) for items in ([1], [-1], [2]))
    gate.set()
    assert good.result(10) == [2] and other.result(10) == [4]
    with pytest.raises(ValueError, match="negative item"):
        bad.result(10)
    batcher.stop(10)
    assert runner.batches[1] == [[1], [-1], [2]]  # the batch failed, then each job ran alone
    assert runner.batches[2:] == [[[1]], [[-1]], [[2]]]


def test_a_cancelled_job_is_skipped() -> None:
    gate = threading.Event()
    runner = Recorder(gate)
    batcher = started(runner, max_batch=1, delay=0.0)
    batcher.submit(Job("a", [1]))
    wait_taken(batcher)
    cancelled = batcher.submit(Job("a", [2]))
    assert cancelled.cancel()
    kept = batcher.submit(Job("a", [3]))
    gate.set()
    assert kept.result(10) == [6]
    with pytest.raises(CancelledError):
        cancelled.result(0)
    batcher.stop(10)
    assert [[2]] not in runner.batches


def test_stop_finishes_queued_jobs_then_refuses_new_ones() -> None:
    gate = threading.Event()
    batcher = started(Recorder(gate), max_batch=1, delay=0.0)
    futures = [batcher.submit(Job("a", [i])) for i in range(3)]
    threading.Timer(0.2, gate.set).start()
    batcher.stop(10)
    assert [f.result(0) for f in futures] == [[0], [2], [4]]
    with pytest.raises(Stopped, match="shutting down"):
        batcher.submit(Job("a", [9]))


def test_setup_errors_reach_the_caller_of_start() -> None:
    def broken() -> None:
        raise RuntimeError("no model here")

    batcher = Batcher({"a": Recorder()}, 1, 0.0, 1, setup=broken)
    with pytest.raises(RuntimeError, match="no model here"):
        batcher.start(10)
    with pytest.raises(Stopped):
        batcher.submit(Job("a", [1]))
