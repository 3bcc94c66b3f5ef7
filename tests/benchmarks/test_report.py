"""The report writers: JSON round trip, markdown tables, PNG plots, the rich table."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dorl.benchmarks.report import BATCH_COLUMNS, SUMMARY_COLUMNS, print_report, to_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def configuration(name: str, backend: str, precision: str, throughput: float) -> dict:
    """One ok configuration, shaped as the harness writes it."""
    times = [10.0, 11.0, 12.0, 30.0]
    return {
        "name": name, "backend": backend, "path": f"/x/{name}", "precision": precision, "status": "ok", "reason": None,
        "load_s": 0.5, "size_bytes": 3 * 1024 * 1024, "class_names": ["a", "b"],
        "flops": {"flops_per_cell": 2e9}, "threads_used": 2, "pipeline_batch": 2,
        "analyzer_ms_per_cell": 6.5, "stages_ms_per_cell": {"inference": 5.0, "host": 1.5},
        "predictions": [0, 1], "probs": [[0.9, 0.1], [0.2, 0.8]],
        "memory": {"peak_rss_mb": 300.0, "gpu": {"peak_mb": None, "source": "none"}},
        "batches": [{"batch": 2, "status": "ok", "times_ms": times, "throughput_cells_s": throughput,
                     "latency_ms": {"p50": 11.5, "p90": 30.0, "p99": 30.0}, "achieved_gflops": 2 * throughput,
                     "efficiency": 0.25, "speedup_vs_pytorch": throughput / 100.0},
                    {"batch": 8, "status": "skipped", "reason": "above the engine's max batch 4"}],
        "accuracy": {"correct": 1, "total": 2, "accuracy": 0.5},
        "agreement": {"agree": 2, "total": 2, "top1_agreement": 1.0, "near_ties": 1, "disagree_on_near_ties": 0,
                      "max_abs_prob_diff": 0.01},
    }


@pytest.fixture
def report() -> dict:
    skipped = {"name": "tensorrt-fp16", "backend": "tensorrt", "path": "/x/e", "precision": "fp16",
               "status": "skipped", "reason": "TensorRT is not installed here"}
    return {
        "format": "dorl-bench/1", "created": "now", "reference": "onnxruntime-fp32",
        "machine": {"processor": "x86_64", "cpu_count": 2, "matmul_peak": {"gflops": 50.0, "engine": "numpy", "size": 64}},
        "settings": {"threads": None, "device": "cpu", "iterations": 4, "warmup": 1},
        "cells": {"count": 2, "labelled": 2},
        "configurations": [configuration("pytorch-eager-fp32", "pytorch", "fp32", 100.0),
                           configuration("onnxruntime-fp32", "onnxruntime", "fp32", float("inf")), skipped],
    }


def test_write_report_files(report: dict, tmp_path: Path) -> None:
    written = write_report(report, tmp_path / "out")
    assert set(written) == {"json", "markdown", "latency", "throughput", "accuracy"}
    for kind in ("latency", "throughput", "accuracy"):
        assert written[kind].read_bytes()[:8] == PNG_MAGIC
    data = json.loads(written["json"].read_text())
    assert data["configurations"][1]["batches"][0]["throughput_cells_s"] is None  # inf is not JSON
    assert data["configurations"][0]["batches"][0]["throughput_cells_s"] == 100.0


def test_markdown_has_both_tables(report: dict) -> None:
    text = to_markdown(report)
    assert "| " + " | ".join(SUMMARY_COLUMNS) + " |" in text
    assert "| " + " | ".join(BATCH_COLUMNS) + " |" in text
    assert "| pytorch-eager-fp32 | 2 | 11.50 | 30.00 | 30.00 | 100.0 | 200.0 | 25.0 % | 1.00x |" in text
    assert "50.0 % (1/2)" in text and "100.0 % (2/2)" in text and "| 6.50 (5.00 + 1.50) |" in text
    assert "skipped: TensorRT is not installed here" in text
    assert "skipped: above the engine's max batch 4" in text
    assert "- onnxruntime-fp32: 1 of 2 reference predictions are near-ties" in text


def test_print_report_on_a_console(report: dict) -> None:
    from rich.console import Console

    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=250))
    text = buffer.getvalue()
    assert "onnxruntime-fp32" in text and "latency and throughput" in text and "50.0 GFLOP/s" in text
