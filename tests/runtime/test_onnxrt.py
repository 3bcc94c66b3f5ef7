"""The ONNX Runtime runner and the artifact loader, run for real on the tiny artifact."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from manifests import edit_manifest

from dorl.artifacts import write_manifest
from dorl.data.images import load_rgb, resize_square
from dorl.errors import ArtifactError, MissingDependencyError
from dorl.runtime.base import RunnerError
from dorl.runtime.loader import load_runner, tensorrt_installed
from dorl.runtime.onnxrt import OnnxRuntimeRunner, provider_options, resolve_providers

pytest.importorskip("onnxruntime", reason="the ONNX Runtime runner needs onnxruntime (export extra)")


def copy_artifact(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_outputs_match_numpy_on_real_cells(tiny_artifact, cell_images: list[Path]) -> None:
    batch = np.stack([resize_square(load_rgb(p), 224) for p in cell_images])
    expected = tiny_artifact.reference(batch)
    with OnnxRuntimeRunner(tiny_artifact.folder, threads=1) as runner:
        outputs = runner.infer({"images": batch})
        single = runner.infer({"images": batch[:1]})  # dynamic batch
    assert set(outputs) == {"logits", "probs", "feature", "mask_logits"}
    assert outputs["mask_logits"].shape == (len(cell_images), 2, 56, 56)
    assert outputs["feature"].shape == (len(cell_images), 8)
    for name, value in outputs.items():
        assert value.dtype == np.float32
        # float32 means over 50,176 pixels vs numpy's float64: ~1e-4 on logits of magnitude ~8
        np.testing.assert_allclose(value, expected[name], atol=5e-4, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(single["probs"], outputs["probs"][:1], atol=1e-4)
    np.testing.assert_allclose(outputs["probs"].sum(axis=1), 1.0, atol=1e-5)


def test_session_options_and_providers(tiny_artifact) -> None:
    runner = OnnxRuntimeRunner(tiny_artifact.folder, providers=["cpu"], threads=1)
    assert runner.providers == [] and not runner.is_active
    with runner:
        assert runner.providers == ["CPUExecutionProvider"]
        options = runner.session.get_session_options()
        assert options.intra_op_num_threads == 1
        assert "ENABLE_ALL" in str(options.graph_optimization_level)
    assert runner.session is None and not runner.is_active
    with pytest.raises(RunnerError, match="threads must be at least 1"):
        OnnxRuntimeRunner(tiny_artifact.folder, threads=0)


def test_resolve_providers() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, available) == available[1:]  # TensorRT only when asked for
    assert resolve_providers(["tensorrt", "cuda"], available) == available[:2]
    assert resolve_providers(None, ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda", "cpu"], available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(MissingDependencyError, match="TensorrtExecutionProvider are not available"):
        resolve_providers(["tensorrt"], ["CPUExecutionProvider"])


def test_tensorrt_provider_caches_go_to_the_artifact_or_a_given_folder(tiny_artifact, tmp_path: Path) -> None:
    runner = OnnxRuntimeRunner(tiny_artifact.folder)
    assert runner.cache_dir == tiny_artifact.folder / "tensorrt-cache"
    assert OnnxRuntimeRunner(tiny_artifact.folder, cache_dir=tmp_path / "c").cache_dir == tmp_path / "c"
    options = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider"], tmp_path / "c")
    cache = str((tmp_path / "c").resolve())
    assert options == [{"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                        "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache}, {}]
    assert provider_options(["CPUExecutionProvider"], tmp_path) == [{}]


def test_inputs_are_checked(tiny_artifact) -> None:
    runner = OnnxRuntimeRunner(tiny_artifact.folder)
    good = np.zeros((2, 224, 224, 3), np.uint8)
    with pytest.raises(RunnerError, match="not active"):
        runner.infer({"images": good})
    with runner:
        with pytest.raises(RunnerError, match="must be uint8"):
            runner.infer({"images": good.astype(np.float32)})
        with pytest.raises(RunnerError, match="has shape"):
            runner.infer({"images": np.zeros((2, 3, 224, 224), np.uint8)})
        with pytest.raises(RunnerError, match="expects inputs"):
            runner.infer({"pixels": good})


def test_load_runner_picks_onnxruntime(tiny_artifact) -> None:
    runner = load_runner(tiny_artifact.folder / "model.onnx", threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.threads == 1
    assert isinstance(load_runner(tiny_artifact.folder, backend="onnxruntime"), OnnxRuntimeRunner)
    with pytest.raises(ArtifactError, match="build an engine from it with `dorl build`"):
        load_runner(tiny_artifact.folder, backend="tensorrt")
    with pytest.raises(ArtifactError, match="unknown backend"):
        load_runner(tiny_artifact.folder, backend="openvino")


def test_folder_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not really")
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_runner(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_runner(tmp_path / "missing")


def test_manifest_of_another_kind(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 16)
    write_manifest(tmp_path, "bundle", ["weights.safetensors"])
    with pytest.raises(ArtifactError, match="'bundle' artifact, which cannot be run: export it"):
        load_runner(tmp_path)
    with pytest.raises(ArtifactError, match="'bundle' artifact, but this needs 'onnx': give an ONNX artifact from `dorl export`"):
        OnnxRuntimeRunner(tmp_path)


def test_tampered_model_is_refused(tiny_artifact, tmp_path: Path) -> None:
    folder = copy_artifact(tiny_artifact.folder, tmp_path)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_runner(folder)


def test_manifest_naming_a_tensor_the_graph_lacks(tiny_artifact, tmp_path: Path) -> None:
    folder = copy_artifact(tiny_artifact.folder, tmp_path)
    edit_manifest(folder, lambda manifest: manifest["outputs"][0].update(name="scores"))
    runner = OnnxRuntimeRunner(folder)
    with pytest.raises(ArtifactError, match="its manifest names"):
        runner.activate()
    edit_manifest(folder, lambda manifest: manifest.pop("inputs"))
    with pytest.raises(ArtifactError, match="no valid 'inputs' list"):
        OnnxRuntimeRunner(folder)


@pytest.mark.skipif(tensorrt_installed(), reason="checks the message shown where TensorRT is missing")
def test_engine_without_tensorrt(tmp_path: Path) -> None:
    (tmp_path / "model.engine").write_bytes(b"\0" * 64)
    write_manifest(tmp_path, "engine", ["model.engine"])
    with pytest.raises(MissingDependencyError, match="needs the Python package 'tensorrt'"):
        load_runner(tmp_path)
    with pytest.raises(ArtifactError, match="onnxruntime cannot run"):
        load_runner(tmp_path, backend="onnxruntime")


def test_runtime_imports_and_runs_without_torch(tiny_artifact) -> None:
    code = (
        "import importlib, pkgutil, sys, numpy as np\n"
        "import dorl.runtime, dorl.runtime.analyzer, dorl.data.images, dorl.commands.predict\n"
        "for m in pkgutil.iter_modules(dorl.runtime.__path__):\n"  # every runtime module, TensorRT's too
        "    importlib.import_module('dorl.runtime.' + m.name)\n"
        "from dorl.runtime import Analyzer\n"
        f"with Analyzer({str(tiny_artifact.folder)!r}, threads=1) as a:\n"
        "    cell = np.full((64, 64, 3), 225, np.uint8); cell[16:48, 16:48] = (90, 40, 120)\n"
        "    r = a.analyze([cell])[0]\n"
        "assert r.ok and r.label is not None, r\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('torch modules:', leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch modules: []" in done.stdout
