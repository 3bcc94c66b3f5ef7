"""dorl: DoRL blood-cell classification from training to a Jetson analyzer.

Importing the package loads no heavy dependency; torch, onnx, onnxruntime and tensorrt are
imported inside the functions that need them.
"""

__version__ = "0.1.0"

from dorl.errors import DorlError

__all__ = ["DorlError", "__version__"]
