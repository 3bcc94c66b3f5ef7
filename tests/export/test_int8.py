"""INT8 of the TinyViT model: the Q/DQ graph for TensorRT and the CPU variant, both gated on
labelled held-out cells (a failed gate naming the costliest groups is tested on a small graph in
tests/calibration/test_qdq.py).

This test model (pretrained TinyViT, untrained one-block CAE, a head fitted on 40 cells) does not
pass the gate fully quantized (measured: 88 % top-1 agreement on 200 cells), so the
passing artifacts keep the encoder and CAE in float with --exclude, as the sweep advises: only
the mask decoder is quantized, which leaves the classification exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dorl.artifacts import read_manifest, sha256_file
from dorl.calibration.calibration_set import read_calibration_set
from dorl.calibration.gate import gate_set
from dorl.errors import ConfigError
from dorl.export.onnx_export import export_onnx

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
EXCLUDE = ("encoder*", "cae*")


@pytest.fixture(scope="module")
def int8_dirs(tinyvit_fp32: Path, tinyvit_bundle: tuple[Path, list[str]], calibration_dir: Path,
              held_out_cells: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("onnx") / "int8"
    export_onnx(tinyvit_bundle[0], out, "int8", images=held_out_cells, calibration=calibration_dir, exclude=EXCLUDE,
                fp32_artifact=tinyvit_fp32)
    return out, out.with_name("int8-cpu")


def test_int8_artifacts_pass_the_gate_and_say_their_target(int8_dirs: tuple[Path, Path], tinyvit_fp32: Path,
                                                           calibration_dir: Path) -> None:
    qdq, cpu = (read_manifest(d, "onnx") for d in int8_dirs)
    fp32 = read_manifest(tinyvit_fp32, "onnx")
    calibration = read_calibration_set(calibration_dir)
    for manifest, target in ((qdq, "tensorrt"), (cpu, "cpu")):
        assert manifest["precision"] == "int8" and manifest["target"] == target
        assert manifest["inputs"] == fp32["inputs"] and manifest["outputs"] == fp32["outputs"]
        assert manifest["calibration"]["cells_sha256"] == calibration.cells_sha256
        gate = manifest["gate"]
        assert gate["passed"] and gate["images"] == 24
        assert gate["top1_agreement"] == 1.0 and gate["accuracy_drop"] == 0.0
        assert manifest["exclude_patterns"] == list(EXCLUDE)
        assert manifest["parity"]["finite"]
        latency = manifest["latency_ms_per_image"]["onnxruntime_cpu"]
        assert set(latency) == {"fp32", "Q/DQ (TensorRT)", "dynamic (CPU)"} and min(latency.values()) > 0
    assert qdq["quantization"]["symmetric"] and qdq["quantization"]["per_channel"]


def test_qdq_graph_is_symmetric_with_sensitive_nodes_in_float(int8_dirs: tuple[Path, Path]) -> None:
    manifest = read_manifest(int8_dirs[0], "onnx")
    model = onnx.load(str(int8_dirs[0] / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quant and all(not np.any(inits[n.input[2]]) for n in quant if len(n.input) > 2)  # zero points 0
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1]
    assert per_channel  # per-channel weight scales
    producer = {o: n for n in model.graph.node for o in n.output}
    excluded = set(manifest["excluded_nodes"])
    quantized = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                 and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert quantized and not excluded & {n.name for n in quantized}  # the mask decoder's, and only those
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert producer[node.input[0]].op_type != "DequantizeLinear"


def test_cpu_variant_uses_integer_matmuls(int8_dirs: tuple[Path, Path]) -> None:
    ops = {n.op_type for n in onnx.load(str(int8_dirs[1] / "model.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "QuantizeLinear" not in ops


def test_gate_never_sees_calibration_cells(calibration_dir: Path) -> None:
    calibration = read_calibration_set(calibration_dir)
    cells = [c.path for c in calibration.cells if c.label in CLASSES]
    with pytest.raises(ConfigError, match="outside the calibration set"):
        gate_set(cells, CLASSES, frozenset(sha256_file(p) for p in cells))
