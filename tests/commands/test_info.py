"""`dorl info`: what this machine can run, TensorRT included, as JSON and as text."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from dorl.commands.info import _describe_tensorrt, collect, info
from dorl.tensorrt.system import tensorrt_usable


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("info")(info)
    app.command("noop", hidden=True)(lambda: None)
    return app


def test_json_lists_versions_and_backends() -> None:
    result = CliRunner().invoke(_app(), ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["python"].count(".") == 2 and "numpy" in report["versions"]
    assert set(report["backends"]) == {"onnxruntime", "tensorrt", "torch"}


@pytest.mark.skipif(tensorrt_usable(), reason="checks what is said where TensorRT is absent")
def test_without_tensorrt_the_text_says_what_is_needed() -> None:
    assert collect(probe_torch=False)["backends"]["tensorrt"] is None
    assert _describe_tensorrt(None) == "not usable here (needs tensorrt and cuda-python's cuda.bindings)"


def test_tensorrt_line_names_release_typing_and_gpu() -> None:
    found = {"version": "10.3.0.30", "weak_typing": True, "calibrators": True, "onnx_matrix": "10.3",
             "gpu": {"gpu_name": "Orin", "compute_capability": "8.7", "gpu_sm_count": 16}}
    assert _describe_tensorrt(found) == "10.3.0.30, builds weakly or strongly typed; Orin (compute 8.7, 16 SMs)"
    no_gpu = {**found, "version": "11.0.0.114", "weak_typing": False, "gpu": None,
              "gpu_error": "CUDA call cudaGetDeviceProperties(0) failed"}
    assert _describe_tensorrt(no_gpu).startswith("11.0.0.114, builds strongly typed only; CUDA call")
