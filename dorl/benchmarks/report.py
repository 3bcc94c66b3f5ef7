"""The benchmark report: a rich table on the terminal, JSON, markdown and PNG plots.

Two tables: one row per configuration (load, size, memory, FLOPs, accuracy, agreement, the
shipped analyzer's time per cell and its split between inference and host work: decode, resize,
softmax, mask), and one row per
configuration and batch size (latency p50/p90/p99 in trtexec's definition, throughput, achieved
GFLOP/s, efficiency against the float32 matmul peak, speedup over PyTorch eager). Plots use
matplotlib's Agg canvas directly, so no display and no pyplot state is touched.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MB = 1024 * 1024
SUMMARY_COLUMNS = ("configuration", "status", "load s", "size MB", "peak RSS MB", "GFLOP/cell", "accuracy",
                   "top-1 agreement", "analyzer ms per cell (inference + host)")
BATCH_COLUMNS = ("configuration", "batch", "p50 ms", "p90 ms", "p99 ms", "cells/s", "GFLOP/s", "efficiency",
                 "vs PyTorch")


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ratio(score: dict[str, Any] | None, key: str, count: str) -> str:
    if not score:
        return "-"
    return f"{100 * score[key]:.1f} % ({score[count]}/{score['total']})"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per configuration, as strings in SUMMARY_COLUMNS order."""
    rows = []
    for r in report["configurations"]:
        if r["status"] != "ok":
            rows.append([r["name"], f"{r['status']}: {r.get('reason')}"] + ["-"] * (len(SUMMARY_COLUMNS) - 2))
            continue
        flops = (r.get("flops") or {}).get("flops_per_cell")
        stages = r.get("stages_ms_per_cell")
        split = _num(r.get("analyzer_ms_per_cell")) + (
            f" ({_num(stages['inference'])} + {_num(stages['host'])})" if stages else "")
        rows.append([r["name"], "ok", _num(r["load_s"]), _num(r["size_bytes"] / MB, 1),
                     _num(r["memory"]["peak_rss_mb"], 0), _num(flops / 1e9 if flops else None),
                     _ratio(r.get("accuracy"), "accuracy", "correct"),
                     _ratio(r.get("agreement"), "top1_agreement", "agree"), split])
    return rows


def batch_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per configuration and batch size, as strings in BATCH_COLUMNS order."""
    rows = []
    for r in report["configurations"]:
        for b in r.get("batches", []):
            if b["status"] != "ok":
                rows.append([r["name"], str(b["batch"]), f"skipped: {b['reason']}"] + ["-"] * 6)
                continue
            lat = b["latency_ms"]
            efficiency = b.get("efficiency")
            speedup = b.get("speedup_vs_pytorch")
            rows.append([r["name"], str(b["batch"]), _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]),
                         _num(b["throughput_cells_s"], 1), _num(b.get("achieved_gflops"), 1),
                         f"{100 * efficiency:.1f} %" if efficiency is not None else "-",
                         f"{speedup:.2f}x" if speedup is not None else "-"])
    return rows


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """Print both tables with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, columns, rows in (("configurations", SUMMARY_COLUMNS, summary_rows(report)),
                                 ("latency and throughput", BATCH_COLUMNS, batch_rows(report))):
        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(_machine_line(report))


