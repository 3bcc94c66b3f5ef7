"""Warm-up then timed runs, summarised the way trtexec summarises them.

trtexec (TensorRT `samples/common/sampleReporting.cpp`) sorts the timings ascending and takes
percentile p as element `max(n - 1 - exclude, 0)` with `exclude = int((1 - p / 100) * n)`
computed in single precision: no interpolation, and with 100 timings p99 is the maximum
(float32 rounds 1 - 0.99 just below 0.01). Its median is the middle element, or the mean of the
two middle ones. `p50` below is that median, as trtexec prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES = (90.0, 95.0, 99.0)  # trtexec's default --percentile list


def trtexec_percentile(percentile: float, timings: Sequence[float]) -> float:
    """Percentile of timings exactly as trtexec's `findPercentile` computes it.

    Args:
        percentile: in [0, 100].
        timings: the measurements in any order (sorted here).

    Returns:
        The chosen measurement; infinity for no timings, as trtexec returns.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    ordered = sorted(timings)
    if not ordered:
        return float("inf")
    count = len(ordered)
    share = np.float32(1) - np.float32(percentile) / np.float32(100)  # float arithmetic, as in C++
    exclude = int(share * np.float32(count))
    return float(ordered[max(count - 1 - exclude, 0)])


def trtexec_median(timings: Sequence[float]) -> float:
    """Median as trtexec's `findMedian`: the middle element, or the mean of the two middle ones."""
    ordered = sorted(timings)
    if not ordered:
        return float("inf")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one configuration's timed runs, in milliseconds per batch."""

    count: int
    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    std: float

    @classmethod
    def from_times(cls, times_ms: Sequence[float]) -> LatencyStats:
        """Summarise timings given in milliseconds (at least one)."""
        if not times_ms:
            raise ValueError("no timings to summarise: run at least one timed iteration.")
        array = np.asarray(times_ms, dtype=np.float64)
        p90, p95, p99 = (trtexec_percentile(p, times_ms) for p in PERCENTILES)
        return cls(count=len(array), mean=float(array.mean()), min=float(array.min()), max=float(array.max()),
                   p50=trtexec_median(times_ms), p90=p90, p95=p95, p99=p99, std=float(array.std()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(run: Callable[[], Any], iterations: int, warmup: int) -> list[float]:
    """Call `run` `warmup` times untimed, then `iterations` times, each timed on its own.

    Args:
        run: one inference call; it must block until its results are ready (synchronise a GPU
            inside it), as nanoGPT's benchmark does before reading the clock.
        iterations: timed calls (at least 1).
        warmup: untimed calls first (allocator, kernel selection, caches).

    Returns:
        Wall-clock milliseconds of each timed call.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def throughput(batch: int, times_ms: Sequence[float]) -> float:
    """Cells per second over the timed runs: cells processed / total time."""
    total_s = float(np.sum(times_ms)) / 1e3
    return batch * len(times_ms) / total_s if total_s > 0 else float("inf")
