"""The CUDA runtime calls of the TensorRT code, through cuda-python (`cuda-bindings`).

NVIDIA's TensorRT samples (since 10.13) and its tools use cuda-python; pycuda has no CUDA-graph
capture API in any release. Every call goes through `check`, which turns a CUDA error code into a
RunnerError naming the call. The module imports without a GPU or a driver: `cuda.bindings` is
imported on first use, and its symbols exist without a driver (a test checks that every
`cudart.<name>` this package uses is in the installed binding).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from dorl.errors import DorlError, MissingDependencyError

CUDA_HINT = "`pip install cuda-python` (on a Jetson: the release matching JetPack's CUDA, e.g. 12.6 for JetPack 6)"


class CudaError(DorlError):
    """A CUDA runtime call failed."""


@cache
def runtime() -> Any:
    """`cuda.bindings.runtime` (cuda-python ≥ 12.6.1), or MissingDependencyError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise MissingDependencyError(f"the TensorRT path needs cuda-python, which is not installed: {CUDA_HINT}.") from exc
    return cudart


def check(result: Any, what: str) -> Any:
    """The value(s) of a cuda-python call `(error, *values)`, or CudaError naming `what`."""
    cudart = runtime()
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        text = cudart.cudaGetErrorString(error)[1]
        raise CudaError(f"CUDA call {what} failed: {_str(name)} ({_str(text)}).")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@cache
def device_description(device: int = 0) -> tuple[str, str, int, int]:
    """Name, compute capability ("8.7"), streaming-multiprocessor count and total memory (bytes) of a GPU."""
    cudart = runtime()
    props = check(cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = _str(props.name).split("\x00", 1)[0].strip()
    return name, f"{props.major}.{props.minor}", int(props.multiProcessorCount), int(props.totalGlobalMem)


def set_device(device: int) -> None:
    """Make `device` current for this thread (the CUDA runtime keeps one current device per thread)."""
    cudart = runtime()
    check(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
