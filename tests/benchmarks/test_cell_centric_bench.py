"""`dorl bench` on a cell-centric artifact: the analyzer pass runs both passes and prices the second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from framed_artifact import with_framing
from tiny_artifact import COMMITTED

from dorl.benchmarks import accuracy, harness
from dorl.benchmarks.report import notes
from dorl.runtime.analyzer import Analyzer

pytest.importorskip("onnxruntime", reason="the harness runs ONNX artifacts with onnxruntime")
FAST = {"batch_sizes": (1, 4), "iterations": 2, "warmup": 1, "threads": 1, "peak_size": 64}


def test_bench_reports_the_second_pass(wbc_dir: Path, tmp_path: Path) -> None:
    framed = with_framing(COMMITTED, tmp_path / "cell")
    cells = accuracy.collect_cells([], str(wbc_dir / "pbc"), 8, None)
    report = harness.bench([framed, COMMITTED], cells, harness.BenchSettings(**FAST))
    cell, whole = report["configurations"]
    assert cell["status"] == "ok" and cell["framing"] == {"input": "cell", "mask": "segmenter", "margin": 0.1}
    # a difference of two timed runs of a tiny model: priced (not None), its size is the benchmark's to print;
    # under load it can be 0 (CI once measured the two-pass run no slower than the one-pass run)
    assert cell["second_pass_ms_per_cell"] >= 0 and whole["second_pass_ms_per_cell"] is None
    assert cell["qdq_unfused"] is False and whole["qdq_unfused"] is False  # FP32 graphs
    assert cell["stages_ms_per_cell"]["inference"] == pytest.approx(
        2 * next(b["latency_ms"]["p50"] / b["batch"] for b in cell["batches"] if b["batch"] == 4))
    assert any("second (the cell cut out on the host" in note for note in notes(report))
    with Analyzer(framed, check_cells=False) as analyzer:  # the benchmark classified the crops
        expected = [int(np.argmax([r.probs[n] for n in analyzer.class_names])) for r in analyzer.analyze(cells.paths)]
    assert cell["predictions"] == expected


def test_bench_prices_test_time_augmentation(wbc_dir: Path, tmp_path: Path) -> None:
    framed = with_framing(COMMITTED, tmp_path / "cell")
    cells = accuracy.collect_cells([], str(wbc_dir / "pbc"), 8, None)
    report = harness.bench([framed], cells, harness.BenchSettings(**FAST, tta="flips"))
    (cell,) = report["configurations"]
    assert cell["status"] == "ok" and cell["tta"] == "flips" and report["settings"]["tta"] == "flips"
    assert cell["tta_ms_per_cell"] >= 0 and cell["second_pass_ms_per_cell"] >= 0  # priced; sizes: see above
    inference = next(b["latency_ms"]["p50"] / b["batch"] for b in cell["batches"] if b["batch"] == 4)
    assert cell["stages_ms_per_cell"]["inference"] == pytest.approx(5 * inference)  # pass 1, pass 2 and 3 flips
    assert any("test-time augmentation flips" in note for note in notes(report))
    with Analyzer(framed, check_cells=False, tta="flips") as analyzer:
        expected = [int(np.argmax([r.probs[n] for n in analyzer.class_names])) for r in analyzer.analyze(cells.paths)]
    assert cell["predictions"] == expected
    with pytest.raises(Exception, match="unknown --tta 'mirror'"):
        harness.BenchSettings(tta="mirror")
