"""Overload and timeouts on a model that takes real time per cell: 503 with Retry-After, 504, no crash."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def held(server: Any) -> Iterator[threading.Event]:
    """Hold the inference thread at the model's door until the block ends; yields "a batch is held".

    The real model still runs every request once released: the gate only makes the queue fill
    deterministically, whatever the speed of the machine.
    """
    runner = server.service.analyzer.runner
    infer = runner.infer
    entered, release = threading.Event(), threading.Event()

    def gated(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entered.set()
        release.wait(120)
        return infer(feed)

    runner.infer = gated
    try:
        yield entered
    finally:
        release.set()


def wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def flood(server: Any, requests: int) -> Iterator[list[tuple[int, str | None]]]:
    """`requests` binary infer requests at once, the first held at the model until the block ends.

    Yields the (status, Retry-After) answers as they arrive; on leaving, every request is answered.
    """
    body, length = binary_request(CELL)
    answers: list[tuple[int, str | None]] = []
    threads = [threading.Thread(target=raw_infer, args=(server, body, length, answers)) for _ in range(requests)]
    with held(server) as entered:
        threads[0].start()
        assert entered.wait(60), "the first request never reached the model"
        for t in threads[1:]:
            t.start()
        yield answers
    for t in threads:
        t.join(300)


def test_a_flood_gets_503s_with_retry_after_and_the_server_keeps_serving(slow_artifact: Path) -> None:
    with running(slow_artifact, max_batch=1, max_delay_ms=0, queue_size=2) as server:
        with flood(server, 16) as answers:
            wait_for(lambda: len(answers) == 13 and server.service.batcher.depth == 2, "13 refusals and 2 queued")
            assert all(status == 503 for status, _ in answers)
            client = client_for(server)  # tritonclient sees the same refusal while the queue is full
            with pytest.raises(InferenceServerException) as caught:
                client.infer("dorl", [infer_input(CELL)])
            assert caught.value.status() == "503" and "retry later" in caught.value.message()
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * 3 + [503] * 13  # one running + two queued, the rest refused
        assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 503)
        metrics = server.service.metrics
        assert metrics.rejected[("queue_full",)] == 14  # the 13 raw requests and tritonclient's
        assert metrics.requests[("infer", "503")] == 14
        assert client.is_server_ready()
        assert client.infer("dorl", [infer_input(CELL)]).as_numpy("probs").shape == (1, 5)


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
    body, _ = binary_request(CELL)
    with running(slow_artifact, max_batch=1, max_delay_ms=0, queue_size=16, max_request_bytes=len(body),
                 max_inflight_bytes=2 * len(body)) as server:
        with flood(server, 8) as answers:
            wait_for(lambda: len(answers) == 6, "6 refusals")
            assert server.endpoints.held_bytes == 2 * len(body)  # the running body and the queued one
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * 2 + [503] * 6  # at most two bodies held: the rest are refused, not queued
        assert server.service.metrics.rejected[("memory",)] == 6
        assert server.endpoints.held_bytes == 0
