"""/metrics text, read back with the Prometheus project's own parser."""

from __future__ import annotations

import pytest

from dorl.serve.metrics import ServiceMetrics

parser = pytest.importorskip("prometheus_client.parser", reason="the format is checked with prometheus_client")


def families(text: str) -> dict:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def value(family, name: str, **labels: str) -> float:
    return next(s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_counters_histograms_and_gauge_parse_and_add_up() -> None:
    metrics = ServiceMetrics(max_batch=8, queue_depth=lambda: 3)
    for items in (1, 3, 8):
        metrics.batch("tensor", items, 0.02 * items)
    metrics.request("infer", 200, 0.004)
    metrics.request("infer", 200, 0.3)
    metrics.request("infer", 503, 0.001)
    metrics.reject("queue_full")
    found = families(metrics.render())
    assert value(found["dorl_requests"], "dorl_requests_total", endpoint="infer", code="200") == 2
    assert value(found["dorl_requests"], "dorl_requests_total", endpoint="infer", code="503") == 1
    assert value(found["dorl_rejected"], "dorl_rejected_total", reason="queue_full") == 1
    assert value(found["dorl_queue_depth"], "dorl_queue_depth") == 3
    assert value(found["dorl_cells"], "dorl_cells_total") == 12
    batch = found["dorl_batch_size"]
    assert value(batch, "dorl_batch_size_count", kind="tensor") == 3
    assert value(batch, "dorl_batch_size_sum", kind="tensor") == 12
    assert [value(batch, "dorl_batch_size_bucket", kind="tensor", le=le) for le in ("1", "2", "4", "8", "+Inf")] \
        == [1, 1, 2, 3, 3]
    latency = found["dorl_request_seconds"]
    assert value(latency, "dorl_request_seconds_bucket", endpoint="infer", le="0.005") == 2
    assert value(latency, "dorl_request_seconds_count", endpoint="infer") == 3
