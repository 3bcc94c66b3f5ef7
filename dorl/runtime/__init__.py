"""The torch-free runtime: runners (ONNX Runtime, TensorRT), the analyzer, host postprocessing.

Everything here depends on numpy, pillow and the backend package only; the backend itself
(onnxruntime, tensorrt) is imported when a runner is activated.
"""

from dorl.runtime.analyzer import Analyzer, CellResult
from dorl.runtime.base import BaseRunner, RunnerError, TensorSpec
from dorl.runtime.loader import load_runner

__all__ = ["Analyzer", "BaseRunner", "CellResult", "RunnerError", "TensorSpec", "load_runner"]
