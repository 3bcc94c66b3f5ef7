"""The options of one `dorl serve` process, validated before anything is loaded."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from dorl.contract import TTA_MODES
from dorl.errors import ConfigError

MASK_FORMATS = ("png", "rle", "none")
# A model name travels in URLs and is a Triton model directory: keep it to safe characters.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOPBACK_NAMES = ("localhost",)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": addresses other machines cannot reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_model_name(name: str) -> str:
    """Return `name` if it is usable in URLs and as a Triton model directory, else raise ConfigError."""
    _check(bool(MODEL_NAME.match(name)),
           f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit.")
    return name


@dataclass(frozen=True)
class ServeConfig:
    """How the service listens, batches, bounds and times out its work."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; loopback unless allow_remote"})
    port: int = field(default=8000, metadata={"help": "TCP port; 0 picks a free one"})
    allow_remote: bool = field(default=False, metadata={"help": "permit a non-loopback host"})
    model_name: str = field(default="dorl", metadata={"help": "the name clients address (/v2/models/<name>)"})
    max_batch: int | None = field(default=None, metadata={"help": "cells per inference; None: the artifact's max or 8"})
    max_delay_ms: float = field(default=5.0, metadata={"help": "how long a batch waits for more requests"})
    queue_size: int = field(default=64, metadata={"help": "requests waiting for inference before 503"})
    max_request_bytes: int = field(default=16 << 20, metadata={"help": "largest request body (after decompression)"})
    max_inflight_bytes: int = field(default=256 << 20, metadata={"help": "request bodies held at once, all requests"})
    timeout_s: float = field(default=30.0, metadata={"help": "longest a request may wait for its answer"})
    drain_s: float = field(default=30.0, metadata={"help": "on SIGTERM, how long in-flight requests may finish"})
    threshold: float = field(default=0.5, metadata={"help": "top probability below which a cell is uncertain"})
    mask_format: str = field(default="png", metadata={"help": f"default mask encoding of /analyze: {MASK_FORMATS}"})
    backend: str = field(default="auto", metadata={"help": "auto, onnxruntime or tensorrt"})
    threads: int | None = field(default=None, metadata={"help": "ONNX Runtime intra-op threads"})
    max_connections: int = field(default=256, metadata={"help": "open connections beyond which uvicorn answers 503"})
    tta: str | None = field(default=None, metadata={
        "help": "test-time augmentation of /analyze: none or flips; None: what the artifact records"})

    def __post_init__(self) -> None:
        check_model_name(self.model_name)
        _check(0 <= self.port <= 65535, f"port must be within 0..65535, got {self.port}.")
        _check(self.allow_remote or is_loopback(self.host),
               f"binding to {self.host} would expose the analyzer to the network: add --allow-remote to confirm, "
               "or keep the default 127.0.0.1.")
        _check(self.max_batch is None or self.max_batch >= 1, f"max batch must be at least 1, got {self.max_batch}.")
        _check(0.0 <= self.max_delay_ms <= 1000.0, f"max delay must be within 0..1000 ms, got {self.max_delay_ms}.")
        _check(self.queue_size >= 1, f"queue size must be at least 1, got {self.queue_size}.")
        _check(self.max_request_bytes >= 1024, f"max request size must be at least 1024 bytes, got {self.max_request_bytes}.")
        _check(self.max_inflight_bytes >= self.max_request_bytes,
               f"the in-flight budget ({self.max_inflight_bytes} bytes) must hold at least one request of "
               f"{self.max_request_bytes} bytes.")
        _check(self.timeout_s > 0, f"timeout must be positive, got {self.timeout_s} s.")
        _check(self.drain_s >= 0, f"drain time must not be negative, got {self.drain_s} s.")
        _check(0.0 <= self.threshold <= 1.0, f"threshold must be within [0, 1], got {self.threshold}.")
        _check(self.mask_format in MASK_FORMATS, f"mask format {self.mask_format!r} is not one of {', '.join(MASK_FORMATS)}.")
        _check(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}.")
        _check(self.tta is None or self.tta in TTA_MODES, f"test-time augmentation {self.tta!r} is not one of {', '.join(TTA_MODES)}.")
        _check(self.max_connections >= self.queue_size,
               f"max connections ({self.max_connections}) must be at least the queue size ({self.queue_size}).")
