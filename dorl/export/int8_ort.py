"""ONNX Runtime's quantizers: the static Q/DQ graph for TensorRT and the dynamic CPU graph.

The Q/DQ graph follows TensorRT's explicit-quantization rules: symmetric int8 (zero points 0),
per-channel weights, Q/DQ only on the inputs of MatMul/Gemm/Conv (not on their outputs, which
would round the residual stream and the inputs of LayerNorm, Softmax and GELU too), and biases
left in float: by default ONNX Runtime quantizes Conv/Gemm biases to INT32, and TensorRT's
DequantizeLinear accepts only INT8/FP8/INT4 inputs. Activation ranges are MinMax over the
calibration set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.deps import require
from dorl.export.int8_groups import QUANT_OPS

# ONNX Runtime's MinMax calibration holds every intermediate tensor of a batch at once: on ViT-B
# (224) batch 8 peaked at 8.3 GiB RSS, batch 2 at 3.7 GiB and ran faster (127 s vs 150 s). The
# ranges do not depend on it (min/max over batches).
CALIBRATION_BATCH = 2
CPU_OPS = ("MatMul", "Gemm")  # ConvInteger is slower than float Conv on the CPU
REDUCE_RANGE = True  # 7-bit weights in the dynamic CPU graph (see quantize_cpu)
QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "OpTypesToExcludeOutputQuantization": list(QUANT_OPS),
}


class _NoPreprocessAdvice(logging.Filter):
    """Drops onnxruntime's "consider pre-processing before quantization" advice (printed on every call;
    its shape-inference step is what our export already did)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    root, advice = logging.getLogger(), _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def cell_reader(images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH) -> Any:
    """An onnxruntime CalibrationDataReader feeding uint8 images [N,S,S,3] (as the graph meets them) in batches."""
    require("onnxruntime", "INT8 calibration")
    from onnxruntime import quantization

    class CellReader(quantization.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.start >= len(images):
                return None
            chunk = images[self.start:self.start + batch]
            self.start += batch
            return {input_name: chunk}

        def __len__(self) -> int:
            return (len(images) + batch - 1) // batch

        def rewind(self) -> None:
            self.start = 0

    return CellReader()


def quantize_qdq(fp32_path: Path, out_path: Path, reader: Any, excluded: Sequence[str]) -> None:
    """Symmetric per-channel int8 Q/DQ of every MatMul/Gemm/Conv but `excluded`, biases in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_quantizer():
        quantize_static(
            str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS),
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(excluded), calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=_has_external_data(fp32_path),
            # MinMax keeps two numbers per tensor and batch (ReduceMin/Max nodes in the graph), so memory
            # does not grow with the set. CalibMaxIntermediateOutputs is not set: in onnxruntime 1.32 it
            # clears the collected batches without merging them first, calibrating on the last few only.
            extra_options=dict(QDQ_OPTIONS),
        )


def quantize_cpu(fp32_path: Path, out_path: Path, excluded: Sequence[str]) -> None:
    """Dynamic int8 MatMul/Gemm (weights int8 per channel, activations quantized per batch at run time).

    Weights keep 7 bits (`reduce_range`): the CPU kernels multiply uint8 activations by int8
    weights and, on x86 CPUs without VNNI (AVX2, AVX-512F), add pairs of products in 16 bits,
    which saturate with 8-bit weights. Measured on a small graph here (AVX-512F, no VNNI): logits
    off by 1.6e4 with 8 bits, 43 with 7.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Dynamic quantization first rewrites each Gemm as "<name>_MatMul" + "<name>_Add"; exclude both names.
    names = list(excluded) + [f"{name}_MatMul" for name in excluded]
    with quiet_quantizer():
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=list(CPU_OPS), per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=names, reduce_range=REDUCE_RANGE,
                         use_external_data_format=_has_external_data(fp32_path))


def _has_external_data(path: Path) -> bool:
    return Path(f"{path}.data").exists()
