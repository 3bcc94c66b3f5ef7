"""The harness on the tiny artifact and real labelled cells: structure, and accuracy against our own count."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED
from tiny_artifact import CLASS_NAMES, build_tiny_artifact

from dorl.artifacts import read_manifest, write_manifest
from dorl.benchmarks import accuracy, harness
from dorl.errors import ArtifactError, ConfigError, ImageError

pytest.importorskip("onnxruntime", reason="the harness runs ONNX artifacts with onnxruntime")
FAST = {"batch_sizes": (1, 4), "iterations": 3, "warmup": 1, "threads": 1, "peak_size": 128}




@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny graph as an "fp32" artifact and, with other weights, as a CPU "int8" one."""
    pytest.importorskip("onnx", reason="building the tiny artifact needs onnx")
    root = tmp_path_factory.mktemp("harness")
    fp32 = build_tiny_artifact(root / "fp32").folder
    int8 = build_tiny_artifact(root / "int8", seed=1, precision="int8").folder
    return fp32, int8


@pytest.fixture(scope="module")
def labelled(wbc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real pbc cells in <class>/<image> folders: 3 lymphocytes, 3 neutrophils."""
    folder = tmp_path_factory.mktemp("labelled")
    for name in ("lymphocyte", "neutrophil"):
        (folder / name).mkdir()
        for image in sorted((wbc_dir / "pbc" / name).glob("*.jpg"))[:3]:
            shutil.copy(image, folder / name / image.name)
    return folder


@pytest.fixture(scope="module")
def report(artifacts: tuple[Path, Path], labelled: Path) -> dict:
    cells = accuracy.collect_cells([], labelled, max_cells=6)
    return harness.bench(list(artifacts), cells, harness.BenchSettings(**FAST, isolate=False))


def own_predictions(artifact: Path, labelled: Path) -> tuple[list[str], list[str]]:
    """Run the artifact ourselves on every labelled cell: (predicted class, true class)."""
    from dorl.data.images import load_rgb, resize_square
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    files = sorted(labelled.glob("*/*.jpg"))
    pixels = np.stack([resize_square(load_rgb(f), 224) for f in files])
    with OnnxRuntimeRunner(artifact) as runner:
        probs = runner.infer({"images": pixels})["probs"]
    names = CLASS_NAMES
    return [names[i] for i in probs.argmax(axis=1)], [f.parent.name for f in files]


def test_report_structure(report: dict) -> None:
    assert report["format"] == "dorl-bench/1" and report["reference"] == "onnxruntime-fp32"
    assert [c["name"] for c in report["configurations"]] == ["onnxruntime-fp32", "onnxruntime-int8"]
    for config in report["configurations"]:
        assert config["status"] == "ok", config.get("reason")
        assert config["load_s"] > 0 and config["size_bytes"] > 0 and config["memory"]["peak_rss_mb"] > 0
        assert [b["batch"] for b in config["batches"]] == [1, 4]
        for row in config["batches"]:
            assert len(row["times_ms"]) == 3 and row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
            assert row["throughput_cells_s"] > 0 and row["efficiency"] > 0
        stages = config["stages_ms_per_cell"]  # the analyzer's time: inference (timed alone) and host work,
        # the rest of the analyzer's time (two timed runs: under load inference alone may take longer)
        assert config["analyzer_ms_per_cell"] > 0 and stages["inference"] > 0
        assert stages["host"] == pytest.approx(max(config["analyzer_ms_per_cell"] - stages["inference"], 0.0))
        assert config["pipeline_batch"] == 4 and len(config["predictions"]) == 6 and config["failed_cells"] == 0
    assert report["cells"]["per_class"] == {"lymphocyte": 3, "neutrophil": 3}


def test_accuracy_matches_our_own_count(report: dict, artifacts: tuple[Path, Path], labelled: Path) -> None:
    for config, artifact in zip(report["configurations"], artifacts):
        predicted, truth = own_predictions(artifact, labelled)
        correct = sum(p == t for p, t in zip(predicted, truth))
        assert config["accuracy"]["correct"] == correct and config["accuracy"]["total"] == 6
        assert config["accuracy"]["accuracy"] == pytest.approx(correct / 6)


def test_agreement_with_the_fp32_reference(report: dict, artifacts: tuple[Path, Path], labelled: Path) -> None:
    reference, _ = own_predictions(artifacts[0], labelled)
    other, _ = own_predictions(artifacts[1], labelled)
    agree = sum(a == b for a, b in zip(reference, other))
    fp32, int8 = report["configurations"]
    assert fp32["agreement"]["agree"] == 6 and fp32["agreement"]["max_abs_prob_diff"] == 0.0
    assert int8["agreement"]["agree"] == agree and int8["agreement"]["top1_agreement"] == pytest.approx(agree / 6)


def test_isolated_run_gives_the_same_predictions(report: dict, artifacts: tuple[Path, Path], labelled: Path) -> None:
    cells = accuracy.collect_cells([], labelled, max_cells=6)
    settings = harness.BenchSettings(**{**FAST, "batch_sizes": (2,)}, isolate=True)
    result = harness.run_target(harness.targets_from([artifacts[0]], None)[0], cells, settings)
    isolated = harness._run_isolated(harness.targets_from([artifacts[0]], None)[0], cells, settings)
    assert isolated["status"] == "ok", isolated.get("reason")
    assert isolated["memory"]["rss_method"].startswith("fresh process")
    assert isolated["predictions"] == result["predictions"] == report["configurations"][0]["predictions"]


def test_engine_is_skipped_with_a_reason_without_tensorrt(tmp_path: Path, artifacts: tuple[Path, Path],
                                                          labelled: Path) -> None:
    from dorl.runtime.loader import tensorrt_installed

    if tensorrt_installed():
        pytest.skip("TensorRT is installed here: the engine would run")
    (tmp_path / "model.engine").write_bytes(b"not really an engine")
    onnx = read_manifest(artifacts[0], "onnx")
    write_manifest(tmp_path, "engine", ["model.engine"], precision="fp16", max_batch=8,
                   source_onnx={"folder": str(artifacts[0]), "sha256": "0" * 64, "precision": "fp32"},
                   **{key: onnx[key] for key in ("inputs", "outputs", "class_names", "image_size")})
    cells = accuracy.collect_cells([], labelled, max_cells=2)
    out = harness.bench([artifacts[0], tmp_path], cells, harness.BenchSettings(**FAST, isolate=False))
    engine = out["configurations"][1]
    assert engine["name"] == "tensorrt-fp16" and engine["status"] == "skipped" and "TensorRT" in engine["reason"]


def test_bad_settings_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch sizes"):
        harness.BenchSettings(batch_sizes=(0, 2))
    with pytest.raises(ConfigError, match="device"):
        harness.BenchSettings(device="tpu")
    with pytest.raises(ArtifactError, match="does not exist"):
        harness.targets_from([tmp_path / "missing"], None)
    with pytest.raises(ConfigError, match="nothing to benchmark"):
        harness.targets_from([], None)
    with pytest.raises(ImageError, match="no image files"):
        accuracy.collect_cells([tmp_path], None, max_cells=4)
    with pytest.raises(ImageError, match="neither an existing path"):
        accuracy.collect_cells(["no-such-domain"], None, max_cells=4)


def test_labelled_cells_interleave_classes_and_skip_masks(wbc_dir: Path) -> None:
    cells = accuracy.collect_cells([], wbc_dir / MASKED, max_cells=4, classes=["monocyte", "neutrophil"])
    assert cells.labels == ("monocyte", "neutrophil", "monocyte", "neutrophil")
    everything = accuracy.labelled_files(wbc_dir / MASKED)
    assert everything and all("masks" not in path.parts for path, _ in everything)


@pytest.fixture(scope="module")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory, wbc_dir: Path) -> tuple[Path, Path]:
    """A tiny random DoRL bundle and its FP32 ONNX export (the export helper's code)."""
    pytest.importorskip("torch", reason="the PyTorch baseline needs torch")
    pytest.importorskip("onnxscript", reason="exporting needs the dynamo exporter")
    from dorl.bundle import save_bundle
    from dorl.config import ModelConfig
    from dorl.export.onnx_export import export_onnx
    from dorl.models.registry import build_model

    root = tmp_path_factory.mktemp("bundle")
    save_bundle(build_model(ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)), root / "bundle")
    images = sorted((wbc_dir / "pbc" / "neutrophil").glob("*.jpg"))[:2]
    export_onnx(root / "bundle", root / "fp32", "fp32", images=images)
    return root / "bundle", root / "fp32"


@pytest.mark.slow
def test_pytorch_baseline_against_its_export(exported_bundle: tuple[Path, Path], labelled: Path) -> None:
    bundle, fp32 = exported_bundle
    cells = accuracy.collect_cells([], labelled, max_cells=4)
    settings = harness.BenchSettings(**{**FAST, "batch_sizes": (2,), "iterations": 2}, isolate=False)
    out = harness.bench([fp32], cells, settings, bundle=bundle)
    torch_run, onnx_run = out["configurations"]
    assert torch_run["name"] == "pytorch-eager-fp32" and torch_run["status"] == "ok", torch_run.get("reason")
    agreement = torch_run["agreement"]
    assert agreement["reference"] == "onnxruntime-fp32"
    assert agreement["agree"] + agreement["disagree_on_near_ties"] == agreement["total"] == 4
    assert agreement["max_abs_prob_diff"] < 1e-4
    assert onnx_run["batches"][0]["speedup_vs_pytorch"] > 0
    # torch's FlopCounterMode and the ONNX graph count the same matmuls and convolutions
    assert onnx_run["flops"]["flops_per_cell"] == pytest.approx(torch_run["flops"]["flops_per_cell"], rel=0.02)
