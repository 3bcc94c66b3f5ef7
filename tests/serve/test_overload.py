"""Overload and timeouts on a model that takes real time per cell: 503 with Retry-After, 504, no crash."""

from __future__ import annotations

import http.client
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import client_for, infer_input, running

pytest.importorskip("tritonclient.http", reason="the tests drive the server with tritonclient[http]")
from tritonclient.utils import InferenceServerException

CELL = np.full((1, 224, 224, 3), 128, np.uint8)


def raw_infer(server: Any, body: bytes, length: int, answers: list[tuple[int, str | None]]) -> None:
    """One binary infer request with http.client; appends (status, Retry-After)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=120)
    try:
        connection.request("POST", "/v2/models/dorl/infer", body, {"Inference-Header-Content-Length": str(length)})
        response = connection.getresponse()
        response.read()
        answers.append((response.status, response.getheader("Retry-After")))
    finally:
        connection.close()


def binary_request(images: np.ndarray) -> tuple[bytes, int]:
    from tritonclient.http._utils import _get_inference_request

    body, length = _get_inference_request([infer_input(images)], "", None, 0, False, False, 0, None, None)
    return body, length


def test_a_flood_gets_503s_with_retry_after_and_the_server_keeps_serving(slow_artifact: Path) -> None:
    with running(slow_artifact, max_batch=1, max_delay_ms=0, queue_size=2) as server:
        body, length = binary_request(CELL)
        answers: list[tuple[int, str | None]] = []
        threads = [threading.Thread(target=raw_infer, args=(server, body, length, answers)) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        statuses = sorted(status for status, _ in answers)
        assert len(answers) == 16 and set(statuses) <= {200, 503}
        assert statuses.count(200) >= 3 and statuses.count(503) >= 1  # one running + two queued at least
        assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 503)
        metrics = server.service.metrics
        assert metrics.rejected[("queue_full",)] == statuses.count(503)
        assert metrics.requests[("infer", "503")] == statuses.count(503)
        client = client_for(server)
        assert client.is_server_ready()
        assert client.infer("dorl", [infer_input(CELL)]).as_numpy("probs").shape == (1, 5)
        with pytest.raises(InferenceServerException) as caught:  # tritonclient sees the same refusal
            flood = client_for(server, concurrency=16)
            pending = [flood.async_infer("dorl", [infer_input(CELL)]) for _ in range(16)]
            [p.get_result() for p in pending]
        assert caught.value.status() == "503" and "retry later" in caught.value.message()


def test_a_request_past_its_timeout_gets_504_and_the_next_one_is_served(slow_artifact: Path) -> None:
    with running(slow_artifact, max_batch=1, max_delay_ms=0) as server:
        client = client_for(server)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("dorl", [infer_input(CELL)], timeout=1000)  # v2 timeout: 1 ms, in microseconds
        assert caught.value.status() == "504" and "no answer within 0.001 s" in caught.value.message()
        assert client.infer("dorl", [infer_input(CELL)]).as_numpy("probs").shape == (1, 5)
        assert server.service.metrics.rejected[("timeout",)] == 1


def test_the_servers_own_timeout_applies(slow_artifact: Path) -> None:
    with running(slow_artifact, max_batch=1, max_delay_ms=0, timeout_s=0.002) as server:
        client = client_for(server)
        with pytest.raises(InferenceServerException, match="raise --timeout"):
            client.infer("dorl", [infer_input(CELL)])
        assert client.is_server_live()


def test_request_bodies_in_memory_are_bounded(slow_artifact: Path) -> None:
    body, length = binary_request(CELL)
    with running(slow_artifact, max_batch=1, max_delay_ms=0, queue_size=16, max_request_bytes=len(body),
                 max_inflight_bytes=2 * len(body)) as server:
        answers: list[tuple[int, str | None]] = []
        threads = [threading.Thread(target=raw_infer, args=(server, body, length, answers)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        statuses = sorted(status for status, _ in answers)
        assert len(answers) == 8 and set(statuses) == {200, 503}  # at most two bodies held: the rest wait outside
        assert server.service.metrics.rejected[("memory",)] == statuses.count(503)
        assert server.endpoints.held_bytes == 0
