"""TensorRT runner and builder end to end. Everywhere: manifest handling and errors. On a machine with
TensorRT, cuda-python and a GPU: engines built (and verified on the bundled real cells) from small
ONNX artifacts that follow the export contract (uint8 NHWC cells in, logits/probs/feature/mask_logits
out, LayerNormalization and Softmax inside), in FP16 and INT8, run beside ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from manifests import edit_manifest
from trt_graphs import FEATURE, contract_graph, write_onnx_artifact

from dorl.artifacts import read_manifest, write_manifest
from dorl.errors import ArtifactError, ConfigError, MissingDependencyError
from dorl.runtime.base import RunnerError
from dorl.tensorrt.runner import TensorRTRunner
from dorl.tensorrt.system import tensorrt_usable

skip_without_tensorrt = pytest.mark.skipif(not tensorrt_usable(), reason="TensorRT and cuda-python are not installed")


def fake_engine_artifact(folder: Path, max_batch: int = 4) -> Path:
    """An engine artifact whose plan is junk: enough for everything before deserialization."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.engine").write_bytes(b"not a plan")
    write_manifest(folder, "engine", ["model.engine"], tensorrt_version="10.3.0.30", gpu_name="Orin",
                   compute_capability="8.7", gpu_sm_count=16, gpu_total_memory_bytes=64 << 30, precision="fp16",
                   max_batch=max_batch, inputs=[{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
                   outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}],
                   rebuild_command="dorl build onnx --precision fp16 --max-batch 4 --workspace 1024 -o engine")
    return folder


# -- everywhere ---------------------------------------------------------------------------------------
def test_modules_import_without_tensorrt_cuda_or_torch() -> None:
    code = ("import sys, dorl.tensorrt.runner, dorl.tensorrt.builder, dorl.tensorrt.calibrator, dorl.tensorrt.verify; "
            "print(sorted(m for m in ('tensorrt', 'cuda', 'cuda.bindings', 'pycuda', 'torch') if m in sys.modules))")
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
    pytest.importorskip("onnx", reason="building the test graph needs onnx (export extra)")
    ort = pytest.importorskip("onnxruntime")
    from dorl.export.trt_compat import check_model

    model = contract_graph()
    assert check_model(model).passed
    folder = write_onnx_artifact(model, tmp_path / "onnx")
    outputs = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": cell_batch[:3]})
    logits, probs, feature, mask = outputs
    assert logits.shape == (3, 5) and feature.shape == (3, FEATURE) and mask.shape == (3, 2, 56, 56)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.ptp(logits, axis=0).max() > 0.01  # different cells give different logits


