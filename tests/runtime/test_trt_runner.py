"""TensorRT runner: manifest handling and errors everywhere; on a machine with TensorRT, pycuda
and a GPU, an engine built from a small ONNX artifact (the export contract: uint8 NHWC cells in,
logits/probs/feature/mask_logits out, a LayerNormalization inside) against ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from manifests import edit_manifest

from dorl.artifacts import write_manifest
from dorl.errors import ArtifactError, ConfigError, MissingDependencyError
from dorl.runtime.base import RunnerError
from dorl.runtime.engine import tensorrt_usable
from dorl.runtime.trt_runner import TensorRTRunner

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
FEATURE = 16
skip_without_tensorrt = pytest.mark.skipif(not tensorrt_usable(), reason="TensorRT and pycuda are not installed")


def make_onnx_artifact(folder: Path) -> Path:
    """A tiny graph with the deployed graph's I/O contract, written as an "onnx" artifact."""
    onnx = pytest.importorskip("onnx", reason="building the test graph needs onnx (pip install 'dorl[export]')")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)

    def const(name: str, array: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["nchw", "scale"], ["unit"]),
        helper.make_node("GlobalAveragePool", ["unit"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["feature"]),
        helper.make_node("LayerNormalization", ["feature", "ln_g", "ln_b"], ["normed"], axis=-1),
        helper.make_node("Gemm", ["normed", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("AveragePool", ["unit"], ["small"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["small", "wm", "bm"], ["mask_logits"]),
    ]
    weights = [
        const("scale", np.array(255.0)), const("w1", rng.normal(size=(3, FEATURE)) * 4),
        const("b1", rng.normal(size=FEATURE)), const("ln_g", np.ones(FEATURE)), const("ln_b", np.zeros(FEATURE)),
        const("w2", rng.normal(size=(FEATURE, len(CLASSES)))), const("b2", np.zeros(len(CLASSES))),
        const("wm", rng.normal(size=(2, 3, 1, 1))), const("bm", np.array([0.5, -0.5])),
    ]
    specs: list[tuple[str, list[str | int]]] = [
        ("logits", ["batch", len(CLASSES)]), ("probs", ["batch", len(CLASSES)]), ("feature", ["batch", FEATURE]),
        ("mask_logits", ["batch", 2, 56, 56])]
    graph = helper.make_graph(
        nodes, "dorl_tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in specs], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    write_manifest(folder, "onnx", ["model.onnx"], precision="fp32", class_names=CLASSES, image_size=224,
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
                   outputs=[{"name": n, "dtype": "float32", "shape": s} for n, s in specs])
    return folder


def fake_engine_artifact(folder: Path, max_batch: int = 4) -> Path:
    """An engine artifact whose plan is junk: enough for everything before deserialization."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.engine").write_bytes(b"not a plan")
    write_manifest(folder, "engine", ["model.engine"], tensorrt_version="10.3.0.30", gpu_name="Orin",
                   compute_capability="8.7", precision="fp16", max_batch=max_batch,
                   inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
                   outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}],
                   rebuild_command="dorl build onnx --precision fp16 --max-batch 4 --workspace 1024 -o engine")
    return folder


# -- everywhere ---------------------------------------------------------------------------------
def test_module_imports_without_tensorrt_pycuda_or_torch() -> None:
    code = ("import sys, dorl.runtime.trt_runner; "
            "print(sorted(m for m in ('tensorrt', 'pycuda', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runner_reads_specs_and_max_batch_from_the_manifest(tmp_path: Path) -> None:
    runner = TensorRTRunner(fake_engine_artifact(tmp_path / "engine"), cuda_graph_batch=2)
    assert list(runner.input_specs) == ["images"] and list(runner.output_specs) == ["logits"]
    assert runner.max_batch == 4 and runner.cuda_graph_batch == 2 and not runner.is_active
    with pytest.raises(RunnerError, match="not active"):
        runner.infer({"images": np.zeros((1, 224, 224, 3), np.uint8)})


@pytest.mark.parametrize("batch", [0, 5])
def test_cuda_graph_batch_must_fit_the_engine(tmp_path: Path, batch: int) -> None:
    with pytest.raises(ConfigError, match="between 1 and the engine's max batch 4"):
        TensorRTRunner(fake_engine_artifact(tmp_path / "engine"), cuda_graph_batch=batch)


def test_runner_refuses_changed_or_wrong_artifacts(tmp_path: Path) -> None:
    engine = fake_engine_artifact(tmp_path / "engine")
    (engine / "model.engine").write_bytes(b"not a plan!")
    with pytest.raises(ArtifactError, match="truncated or changed"):
        TensorRTRunner(engine)
    edit_manifest(engine, lambda manifest: manifest.pop("max_batch"))
    with pytest.raises(ArtifactError, match="incomplete.*dorl build"):
        TensorRTRunner(engine, verify=False)


@pytest.mark.skipif(tensorrt_usable(), reason="checks the error given when TensorRT is absent")
def test_activation_without_tensorrt_says_where_to_get_it(tmp_path: Path) -> None:
    runner = TensorRTRunner(fake_engine_artifact(tmp_path / "engine"))
    with pytest.raises(MissingDependencyError, match="running a TensorRT engine needs TensorRT.*JetPack"):
        runner.activate()
    assert not runner.is_active


def test_test_graph_follows_the_export_contract_in_onnxruntime(tmp_path: Path, cell_batch: np.ndarray) -> None:
    ort = pytest.importorskip("onnxruntime")
    folder = make_onnx_artifact(tmp_path / "onnx")
    outputs = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": cell_batch[:3]})
    logits, probs, feature, mask = outputs
    assert logits.shape == (3, 5) and feature.shape == (3, FEATURE) and mask.shape == (3, 2, 56, 56)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.ptp(logits, axis=0).max() > 0.01  # different cells give different logits


# -- with TensorRT, pycuda and a GPU --------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(onnx artifact, fp16 engine artifact with max batch 4), built once."""
    if not tensorrt_usable():
        pytest.skip("TensorRT and pycuda are not installed")
    from dorl.runtime.engine import build_engine

    root = tmp_path_factory.mktemp("trt")
    onnx_folder = make_onnx_artifact(root / "onnx")
    engine = build_engine(onnx_folder, root / "engine", precision="fp16", max_batch=4, workspace_mb=256,
                          timing_cache=root / "timing.cache")
    return onnx_folder, engine


def _onnxruntime(onnx_folder: Path, cells: np.ndarray) -> dict[str, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": cells})))


def _assert_fp16_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=2e-2, atol=2e-2, err_msg=name)


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_matches_onnxruntime_at_dynamic_batch(built: tuple[Path, Path], cell_batch: np.ndarray,
                                                      batch: int) -> None:
    onnx_folder, engine = built
    from dorl.artifacts import read_manifest

    manifest = read_manifest(engine, kinds="engine")
    assert manifest["precision"] == "fp16" and manifest["max_batch"] == 4
    assert manifest["rebuild_command"].startswith("dorl build ") and (engine.parent / "timing.cache").stat().st_size
    with TensorRTRunner(engine) as runner:
        _assert_fp16_close(runner.infer({"images": cell_batch[:batch]}), _onnxruntime(onnx_folder, cell_batch[:batch]))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_batches_above_max_batch_run_in_chunks(built: tuple[Path, Path], cell_batch: np.ndarray) -> None:
    onnx_folder, engine = built
    cells = np.concatenate([cell_batch, cell_batch[:3]])  # 9 cells, max batch 4: chunks of 4, 4, 1
    with TensorRTRunner(engine) as runner:
        _assert_fp16_close(runner.infer({"images": cells}), _onnxruntime(onnx_folder, cells))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_cuda_graph_replay_matches_and_survives_other_batch_sizes(built: tuple[Path, Path],
                                                                  cell_batch: np.ndarray) -> None:
    onnx_folder, engine = built
    with TensorRTRunner(engine, cuda_graph_batch=3) as runner:
        first = runner.infer({"images": cell_batch[:3]})
        _assert_fp16_close(first, _onnxruntime(onnx_folder, cell_batch[:3]))
        runner.infer({"images": cell_batch[3:4]})  # a non-graph batch in between
        again = runner.infer({"images": cell_batch[3:6]})
        _assert_fp16_close(again, _onnxruntime(onnx_folder, cell_batch[3:6]))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_engine_from_another_tensorrt_is_refused_with_the_rebuild_command(built: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    _, engine = built
    copy = tmp_path / "engine"
    copy.mkdir()
    (copy / "model.engine").write_bytes((engine / "model.engine").read_bytes())
    manifest = json.loads((engine / "manifest.json").read_text())
    manifest["tensorrt_version"] = "9.0.0"
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", "kind", "created", "files")}
    write_manifest(copy, "engine", ["model.engine"], **fields)
    runner = TensorRTRunner(copy)
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0.0") as info:
        runner.activate()
    assert manifest["rebuild_command"] in str(info.value)

