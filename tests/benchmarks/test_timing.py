"""trtexec's percentile and median definitions on known arrays, and the timing loop's bookkeeping."""

from __future__ import annotations

import math

import pytest

from dorl.benchmarks.timing import LatencyStats, throughput, time_calls, trtexec_median, trtexec_percentile

ONE_TO_HUNDRED = [float(v) for v in range(100, 0, -1)]  # unsorted on purpose


@pytest.mark.parametrize(
    ("percentile", "expected"),
    [
        # index = max(n - 1 - int(float32(1 - p/100) * n), 0) on the ascending list 1..100
        (90.0, 90.0),  # exclude int(10.0000024) = 10 -> index 89
        (95.0, 95.0),  # exclude int(5.0000012) = 5 -> index 94
        (99.0, 100.0),  # exclude int(0.99999905) = 0 -> index 99: float32 makes p99 of 100 the maximum
        (50.0, 50.0),  # exclude 50 -> index 49 (not the median's 50.5)
        (100.0, 100.0),
        (0.0, 1.0),  # exclude 100 -> max(-1, 0) = 0
    ],
)
def test_percentile_matches_trtexec_on_one_to_hundred(percentile: float, expected: float) -> None:
    assert trtexec_percentile(percentile, ONE_TO_HUNDRED) == expected


def test_percentile_on_ten_values_takes_no_interpolation() -> None:
    times = [3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 10.0, 6.0]
    assert trtexec_percentile(90.0, times) == 9.0  # exclude int(1.0000002) = 1 -> index 8
    assert trtexec_percentile(99.0, times) == 10.0  # exclude 0
    assert trtexec_percentile(75.0, times) == 8.0  # exclude int(2.5) = 2 -> index 7


def test_median_is_middle_or_mean_of_middles() -> None:
    assert trtexec_median([3.0, 1.0, 2.0]) == 2.0
    assert trtexec_median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert trtexec_median(ONE_TO_HUNDRED) == 50.5


def test_empty_and_out_of_range() -> None:
    assert math.isinf(trtexec_percentile(90.0, []))
    assert math.isinf(trtexec_median([]))
    with pytest.raises(ValueError, match="percentile"):
        trtexec_percentile(101.0, [1.0])
    with pytest.raises(ValueError, match="no timings"):
        LatencyStats.from_times([])


def test_latency_stats_fields() -> None:
    stats = LatencyStats.from_times(ONE_TO_HUNDRED)
    assert (stats.count, stats.min, stats.max, stats.mean) == (100, 1.0, 100.0, 50.5)
    assert (stats.p50, stats.p90, stats.p95, stats.p99) == (50.5, 90.0, 95.0, 100.0)
    assert set(stats.to_dict()) == {"count", "mean", "min", "max", "p50", "p90", "p95", "p99", "std"}


def test_time_calls_warms_up_then_times_each_call() -> None:
    calls: list[int] = []
    times = time_calls(lambda: calls.append(1), iterations=4, warmup=2)
    assert len(calls) == 6 and len(times) == 4
    assert all(t >= 0.0 for t in times)
    with pytest.raises(ValueError):
        time_calls(lambda: None, iterations=0, warmup=0)


def test_throughput_is_cells_over_total_time() -> None:
    assert throughput(4, [100.0, 100.0]) == pytest.approx(40.0)  # 8 cells in 0.2 s
