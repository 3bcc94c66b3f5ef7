"""Peak memory of a benchmark configuration: host RSS, and GPU memory where a GPU API is present.

The harness runs each configuration in a fresh process, so the process's lifetime peak
(`getrusage().ru_maxrss`) is that configuration's peak (interpreter and imports included;
`baseline` says how much of it was there before loading). Run in-process, a sampling thread
reading /proc/self/statm gives the peak since it started, which an earlier, larger
configuration cannot pollute.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is Python 3.11+; JetPack 6 runs 3.10, where this never imports
    from typing_extensions import Self

MB = 1024 * 1024


def current_rss() -> int | None:
    """Resident set size of this process in bytes (None where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def lifetime_peak_rss() -> int:
    """The largest RSS this process has had, in bytes (ru_maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class RssSampler:
    """Peak RSS while the `with` block runs, sampled by a background thread.

    Short spikes between two samples are missed; `interval_s` sets the trade-off.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = current_rss() or 0
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss() or 0)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss() or 0)


def gpu_memory() -> dict[str, Any]:
    """Peak GPU memory of this process where torch.cuda or cuda-python can tell, else a reason.

    Returns:
        {"peak_mb": float | None, "source": str} where source names the API or why there is none.
    """
    torch = sys.modules.get("torch")  # only when the configuration already imported it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_mb": torch.cuda.max_memory_allocated() / MB, "source": "torch.cuda.max_memory_allocated"}
    cudart = sys.modules.get("cuda.bindings.runtime")  # the TensorRT runner's CUDA binding
    if cudart is not None and (info := cudart.cudaMemGetInfo())[0] == cudart.cudaError_t.cudaSuccess:
        return {"peak_mb": (info[2] - info[1]) / MB, "source": "cudaMemGetInfo (device-wide in use, at the end)"}
    return {"peak_mb": None, "source": "no GPU in use by this configuration"}


def memory_summary(baseline: int, sampler: RssSampler | None) -> dict[str, Any]:
    """The memory fields of a configuration's result, in MB.

    Args:
        baseline: RSS in bytes after imports, before the artifact was loaded.
        sampler: the in-process sampler, or None when running in a fresh process (lifetime peak).
    """
    peak = sampler.peak if sampler is not None else lifetime_peak_rss()
    return {
        "peak_rss_mb": peak / MB,
        "baseline_rss_mb": baseline / MB,
        "load_and_run_mb": max(peak - baseline, 0) / MB,
        "rss_method": "sampled /proc/self/statm" if sampler is not None else "fresh process, getrusage ru_maxrss",
        "gpu": gpu_memory(),
    }
