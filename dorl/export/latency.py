"""How fast a graph runs in ONNX Runtime on the CPU, as the INT8 manifests record it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

LATENCY_BATCH = 8


def latency_ms(path: Path, images: np.ndarray, batch: int = LATENCY_BATCH, repeats: int = 3,
               unfused: bool = False) -> float:
    """Median milliseconds per image of one batch in ONNX Runtime (CPU), after a warm-up run; `unfused`
    (Q/DQ graphs): in the session dorl's runtime runs them in, with the Q/DQ pairs left unfused."""
    from dorl.export.int8_qdq import tensorrt_session
    from dorl.export.parity import cpu_session

    session = tensorrt_session(path) if unfused else cpu_session(path)
    feed = {session.get_inputs()[0].name: images[:batch]}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0 / len(feed[next(iter(feed))]))
