"""INT8 of the TinyViT model end to end: the Q/DQ graph for TensorRT, its FP16-remainder twin and
the CPU variant, each gated on labelled held-out cells with no hand-written exclusion (the
selection's own tests, on a small graph with a fragile part, are in test_int8_select.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from dorl.artifacts import read_manifest, sha256_file
from dorl.calibration.calibration_set import read_calibration_set
from dorl.errors import ConfigError
from dorl.export.int8 import CPU, FP16, QDQ, variant_folders
from dorl.export.int8_gate import gate_set
from dorl.export.onnx_export import export_onnx

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.fixture(scope="module")
def int8_dirs(tinyvit_int8: Path) -> dict[str, Path]:
    return variant_folders(tinyvit_int8)


def test_int8_artifacts_pass_the_gate_and_say_their_target(int8_dirs: dict[str, Path], tinyvit_fp32: Path,
                                                           calibration_dir: Path, held_out_cells: list[str]) -> None:
    fp32 = read_manifest(tinyvit_fp32, "onnx")
    calibration = read_calibration_set(calibration_dir)
    targets = {QDQ: "tensorrt", FP16: "tensorrt-strongly-typed", CPU: "cpu"}
    for name, folder in int8_dirs.items():
        manifest = read_manifest(folder, "onnx")
        assert manifest["precision"] == "int8" and manifest["target"] == targets[name] and manifest["variant"] == name
        assert manifest["inputs"] == fp32["inputs"] and manifest["outputs"] == fp32["outputs"]
        assert manifest["calibration"]["cells_sha256"] == calibration.cells_sha256 and manifest["quantizer"] == "ort"
        gate = manifest["gate"]
        assert gate["passed"] and gate["images"] == len(held_out_cells)
        assert gate["top1_agreement"] >= 0.99 and gate["mask_iou_mean"] >= 0.9 and gate["accuracy_drop"] <= 0.01
        assert manifest["exclude_patterns"] == [] and manifest["parity"]["finite"]
        selection = manifest["float_selection"]
        assert selection["passed"] and [g for step in selection["steps"] for g in step["kept_in_float"]] \
            == selection["kept_groups"]  # each step's groups, in the order they went back to float
        latency = manifest["latency_ms_per_image"]["onnxruntime_cpu"]
        assert set(latency) == {"fp32", QDQ, FP16, CPU} and min(latency.values()) > 0
        assert manifest["latency_ms_per_image"]["qdq"].startswith("unfused")


def test_q_dq_latency_is_timed_in_the_runtimes_unfused_session(int8_dirs: dict[str, Path], held_out_cells: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from dorl.data.images import load_rgb, resize_square
    from dorl.export import int8_qdq
    from dorl.export.latency import latency_ms

    opened = []
    real = int8_qdq.tensorrt_session
    monkeypatch.setattr(int8_qdq, "tensorrt_session", lambda path: opened.append(path) or real(path))
    images = np.stack([resize_square(load_rgb(p), 224) for p in held_out_cells[:2]])
    qdq = int8_dirs[QDQ] / "model.onnx"
    assert latency_ms(qdq, images, batch=2, repeats=1, unfused=True) > 0 and opened == [qdq]
    assert latency_ms(qdq, images, batch=2, repeats=1) > 0 and opened == [qdq]  # the default session: fused


def test_qdq_graphs_are_what_tensorrt_takes(int8_dirs: dict[str, Path]) -> None:
    for name in (QDQ, FP16):
        manifest = read_manifest(int8_dirs[name], "onnx")
        quantization = manifest["quantization"]
        assert quantization["float_remainder"] == ("fp16" if name == FP16 else "fp32")
        assert quantization["int32_dequantize_inputs"] == 0 and quantization["nonzero_zero_points"] == 0
        assert quantization["quantized_attention_matmuls"] == 0 and quantization["qdq_nodes"] > 100
        assert set(quantization["quantized_nodes"]) <= {"MatMul", "Gemm", "Conv"}
        model = onnx.load(str(int8_dirs[name] / "model.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert "LayerNormalization" in ops and {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_cpu_variant_uses_integer_matmuls(int8_dirs: dict[str, Path]) -> None:
    ops = {n.op_type for n in onnx.load(str(int8_dirs[CPU] / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "QuantizeLinear" not in ops
    assert read_manifest(int8_dirs[CPU], "onnx")["quantization"]["weight_bits"] == 7



def test_onnx_runtime_on_the_cpu_runs_the_qdq_graph_as_tensorrt_computes_it(int8_dirs: dict[str, Path],
                                                                            held_out_cells: list[str]) -> None:
    from dorl.export.int8_qdq import run_as_tensorrt
    from dorl.export.parity import prepare_images
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    cells = prepare_images(held_out_cells[:8], 224)
    with OnnxRuntimeRunner(int8_dirs[QDQ], providers=["cpu"]) as runner:
        assert runner.qdq_graph and runner.qdq_unfused
        outputs = runner.infer({"images": cells})
    expected = run_as_tensorrt(int8_dirs[QDQ] / "model.onnx", cells)
    for name, value in outputs.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5)
    with OnnxRuntimeRunner(int8_dirs[CPU], providers=["cpu"]) as runner:
        assert not runner.qdq_graph and not runner.qdq_unfused  # the dynamic CPU variant keeps its integer kernels



def test_bench_says_the_qdq_graph_ran_unfused(int8_dirs: dict[str, Path], held_out_cells: list[str]) -> None:
    from dorl.benchmarks import accuracy, harness
    from dorl.benchmarks.report import notes

    cells = accuracy.Cells(tuple(held_out_cells[:4]), (None,) * 4)
    settings = harness.BenchSettings(batch_sizes=(1,), iterations=1, warmup=1, threads=1, peak_size=64, isolate=False)
    report = harness.bench([int8_dirs[QDQ], int8_dirs[CPU]], cells, settings)
    qdq, cpu = report["configurations"]
    assert qdq["status"] == "ok" and qdq["qdq_unfused"] and not cpu["qdq_unfused"]
    expected = (f"{qdq['name']}: a Q/DQ graph made for TensorRT, run by ONNX Runtime on the CPU with its Q/DQ pairs "
                "unfused (as TensorRT computes it, at float speed); the -cpu INT8 variant is the one made for CPU speed.")
    assert [n for n in notes(report) if "unfused" in n] == [expected]

def test_gate_never_sees_calibration_cells(calibration_dir: Path) -> None:
    calibration = read_calibration_set(calibration_dir)
    cells = [c.path for c in calibration.cells if c.label in CLASSES]
    with pytest.raises(ConfigError, match=f"all {len(cells)} labelled images given are in the calibration set"):
        gate_set(cells, CLASSES, frozenset(sha256_file(p) for p in cells))


def test_the_default_gate_wants_200_held_out_cells(tinyvit_bundle: tuple[Path, list[str]], calibration_dir: Path,
                                                   held_out_cells: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"at least 200 distinct labelled cells .* only {len(held_out_cells)} of the"):
        export_onnx(tinyvit_bundle[0], tmp_path / "int8", "int8", images=held_out_cells, calibration=calibration_dir)
    assert not (tmp_path / "int8").exists()  # refused before any export work
