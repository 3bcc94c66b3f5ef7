"""Optional dependencies: checked with find_spec, imported late, with a clear error."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from importlib import metadata
from types import ModuleType

from dorl.errors import MissingDependencyError

# module name -> (pip extra, distribution name)
_EXTRAS = {
    "torch": ("train", "torch"),
    "torchvision": ("train", "torchvision"),
    "segment_anything": ("train", "segment-anything"),
    "peft": ("train", "peft"),
    "sklearn": ("train", "scikit-learn"),
    "scipy": ("train", "scipy"),
    "matplotlib": ("train", "matplotlib"),
    "onnx": ("export", "onnx"),
    "onnxruntime": ("export", "onnxruntime"),
    "onnxscript": ("export", "onnxscript"),
    "modelopt": ("modelopt", "nvidia-modelopt"),
    "tensorrt": ("trt", "tensorrt"),
    "cuda.bindings": ("trt", "cuda-python"),
    "starlette": ("serve", "starlette"),
    "uvicorn": ("serve", "uvicorn"),
}


@cache
def is_available(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    # A namespace package (spec.origin None) is not the real thing: tensorrt-stubs leaves a
    # `tensorrt` folder of .pyi files where TensorRT itself is absent.
    return spec is not None and spec.origin is not None


def require(module: str, purpose: str = "this operation") -> ModuleType:
    """Import an optional dependency or raise an error that says how to install it."""
    extra, dist = _EXTRAS.get(module, ("all", module))
    if not is_available(module):
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{dist}', which is not installed: "
            f"run `pip install 'dorl[{extra}]'` (or `pip install {dist}`)."
        )
    return importlib.import_module(module)


def version_of(dist: str) -> str | None:
    """Installed version of a distribution, read from its metadata without importing it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(*dists: str) -> dict[str, str]:
    """Versions of the given distributions that are installed (plus dorl itself)."""
    from dorl import __version__

    found = {"dorl": __version__}
    for dist in dists:
        v = version_of(dist)
        if v is not None:
            found[dist] = v
    return found
