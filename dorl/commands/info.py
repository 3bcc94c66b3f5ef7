"""`dorl info`: versions, and which backends and accelerators are usable here."""

from __future__ import annotations

import json
import platform
import sys
from typing import Annotated, Any

import typer

from dorl.deps import is_available, versions

PACKAGES = ("numpy", "pillow", "safetensors", "typer", "torch", "torchvision", "segment-anything", "peft",
            "onnx", "onnxruntime", "onnxscript", "tensorrt", "cuda-python", "cuda-bindings")


def collect(probe_torch: bool = True) -> dict[str, Any]:
    """What this machine can run: package versions, ONNX Runtime providers, CUDA, TensorRT."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions(*PACKAGES),
    }
    backends: dict[str, Any] = {}
    if is_available("onnxruntime"):
        import onnxruntime

        backends["onnxruntime"] = onnxruntime.get_available_providers()
    else:
        backends["onnxruntime"] = None
    backends["tensorrt"] = _tensorrt()
    if probe_torch and is_available("torch"):
        import torch

        cuda = torch.cuda.is_available()
        backends["torch"] = {
            "cuda": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "threads": torch.get_num_threads(),
        }
    else:
        backends["torch"] = None
    report["backends"] = backends
    return report


def _tensorrt() -> dict[str, Any] | None:
    """TensorRT's release and what dorl builds with it, and the GPU; None without TensorRT + cuda-python."""
    from dorl.errors import DorlError
    from dorl.tensorrt.system import describe_system, tensorrt_usable
    from dorl.tensorrt.versions import tensorrt_features

    if not tensorrt_usable():
        return None
    import tensorrt

    features = tensorrt_features(tensorrt.__version__)
    found: dict[str, Any] = {"version": tensorrt.__version__, "weak_typing": features.weak_typing,
                             "calibrators": features.calibrators, "onnx_matrix": features.onnx_matrix}
    try:
        found["gpu"] = describe_system().to_manifest()
    except DorlError as exc:
        found["gpu_error"] = str(exc)
    return found


def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    report = collect()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"dorl {report['versions']['dorl']}  python {report['python']}  {report['platform']}")
    for name in PACKAGES:
        typer.echo(f"  {name:18s} {report['versions'].get(name, 'not installed')}")
    b = report["backends"]
    typer.echo("backends:")
    typer.echo(f"  onnxruntime providers: {', '.join(b['onnxruntime']) if b['onnxruntime'] else 'not installed'}")
    typer.echo(f"  tensorrt:              {_describe_tensorrt(b['tensorrt'])}")
    if b["torch"] is None:
        typer.echo("  torch:                 not installed")
    else:
        cuda = ", ".join(b["torch"]["devices"]) if b["torch"]["cuda"] else "no CUDA device (CPU only)"
        typer.echo(f"  torch:                 {cuda}; {b['torch']['threads']} CPU threads")


def _describe_tensorrt(found: dict[str, Any] | None) -> str:
    if found is None:
        return "not usable here (needs tensorrt and cuda-python's cuda.bindings)"
    gpu = found.get("gpu")
    where = (f"{gpu['gpu_name']} (compute {gpu['compute_capability']}, {gpu['gpu_sm_count']} SMs)" if gpu
             else found.get("gpu_error", "no GPU"))
    typing = "weakly or strongly typed" if found["weak_typing"] else "strongly typed only"
    return f"{found['version']}, builds {typing}; {where}"
