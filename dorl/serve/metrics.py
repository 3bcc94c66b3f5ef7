"""Prometheus text-format metrics of the service: requests, batches, queue depth, latency.

A handful of counters, one gauge and histograms, kept behind one lock (the event loop and the
inference thread both update them) and rendered in the Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative buckets, sum and count, per label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], list[float]] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                row[i] += 1
        row[-2] += value
        row[-1] += 1

    def lines(self, name: str, label_names: Sequence[str]) -> list[str]:
        out = []
        for labels, row in sorted(self.series.items()):
            for bound, count in zip((*self.buckets, math.inf), (*row[:-2], row[-1])):
                le = _labels((*label_names, "le"), (*labels, _number(bound)))
                out.append(f"{name}_bucket{le} {_number(count)}")
            out.append(f"{name}_sum{_labels(label_names, labels)} {_number(row[-2])}")
            out.append(f"{name}_count{_labels(label_names, labels)} {_number(row[-1])}")
        return out


class ServiceMetrics:
    """What `/metrics` reports."""

    def __init__(self, max_batch: int, queue_depth: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._queue_depth = queue_depth
        self.requests: dict[tuple[str, str], float] = {}  # (endpoint, status) -> count
        self.rejected: dict[tuple[str], float] = {}  # (reason,) -> count
        self.latency = Histogram(LATENCY_BUCKETS)  # by endpoint
        self.batch_size = Histogram([2 ** i for i in range(max(max_batch - 1, 1).bit_length() + 1)])  # by kind
        self.inference = Histogram(LATENCY_BUCKETS)  # by kind
        self.cells = 0.0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, str(status))
            self.requests[key] = self.requests.get(key, 0.0) + 1
            self.latency.observe((endpoint,), seconds)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[(reason,)] = self.rejected.get((reason,), 0.0) + 1

    def batch(self, kind: str, items: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe((kind,), items)
            self.inference.observe((kind,), seconds)
            self.cells += items

    def render(self) -> str:
        """The metrics in Prometheus text format."""
        with self._lock:
            lines = [
                "# HELP dorl_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE dorl_requests_total counter",
                *(f"dorl_requests_total{_labels(('endpoint', 'code'), k)} {_number(v)}"
                  for k, v in sorted(self.requests.items())),
                "# HELP dorl_rejected_total Requests refused before inference, by reason.",
                "# TYPE dorl_rejected_total counter",
                *(f"dorl_rejected_total{_labels(('reason',), k)} {_number(v)}" for k, v in sorted(self.rejected.items())),
                "# HELP dorl_queue_depth Requests waiting for the inference thread.",
                "# TYPE dorl_queue_depth gauge",
                f"dorl_queue_depth {self._queue_depth()}",
                "# HELP dorl_cells_total Items (cells) run through the model.",
                "# TYPE dorl_cells_total counter",
                f"dorl_cells_total {_number(self.cells)}",
                "# HELP dorl_batch_size Items per inference batch, by request kind.",
                "# TYPE dorl_batch_size histogram",
                *self.batch_size.lines("dorl_batch_size", ("kind",)),
                "# HELP dorl_inference_seconds Time of one inference batch, by request kind.",
                "# TYPE dorl_inference_seconds histogram",
                *self.inference.lines("dorl_inference_seconds", ("kind",)),
                "# HELP dorl_request_seconds Time from a request's arrival to its answer, by endpoint.",
                "# TYPE dorl_request_seconds histogram",
                *self.latency.lines("dorl_request_seconds", ("endpoint",)),
            ]
        return "\n".join(lines) + "\n"
