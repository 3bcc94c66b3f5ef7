"""The device check: which engines it plans from a folder of exports, the one-sentence refusal where
there is no TensorRT or GPU, and (with TensorRT and a GPU) the whole run on small real exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dorl.artifacts import write_manifest
from dorl.errors import ConfigError
from dorl.tensorrt.device_check import DeviceCheckSettings, planned_engines, run_device_check
from dorl.tensorrt.system import tensorrt_usable

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_check.py"


def _exports(root: Path) -> Path:
    """Manifests of what `dorl demo` writes under onnx/ (graphs not needed to plan)."""
    for name, precision, extra in (("fp32", "fp32", {}), ("fp16", "fp16", {}), ("int8", "int8", {"target": "tensorrt"}),
                                   ("int8-cpu", "int8", {"target": "cpu"})):
        folder = root / "onnx" / name
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"\x08\x08")  # a ModelProto holding only ir_version 8
        write_manifest(folder, "onnx", ["model.onnx"], precision=precision, **extra)
    (root / "onnx" / "int8-refused.txt").write_text("not an artifact\n")
    return root / "onnx"


def test_plan_follows_the_tensorrt_release(tmp_path: Path) -> None:
    folder = _exports(tmp_path)
    weak = [(name, path.name, precision) for name, path, precision in planned_engines(folder, weak_typing=True)]
    assert weak == [("fp16", "fp16", "fp16"), ("fp16-from-fp32", "fp32", "fp16"), ("int8", "int8", "int8")]
    strong = [name for name, _, _ in planned_engines(folder, weak_typing=False)]
    assert strong == ["fp16", "int8"]  # no FP32 graph on strongly typed TensorRT, never the CPU INT8 graph


def test_a_folder_without_exports_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ONNX artifact for TensorRT under"):
        planned_engines(tmp_path, weak_typing=True)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="verifies every engine"):
        DeviceCheckSettings(verify_cells=0)
    with pytest.raises(ConfigError, match="at least 1 timed iteration"):
        DeviceCheckSettings(iterations=0)


@pytest.mark.skipif(tensorrt_usable(), reason="checks the refusal where TensorRT is absent")
def test_without_tensorrt_the_script_says_so_in_one_sentence(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(_exports(tmp_path)), "-o", str(tmp_path / "dc.json")],
                          check=False, capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the device check needs TensorRT, but it is not installed")
    assert not (tmp_path / "dc.json").exists()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_usable(), reason="TensorRT and cuda-python are not installed")
def test_device_check_builds_verifies_and_times_every_engine(tmp_path: Path) -> None:
    import onnx
    from trt_graphs import contract_graph, write_onnx_artifact

    from dorl.export.fp16 import convert_to_fp16

    model = contract_graph()
    write_onnx_artifact(model, tmp_path / "onnx" / "fp32")
    write_onnx_artifact(convert_to_fp16(model), tmp_path / "onnx" / "fp16", "fp16")
    assert onnx.load(str(tmp_path / "onnx" / "fp16" / "model.onnx"))
    report = run_device_check(tmp_path / "onnx", tmp_path / "dc.json",
                              DeviceCheckSettings(max_batch=4, workspace_mb=256, verify_cells=8, iterations=5, warmup=2))
    assert report["passed"] and json.loads((tmp_path / "dc.json").read_text())["passed"]
    fp16 = next(e for e in report["engines"] if e["name"] == "fp16")
    assert fp16["verification"]["passed"] and fp16["trtexec_command"].startswith("trtexec ")
    assert set(fp16["benchmark"]) == {"batch1", "batch4", "batch4-cuda-graph"}
    assert report["system"]["gpu_sm_count"] > 0 and report["system"]["features"]["version"].count(".") == 3
