"""CUDA that exists: every `cudart.<name>` the TensorRT package uses is in the installed cuda-python
binding (its symbols import without a driver), and a failing CUDA call becomes a clear error."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dorl.tensorrt
from dorl.tensorrt.cuda import CudaError, check, set_device

cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (cuda-bindings) is not installed")
PACKAGE = Path(dorl.tensorrt.__file__).parent


def cudart_uses() -> dict[str, set[str]]:
    """Every attribute chain rooted at a name `cudart` in the package ("cudaMemcpyKind.cudaMemcpyHostToDevice"),
    with the files using it."""
    uses: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "cudart":
                uses.setdefault(".".join(chain), set()).add(path.name)
    return {name: files for name, files in uses.items() if not any(o != name and o.startswith(f"{name}.") for o in uses)}


def test_the_package_uses_cuda_through_cudart_only() -> None:
    uses = cudart_uses()
    assert {"cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch",
            "cudaMemcpyAsync", "cudaMallocHost", "cudaMalloc"} <= set(uses)
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] == "pycuda" for name in names), f"{path.name} imports pycuda"


def test_every_cuda_attribute_used_exists_in_the_installed_binding() -> None:
    missing = []
    for chain, files in cudart_uses().items():
        target = cudart
        for part in chain.split("."):
            if not hasattr(target, part):
                missing.append(f"cudart.{chain} ({', '.join(sorted(files))})")
                break
            target = getattr(target, part)
    assert missing == []


def test_a_failing_cuda_call_names_itself() -> None:
    with pytest.raises(CudaError, match=r"CUDA call cudaSetDevice\(9999\) failed: cudaError\w+ \(.+\)"):
        set_device(9999)  # no driver here; an invalid ordinal where there is one
    assert check((cudart.cudaError_t.cudaSuccess, 7), "x") == 7
    assert check((cudart.cudaError_t.cudaSuccess,), "x") is None
    assert check((cudart.cudaError_t.cudaSuccess, 1, 2), "x") == (1, 2)
