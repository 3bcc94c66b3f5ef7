"""Legacy TensorRT calibrator: fixed-size batches from a calibration set, the cache file, and the
refusal on TensorRT 11. The calibrator object itself needs TensorRT, cuda-python and a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dorl.errors import ConfigError, MissingDependencyError
from dorl.tensorrt.calibrator import (
    fixed_batches,
    make_entropy_calibrator,
    read_calibration_cache,
    write_calibration_cache,
)
from dorl.tensorrt.system import tensorrt_usable
from dorl.tensorrt.versions import tensorrt_features


def _cells(start: int, count: int) -> dict[str, np.ndarray]:
    """`count` distinct uint8 cells whose first pixel is their index."""
    cells = np.zeros((count, 4, 4, 3), dtype=np.uint8)
    cells[:, 0, 0, 0] = np.arange(start, start + count)
    return {"images": cells}


def test_batches_are_recut_to_the_calibration_batch_size() -> None:
    batches = list(fixed_batches([_cells(0, 3), _cells(3, 2), _cells(5, 4), _cells(9, 2)], "images", 4))
    assert [b.shape for b in batches] == [(4, 4, 4, 3)] * 2  # 11 cells: two full batches, 3 dropped
    assert [b[:, 0, 0, 0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(b.flags.c_contiguous and b.dtype == np.uint8 for b in batches)


def test_one_large_batch_is_split() -> None:
    batches = list(fixed_batches([_cells(0, 7)], "images", 3))
    assert [b[:, 0, 0, 0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]


def test_batches_must_carry_the_graph_input() -> None:
    with pytest.raises(ConfigError, match="has inputs \\['pixels'\\] but not 'images'"):
        list(fixed_batches([{"pixels": np.zeros((2, 4, 4, 3), np.uint8)}], "images", 2))


def test_batches_must_keep_one_item_shape_and_dtype() -> None:
    feeds = [_cells(0, 2), {"images": np.zeros((2, 4, 4, 3), np.float32)}]
    with pytest.raises(ConfigError, match="calibration batch 1 is float32"):
        list(fixed_batches(feeds, "images", 2))
    with pytest.raises(ConfigError, match="at least 1"):
        list(fixed_batches([], "images", 0))


def test_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "calibration.cache"
    assert read_calibration_cache(path) is None and read_calibration_cache(None) is None
    write_calibration_cache(path, b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n")
    assert read_calibration_cache(path) == b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n"
    path.write_bytes(b"")
    assert read_calibration_cache(path) is None  # an empty file means: calibrate again
    write_calibration_cache(None, b"ignored")


@pytest.mark.skipif(tensorrt_usable(), reason="checks the error given when TensorRT is absent")
def test_factory_without_tensorrt_says_so() -> None:
    with pytest.raises(MissingDependencyError, match="INT8 calibration needs TensorRT"):
        make_entropy_calibrator([], "images", 2)


def test_module_imports_without_tensorrt_cuda_or_torch() -> None:
    code = ("import sys, dorl.tensorrt.calibrator; "
            "print(sorted(m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_usable(), reason="TensorRT and cuda-python are not installed")
def test_calibrator_feeds_device_batches_and_writes_its_cache(tmp_path: Path) -> None:
    import tensorrt as trt

    if not tensorrt_features(trt.__version__).calibrators:
        with pytest.raises(ConfigError, match="no INT8 calibrators"):
            make_entropy_calibrator([_cells(0, 4)], "images", 2)
        return
    cache = tmp_path / "calibration.cache"
    calibrator = make_entropy_calibrator([_cells(0, 5)], "images", 2, cache)
    try:
        assert calibrator.get_batch_size() == 2
        pointers = [calibrator.get_batch(["images"]) for _ in range(3)]
        assert len(pointers[0]) == 1 and pointers[0] == pointers[1] and pointers[2] == []
        assert calibrator.read_calibration_cache() is None
        calibrator.write_calibration_cache(b"cache")
        assert calibrator.read_calibration_cache() == b"cache" and cache.read_bytes() == b"cache"
        assert calibrator.get_batch(["other"]) == [] and isinstance(calibrator.error, ConfigError)
    finally:
        calibrator.release()
    assert calibrator.device_buffer is None