# -- with TensorRT, cuda-python and a GPU --------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The contract graph as fp32, fp16 and int8 (Q/DQ, no INT32 biases) ONNX artifacts."""
    if not tensorrt_usable():
        pytest.skip("TensorRT and cuda-python are not installed")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from dorl.export.fp16 import convert_to_fp16
    from dorl.tensorrt.verify import verification_cells

    root = tmp_path_factory.mktemp("graphs")
    model = contract_graph()
    folders = {"fp32": write_onnx_artifact(model, root / "fp32"),
               "fp16": write_onnx_artifact(convert_to_fp16(model), root / "fp16", "fp16")}
    cells = verification_cells(16, 224)[0].pixels

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.feeds = iter([{"images": cells[i:i + 4]} for i in range(0, 16, 4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    (root / "int8").mkdir()
    quantize_static(str(folders["fp32"] / "model.onnx"), str(root / "int8" / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Gemm", "Conv"], per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    import onnx

    folders["int8"] = write_onnx_artifact(onnx.load(str(root / "int8" / "q.onnx")), root / "int8", "int8")
    return folders


@pytest.fixture(scope="module")
def engines(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FP16 and INT8 engines (max batch 4), built and verified on 16 bundled real cells."""
    from dorl.tensorrt.builder import BuildSettings, build_engine

    root = tmp_path_factory.mktemp("engines")
    built = {}
    for precision in ("fp16", "int8"):
        settings = BuildSettings(precision=precision, max_batch=4, workspace_mb=256, verify_cells=16,
                                 timing_cache=root / "timing.cache")
        built[precision] = build_engine(artifacts[precision], root / precision, settings)
    return built


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
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engines_are_verified_and_described(engines: dict[str, Path], precision: str) -> None:
    manifest = read_manifest(engines[precision], kinds="engine")
    verification = manifest["verification"]
    assert verification["passed"] and verification["cells"] == 16 and verification["precision"] == precision
    assert manifest["gpu_sm_count"] > 0 and manifest["gpu_total_memory_bytes"] > 0
    assert manifest["trtexec_command"].startswith("trtexec --onnx=") and manifest["opt_level"] == 3
    assert "OBEY_PRECISION_CONSTRAINTS" not in manifest["builder_flags"]
    assert manifest["rebuild_command"].startswith("dorl build ") and (engines[precision].parent / "timing.cache").stat().st_size


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_matches_onnxruntime_at_dynamic_batch(artifacts: dict[str, Path], engines: dict[str, Path],
                                                      cell_batch: np.ndarray, batch: int) -> None:
    with TensorRTRunner(engines["fp16"]) as runner:
        _assert_fp16_close(runner.infer({"images": cell_batch[:batch]}), _onnxruntime(artifacts["fp32"], cell_batch[:batch]))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_batches_above_max_batch_run_in_chunks(artifacts: dict[str, Path], engines: dict[str, Path],
                                               cell_batch: np.ndarray) -> None:
    cells = np.concatenate([cell_batch, cell_batch[:3]])  # 9 cells, max batch 4: chunks of 4, 4, 1
    with TensorRTRunner(engines["fp16"]) as runner:
        _assert_fp16_close(runner.infer({"images": cells}), _onnxruntime(artifacts["fp32"], cells))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_cuda_graph_replay_matches_and_survives_other_batch_sizes(artifacts: dict[str, Path], engines: dict[str, Path],
                                                                  cell_batch: np.ndarray) -> None:
    with TensorRTRunner(engines["fp16"], cuda_graph_batch=3) as runner:
        first = runner.infer({"images": cell_batch[:3]})
        _assert_fp16_close(first, _onnxruntime(artifacts["fp32"], cell_batch[:3]))
        runner.infer({"images": cell_batch[3:4]})  # a non-graph batch in between
        again = runner.infer({"images": cell_batch[3:6]})
        _assert_fp16_close(again, _onnxruntime(artifacts["fp32"], cell_batch[3:6]))


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_one_runner_serves_several_threads(engines: dict[str, Path], cell_batch: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with TensorRTRunner(engines["fp16"]) as runner:
        alone = runner.infer({"images": cell_batch[:2]})["probs"]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: runner.infer({"images": cell_batch[:2]})["probs"], range(8)))
    for probs in results:
        np.testing.assert_array_equal(probs, alone)


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_fp32_graph_makes_an_fp16_engine_only_where_weak_typing_lives(artifacts: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    import tensorrt as trt

    from dorl.tensorrt.builder import BuildSettings, build_engine
    from dorl.tensorrt.versions import tensorrt_features

    settings = BuildSettings(precision="fp16", max_batch=2, workspace_mb=256, verify_cells=8)
    if not tensorrt_features(trt.__version__).weak_typing:
        with pytest.raises(ConfigError, match="strongly typed networks only"):
            build_engine(artifacts["fp32"], tmp_path / "engine", settings)
        return
    manifest = read_manifest(build_engine(artifacts["fp32"], tmp_path / "engine", settings), "engine")
    assert manifest["fp32_pinned_layers"] >= 2  # LayerNormalization and Softmax at least
    assert "--layerPrecisions=" in manifest["trtexec_command"]


@pytest.mark.tensorrt
@pytest.mark.gpu
@skip_without_tensorrt
def test_engine_from_another_tensorrt_is_refused_with_the_rebuild_command(engines: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    copy = tmp_path / "engine"
    copy.mkdir()
    (copy / "model.engine").write_bytes((engines["fp16"] / "model.engine").read_bytes())
    manifest = json.loads((engines["fp16"] / "manifest.json").read_text())
    manifest["tensorrt_version"] = "9.0.0.1"
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", "kind", "created", "files")}
    write_manifest(copy, "engine", ["model.engine"], **fields)
    runner = TensorRTRunner(copy)
    with pytest.raises(ArtifactError, match="built with TensorRT 9.0.0.1") as info:
        runner.activate()
    assert manifest["rebuild_command"] in str(info.value)
