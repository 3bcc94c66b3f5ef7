"""TensorRT's legacy INT8 entropy calibrator, fed from a calibration set, with its cache on disk.

This is implicit quantization: TensorRT 10 still runs it (deprecated since 10.1), TensorRT 11
removed it. dorl's INT8 artifact is the Q/DQ ONNX graph; this calibrator exists only to build
an INT8 engine from the FP32 graph on TensorRT 10 (or to reuse a calibration cache made so).

The batching and the cache files are plain numpy/file code, tested without TensorRT; the
`IInt8EntropyCalibrator2` subclass is created by `make_entropy_calibrator`, so this module
imports without tensorrt or cuda-python. Its device buffer is cuda-python's, like the runner's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.errors import ConfigError

if TYPE_CHECKING:
    import tensorrt as trt


def fixed_batches(calibration_set: Iterable[dict[str, np.ndarray]], input_name: str,
                  batch_size: int) -> Iterator[np.ndarray]:
    """Re-cut a calibration set into C-contiguous batches of exactly `batch_size` items of one input.

    The calibration profile has one fixed shape, so every batch must have it. Items left over
    after the last full batch are dropped.

    Args:
        calibration_set: feeds keyed by the graph's input names (the runner data contract).
        input_name: the input to calibrate (from the ONNX manifest).
        batch_size: items per batch.

    Returns:
        An iterator of arrays of shape (batch_size, *item_shape).

    Raises:
        ConfigError: a feed lacks the input, or its item shape or dtype changes.
    """
    if batch_size < 1:
        raise ConfigError(f"the calibration batch size must be at least 1, got {batch_size}.")
    pending: list[np.ndarray] = []
    count = 0
    first: np.ndarray | None = None
    for index, feed in enumerate(calibration_set):
        if input_name not in feed:
            raise ConfigError(f"calibration batch {index} has inputs {sorted(feed)} but not {input_name!r}: the "
                              "calibration set must be keyed by the graph's input names.")
        array = np.asarray(feed[input_name])
        if first is None:
            first = array
        elif array.shape[1:] != first.shape[1:] or array.dtype != first.dtype:
            raise ConfigError(f"calibration batch {index} is {array.dtype} {array.shape[1:]} per item, the first was "
                              f"{first.dtype} {first.shape[1:]}: every batch must match the graph input.")
        pending.append(array)
        count += len(array)
        while count >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:batch_size])
            rest = joined[batch_size:]
            pending, count = ([rest] if len(rest) else []), len(rest)


def read_calibration_cache(path: str | Path | None) -> bytes | None:
    """The cache's bytes, or None when there is no (non-empty) cache file: then TensorRT calibrates."""
    if path is None or not Path(path).is_file():
        return None
    data = Path(path).read_bytes()
    return data or None


def write_calibration_cache(path: str | Path | None, data: bytes) -> None:
    """Write the cache TensorRT produced (no-op without a path)."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(bytes(data))


def make_entropy_calibrator(calibration_set: Iterable[dict[str, np.ndarray]], input_name: str, batch_size: int,
                            cache_path: str | Path | None = None) -> trt.IInt8EntropyCalibrator2:
    """An `IInt8EntropyCalibrator2` over a calibration set (TensorRT 10 only).

    The device batch buffer is allocated on the current CUDA device and freed by `release()`
    (the builder calls it after the build). Errors raised while TensorRT pulls batches cannot
    cross its C++ boundary: they are kept in the calibrator's `error` attribute, and the builder
    re-raises them after the build.

    Args:
        calibration_set: feeds keyed by input name; may be empty when `cache_path` holds a cache.
        input_name: the single graph input.
        batch_size: items per calibration batch (the calibration profile's batch).
        cache_path: calibration cache read before and written after calibration.

    Returns:
        The calibrator, to assign to `IBuilderConfig.int8_calibrator`.

    Raises:
        ConfigError: on TensorRT 11, where calibrators are gone.
    """
    from dorl.tensorrt.system import require_cuda, require_tensorrt
    from dorl.tensorrt.versions import tensorrt_features

    require_tensorrt("INT8 calibration")
    import tensorrt as trt

    if not tensorrt_features(trt.__version__).calibrators or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ConfigError(f"TensorRT {trt.__version__} has no INT8 calibrators (removed in TensorRT 11): build the "
                          "INT8 engine from the Q/DQ graph, made with `dorl export <bundle> --precision int8`.")
    require_cuda("INT8 calibration")
    from dorl.tensorrt.cuda import check, runtime

    cudart = runtime()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Copies one fixed-size batch at a time to the GPU for TensorRT's entropy calibration."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = fixed_batches(calibration_set, input_name, batch_size)
            self.device_buffer: Any = None
            self.batches_fed = 0
            self.error: BaseException | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            try:
                if list(names) != [input_name]:
                    raise ConfigError(f"the network asks for inputs {names}; the calibrator feeds [{input_name!r}].")
                batch = next(self.batches, None)
                if batch is None:
                    return []  # no more batches: TensorRT computes the scales
                if self.device_buffer is None:
                    self.device_buffer = check(cudart.cudaMalloc(batch.nbytes), "cudaMalloc (calibration batch)")
                check(cudart.cudaMemcpy(self.device_buffer, batch.ctypes.data, batch.nbytes,
                                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy (calibration batch)")
                self.batches_fed += 1
                return [int(self.device_buffer)]
            except Exception as exc:  # noqa: BLE001 - must not cross into TensorRT's C++
                self.error = exc
                return []

        def read_calibration_cache(self) -> bytes | None:
            return read_calibration_cache(cache_path)

        def write_calibration_cache(self, cache: memoryview | bytes) -> None:
            write_calibration_cache(cache_path, bytes(cache))

        def release(self) -> None:
            """Free the device batch buffer."""
            if self.device_buffer is not None:
                check(cudart.cudaFree(self.device_buffer), "cudaFree (calibration batch)")
                self.device_buffer = None

    return EntropyCalibrator()