def _machine_line(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    peak = machine["matmul_peak"]
    return (f"{machine['processor']}, {machine['cpu_count']} CPUs, threads {settings['threads'] or 'default'}, "
            f"device {settings['device']}; float32 matmul peak {peak['gflops']:.1f} GFLOP/s ({peak['engine']}, "
            f"{peak['size']}^3); {report['cells']['count']} cells ({report['cells']['labelled']} labelled); "
            f"{settings['iterations']} timed runs after {settings['warmup']} warm-up; reference {report['reference']}.")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: both tables and the machine line."""
    def table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return lines + ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]

    lines = ["# dorl bench", "", _machine_line(report), "", "## Configurations", ""]
    lines += table(SUMMARY_COLUMNS, summary_rows(report))
    lines += ["", "## Latency and throughput", "",
              "Latency percentiles as trtexec computes them (no interpolation; p50 is the median).", ""]
    lines += table(BATCH_COLUMNS, batch_rows(report))
    return "\n".join(lines + ["", "## Notes", ""] + [f"- {note}" for note in notes(report)]) + "\n"


def notes(report: dict[str, Any]) -> list[str]:
    """What the tables cannot say: near-ties behind the agreement figures, FLOP counts left unresolved."""
    found = []
    for r in report["configurations"]:
        agreement, flops = r.get("agreement") or {}, r.get("flops") or {}
        if agreement.get("near_ties"):
            found.append(f"{r['name']}: {agreement['near_ties']} of {agreement['total']} reference predictions are "
                         f"near-ties (top-2 gap < 0.05), {agreement['disagree_on_near_ties']} of the disagreements among "
                         f"them; largest probability difference {agreement['max_abs_prob_diff']:.4f}.")
        if r.get("second_pass_ms_per_cell") is not None:
            found.append(f"{r['name']}: cell-centric, two passes per batch; the second (the cell cut out on the host, "
                         f"inference on the crop) costs {r['second_pass_ms_per_cell']:.2f} of the analyzer's "
                         f"{r['analyzer_ms_per_cell']:.2f} ms per cell.")
        if r.get("tta_ms_per_cell") is not None:
            found.append(f"{r['name']}: test-time augmentation {r['tta']} (the classifying pass also on each flip, "
                         f"probabilities averaged) costs {r['tta_ms_per_cell']:.2f} of the analyzer's "
                         f"{r['analyzer_ms_per_cell']:.2f} ms per cell.")
        if r.get("qdq_unfused"):
            found.append(f"{r['name']}: a Q/DQ graph made for TensorRT, run by ONNX Runtime on the CPU with its Q/DQ "
                         "pairs unfused (as TensorRT computes it, at float speed); the -cpu INT8 variant is the one "
                         "made for CPU speed.")
        if flops.get("unresolved_count"):
            found.append(f"{r['name']}: {flops['unresolved_count']} matmul/conv nodes had unknown shapes and are "
                         "missing from the FLOP count.")
    return found or ["none."]


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (with plots) the three PNGs into `out_dir`.

    Returns:
        What was written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "report.json", "markdown": out / "report.md"}
    written["json"].write_text(json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n")
    written["markdown"].write_text(to_markdown(report))
    if plots:
        written.update(write_plots(report, out))
    return written


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_plots(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """latency.png (distribution per batch), throughput.png (vs batch), accuracy.png (per configuration)."""
    ok = [r for r in report["configurations"] if r["status"] == "ok"]
    paths = {name: out / f"{name}.png" for name in ("latency", "throughput", "accuracy")}
    for name, draw in (("latency", _latency), ("throughput", _throughput), ("accuracy", _accuracy)):
        figure = _figure()
        draw(figure, ok)
        figure.savefig(paths[name])
    return paths


def _latency(figure: Any, results: list[dict[str, Any]]) -> None:
    batches = sorted({b["batch"] for r in results for b in r["batches"] if b["status"] == "ok"})
    axes = figure.subplots(1, max(len(batches), 1), squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        rows = [(r["name"], b["times_ms"]) for r in results for b in r["batches"] if b["batch"] == batch
                and b["status"] == "ok"]
        ax.boxplot([t for _, t in rows], whis=(1, 99))
        ax.set_xticks(range(1, len(rows) + 1), [n for n, _ in rows], rotation=60, fontsize=6)
        ax.set_title(f"batch {batch}", fontsize=8)
    axes[0].set_ylabel("latency per batch (ms)")


def _throughput(figure: Any, results: list[dict[str, Any]]) -> None:
    ax = figure.subplots()
    for r in results:
        rows = [b for b in r["batches"] if b["status"] == "ok"]
        ax.plot([b["batch"] for b in rows], [b["throughput_cells_s"] for b in rows], marker="o", label=r["name"])
    batches = sorted({b["batch"] for r in results for b in r["batches"] if b["status"] == "ok"})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (cells/s)")
    ax.legend(fontsize=7)


def _accuracy(figure: Any, results: list[dict[str, Any]]) -> None:
    ax = figure.subplots()
    names = [r["name"] for r in results]
    for offset, key, label in ((-0.2, "accuracy", "accuracy"), (0.2, "agreement", "top-1 agreement")):
        values = [100 * (r.get(key) or {}).get("accuracy" if key == "accuracy" else "top1_agreement", 0.0)
                  for r in results]
        ax.bar([i + offset for i in range(len(names))], values, width=0.4, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
