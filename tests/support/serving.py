"""Test helpers for `dorl serve`: run it in a thread on a free loopback port, and NVIDIA's client for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@contextmanager
def running(artifact: Path, **options: Any) -> Iterator[Any]:
    """`dorl serve` in a thread of this process, on a free loopback port; drained and stopped on exit."""
    from dorl.serve.config import ServeConfig
    from dorl.serve.server import Server

    server = Server(artifact, ServeConfig(port=0, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop within 30 s"


def client_for(server: Any, concurrency: int = 1, timeout_s: float = 60.0) -> Any:
    """NVIDIA's own KServe v2 HTTP client (tritonclient), pointed at `server`."""
    http = pytest.importorskip("tritonclient.http", reason="the tests drive the server with tritonclient[http]")
    return http.InferenceServerClient(server.url.removeprefix("http://"), concurrency=concurrency,
                                      connection_timeout=timeout_s, network_timeout=timeout_s)


def infer_input(images: Any, binary: bool = True) -> Any:
    """The `images` input of a v2 request, built by tritonclient."""
    from tritonclient.http import InferInput

    tensor = InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor
