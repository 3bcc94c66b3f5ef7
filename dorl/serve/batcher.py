"""Dynamic batching: requests from many connections, inference in one thread.

Requests are `Job`s put on a bounded queue; a full queue is refused at once (`QueueFull`), so
memory stays bounded under overload. One worker thread owns the model: it takes the first
waiting job, gathers more for up to `max_delay_s` or until `max_batch` items, runs them as one
batch and hands each job its slice of the result through a `concurrent.futures.Future`. Jobs of
another kind, or that would overflow the batch, start the next batch. If a batch fails, each of
its jobs is run alone, so one bad request never fails the others.

The model is reached only through the `run` callable given per job kind, always from the worker
thread (TensorRT and CUDA contexts belong to the thread that made them).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from dorl.errors import DorlError


class QueueFull(DorlError):
    """The queue of waiting requests is full: the caller should answer 503 and retry later."""


class Stopped(DorlError):
    """The batcher is draining or stopped and takes no new requests."""


@dataclass(eq=False)
class Job:
    """One request's items of one kind, waiting for inference."""

    kind: str  # which runner handles it (e.g. "tensor", "cell")
    items: Any  # a sequence of per-item payloads, or an array whose first axis is the batch
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.items)


# runner(list of jobs of one kind) -> one result per job, in order
BatchRunner = Callable[[list[Job]], list[Any]]
_STOP = object()


class Batcher:
    """A bounded queue in front of one inference thread."""

    def __init__(self, runners: dict[str, BatchRunner], max_batch: int, max_delay_s: float, queue_size: int,
                 on_batch: Callable[[str, int, float], None] | None = None,
                 setup: Callable[[], None] | None = None, teardown: Callable[[], None] | None = None) -> None:
        """Args:
            runners: per job kind, a function running a batch of jobs (called in the worker thread).
            max_batch: the most items in one batch.
            max_delay_s: how long the first job of a batch waits for more.
            queue_size: jobs that may wait; one more is refused with QueueFull.
            on_batch: told (kind, items, seconds) after each batch, for metrics.
            setup, teardown: run in the worker thread before the first and after the last batch
                (activate and free the model there).
        """
        self.runners, self.max_batch, self.max_delay_s = runners, max_batch, max_delay_s
        self.on_batch, self.setup, self.teardown = on_batch, setup, teardown
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._carry: Job | None = None
        self._accepting = False
        self._thread = threading.Thread(target=self._work, name="dorl-inference", daemon=True)
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    # -- lifecycle (caller's thread) ----------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> None:
        """Start the worker and wait until `setup` has run; re-raise its error."""
        self._thread.start()
        self._started.wait(timeout_s)
        if self._startup_error is not None:
            raise self._startup_error
        self._accepting = True

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, run `teardown`, and end the worker."""
        self._accepting = False
        if self._thread.is_alive():
            self._queue.put(_STOP)  # blocks only while the queue is full, which the worker is emptying
            self._thread.join(timeout_s)

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the batch being run)."""
        return self._queue.qsize() + (self._carry is not None)

    def submit(self, job: Job) -> Future:
        """Queue a job; its future gets the job's result or exception.

        Raises:
            QueueFull: too many jobs are waiting.
            Stopped: the batcher is not running.
        """
        if job.kind not in self.runners:
            raise ValueError(f"no runner for jobs of kind {job.kind!r}")
        if not 1 <= job.size <= self.max_batch:
            raise ValueError(f"a job must have 1..{self.max_batch} items, got {job.size}")
        if not self._accepting:
            raise Stopped("the server is shutting down and takes no new requests: retry on another instance.")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting: retry later.") from None
        return job.future

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            if self.setup is not None:
                self.setup()
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._startup_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
        finally:
            if self.teardown is not None:
                self.teardown()

    def _take(self, timeout: float | None) -> Any:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _next_batch(self) -> list[Job] | None:
        first = self._take(None)
        if first is _STOP:
            return None
        batch, size = [first], first.size
        deadline = time.monotonic() + self.max_delay_s
        while size < self.max_batch:
            job = self._take(deadline - time.monotonic())
            if job is None:
                break
            if job is _STOP or job.kind != first.kind or size + job.size > self.max_batch:
                self._carry = job  # starts the next batch (or stops the worker after this one)
                break
            batch.append(job)
            size += job.size
        return batch

    def _run(self, batch: list[Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip timed-out jobs
        if not live:
            return
        runner = self.runners[live[0].kind]
        start = time.perf_counter()
        try:
            results = runner(live)
        except Exception as exc:  # noqa: BLE001 - retried job by job; each job gets its own error
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            results = [self._run_alone(runner, job) for job in live]
        if self.on_batch is not None:
            self.on_batch(live[0].kind, sum(job.size for job in live), time.perf_counter() - start)
        for job, result in zip(live, results):
            if isinstance(result, _Failed):
                job.future.set_exception(result.error)
            else:
                job.future.set_result(result)

    @staticmethod
    def _run_alone(runner: BatchRunner, job: Job) -> Any:
        try:
            return runner([job])[0]
        except Exception as exc:  # noqa: BLE001 - handed to that job's future
            return _Failed(exc)


@dataclass(frozen=True)
class _Failed:
    error: Exception
