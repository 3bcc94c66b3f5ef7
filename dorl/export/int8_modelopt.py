"""NVIDIA Model Optimizer (`nvidia-modelopt`) as the INT8 quantizer of the Q/DQ graph.

Model Optimizer places Q/DQ the way TensorRT fuses them (residual Adds and LayerNorms fed by
Conv get their own, GEMVs and small convolutions stay float, biases float, symmetric int8) and
calibrates on the CPU through ONNX Runtime. It is installed without its `[onnx]` extra, which
pins onnxruntime-gpu and pulls gigabytes of CUDA: `pip install 'dorl[modelopt]'`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dorl.deps import is_available
from dorl.errors import MissingDependencyError

CALIBRATION_BATCH = 2
CALIBRATION_METHOD = "max"
# what `import modelopt.onnx.quantization` needs beside nvidia-modelopt itself (its [onnx] extra, less ORT-GPU)
MODULES = ("modelopt", "onnx_graphsurgeon", "onnxslim", "lief", "cppimport")
INSTALL = "pip install 'dorl[modelopt]'"


def require_modelopt() -> None:
    """Raise MissingDependencyError unless Model Optimizer and what its ONNX quantizer imports are installed."""
    missing = [m for m in MODULES if not is_available(m)]
    if missing:
        raise MissingDependencyError(
            f"--quantizer modelopt needs NVIDIA Model Optimizer, and {', '.join(missing)} is not installed: "
            f"run `{INSTALL}` (not nvidia-modelopt[onnx], which replaces onnxruntime with onnxruntime-gpu), "
            "or use --quantizer ort."
        )


class _NoNvmlError(logging.Filter):
    """Model Optimizer logs an error when it cannot count GPUs; calibrating on the CPU needs none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to get GPU count" not in record.getMessage()


@contextlib.contextmanager
def _modelopt_on_cpu() -> Iterator[None]:
    """Model Optimizer's ONNX quantizer with TensorRT's custom-op check off where TensorRT is absent.

    `tensorrt-stubs` leaves an importable `tensorrt` namespace without TensorRT, which Model
    Optimizer takes for TensorRT and then fails on `trt.Logger`.
    """
    from modelopt.onnx import trt_utils

    saved = trt_utils.TRT_PYTHON_AVAILABLE
    trt_utils.TRT_PYTHON_AVAILABLE = saved and is_available("tensorrt")
    log, quiet = logging.getLogger("modelopt.onnx"), _NoNvmlError()
    log.addFilter(quiet)
    ort_state = _ort_quantization_state()
    try:
        yield
    finally:
        trt_utils.TRT_PYTHON_AVAILABLE = saved
        log.removeFilter(quiet)
        _restore(ort_state)


_ORT_MODULES = ("calibrate", "base_quantizer", "qdq_quantizer", "onnx_quantizer")


def _ort_quantization_state() -> list[tuple[object, str, object]]:
    """Every module- and class-level attribute of ONNX Runtime's quantizer that Model Optimizer patches
    in place (its calibrators, `create_calibrator`, the QDQ quantizer's checks): restored after each
    call, so ONNX Runtime's own quantizer works again in the same process."""
    import importlib

    state: list[tuple[object, str, object]] = []
    for name in _ORT_MODULES:
        module = importlib.import_module(f"onnxruntime.quantization.{name}")
        for key, value in list(vars(module).items()):
            state.append((module, key, value))
            if isinstance(value, type) and value.__module__ == module.__name__:
                state.extend((value, k, v) for k, v in list(vars(value).items()) if not k.startswith("__")
                             or k == "__init__")
    return state


def _restore(state: list[tuple[object, str, object]]) -> None:
    for owner, key, value in state:
        if getattr(owner, key, None) is not value:
            setattr(owner, key, value)


def quantize_modelopt(fp32_path: Path, out_path: Path, calibration: np.ndarray, input_name: str,
                      excluded: Sequence[str], method: str = CALIBRATION_METHOD) -> None:
    """Model Optimizer's INT8 Q/DQ graph of `fp32_path` (float remainder kept FP32), calibrated on the CPU.

    Args:
        calibration: the calibration images, uint8 [N,S,S,3], as the graph meets them.
        excluded: node names kept out of quantization (matched exactly).
        method: "max" (MinMax, as the ORT quantizer) or "entropy" (Model Optimizer's default).
    """
    require_modelopt()
    size = int(calibration.shape[1])
    with _modelopt_on_cpu():
        from modelopt.onnx.quantization import quantize

        quantize(
            str(fp32_path), quantize_mode="int8", calibration_data={input_name: calibration}, calibration_method=method,
            calibration_eps=["cpu"], calibration_shapes=f"{input_name}:{CALIBRATION_BATCH}x{size}x{size}x3",
            nodes_to_exclude=[f"^{re.escape(name)}$" for name in excluded], high_precision_dtype="fp32",
            use_external_data_format=Path(f"{fp32_path}.data").exists(), output_path=str(out_path),
            log_level="WARNING",
        )
