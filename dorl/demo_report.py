"""The demo's report: one markdown page joining the reports of every step."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dorl.deps import versions

if TYPE_CHECKING:
    from dorl.manifests import OnnxManifest


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, python {platform.python_version()}"


MASK_IOU_WARNING = 0.9


def _adaptation_table(adaptation: dict[str, Any]) -> list[str]:
    acc = adaptation["accuracy"]
    return [
        "| bccd cells | unadapted | adapted (site profile) |",
        "|---|---|---|",
        f"| {adaptation['cells']} | {100 * acc['unadapted']:.1f} % | {100 * acc['adapted']:.1f} % |",
        "",
        f"Method `{adaptation['method']}`, drift {adaptation['drift']:.2f}; {adaptation['note']}.",
    ]


def _training_lines(meta: dict[str, Any]) -> list[str]:
    """Per stage: losses first → last epoch, held-out mask scores, the head."""
    seg, cae, head = meta.get("seg") or {}, meta.get("cae") or {}, meta.get("head") or {}
    lines = []
    if seg.get("losses"):
        holdout = "; ".join(f"{k} IoU {v['iou']:.3f} (n={v['n']})" for k, v in seg.get("holdout", {}).items())
        lines.append(f"- LoRA-SAM: loss {seg['losses'][0]:.3f} → {seg['losses'][-1]:.3f} over {len(seg['losses'])} "
                     f"epochs on {seg.get('train_images', '?')} images; held-out masks: {holdout or 'none'}.")
    total = (cae.get("losses") or {}).get("loss")
    if total:
        parts = ", ".join(f"{k} {v[0]:.3f} → {v[-1]:.3f}" for k, v in cae["losses"].items())
        lines.append(f"- CAE: {parts} over {len(total)} epochs.")
    if head:
        lines.append(f"- head: {head.get('kind')}, training accuracy {100 * head.get('train_accuracy', 0):.1f} %.")
    return lines or ["- every stage was reused from an earlier run."]


def _manifests(artifacts: dict[str, Path]) -> dict[str, OnnxManifest]:
    """Each artifact folder's name → its manifest, read once for every table of the report."""
    from dorl.manifests import read_onnx

    return {folder.name: read_onnx(folder, verify=False) for folder in artifacts.values()}


def _mask_warning(manifests: dict[str, OnnxManifest]) -> list[str]:
    """The INT8 gate holds the masks on its own cells: say when they drift from FP32's on the parity cells."""
    lines = []
    for name, manifest in manifests.items():
        iou = manifest.parity.get("mask_iou_mean")
        if manifest.precision == "int8" and iou is not None and iou < MASK_IOU_WARNING:
            gated = (manifest.data.get("gate") or {}).get("mask_iou_mean")
            on_gate = "" if gated is None else f" (the INT8 gate measured {gated:.2f} on its own cells)"
            lines.append(f"Note: on the parity cells the masks of `{name}` agree with FP32's at IoU {iou:.2f} on "
                         f"average, below {MASK_IOU_WARNING:.2f}{on_gate}; where masks matter, calibrate on more "
                         "cells or export again with a higher `--min-mask-iou`.")
    return [*lines, ""] if lines else []


def _export_lines(manifests: dict[str, OnnxManifest]) -> list[str]:
    lines = [("| artifact | target | checked against | cells | max abs diff of probs | top-1 agreement "
             "| mask IoU mean / min | accuracy gate (cells outside the calibration set) |"), "|---|---|---|---|---|---|---|---|"]
    for name, manifest in manifests.items():
        parity, gate = manifest.parity, manifest.data.get("gate")
        iou = (f"{parity['mask_iou_mean']:.3f} / {parity['mask_iou_min']:.3f}"
               if parity.get("mask_iou_mean") is not None else "-")
        gate_text = (f"FP32 {100 * gate['accuracy_fp32']:.1f} % → INT8 {100 * gate['accuracy_int8']:.1f} % "
                     f"on {gate['images']} cells" if gate else "-")
        lines.append(f"| `{name}` | {manifest.precision} {manifest.data.get('target', '')} "
                     f"| {parity.get('reference', '-')} | {parity.get('images', '-')} "
                     f"| {parity.get('max_abs_diff', {}).get('probs', float('nan')):.2e} "
                     f"| {100 * parity.get('top1_agreement', float('nan')):.1f} % | {iou} | {gate_text} |")
    return lines


def write_demo_report(out: Path, trained: Any, evaluation: dict[str, Any], artifacts: dict[str, Path],
                      adaptation: dict[str, Any], bench: dict[str, Any], timings: dict[str, float],
                      config: Any) -> Path:
    """Write `out/report.md` and `out/report.json`; returns the markdown path."""
    from dorl.benchmarks.report import to_markdown
    from dorl.evaluation.report import markdown

    meta = trained.metadata
    manifests = _manifests(artifacts)
    parts = [
        "# dorl demo report",
        "",
        (f"Machine: {_machine()}. Schedule: {'quick (CI)' if config.quick else 'CPU'}. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions('torch', 'onnxruntime', 'onnx').items())}."),
        "",
        "Step times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + f"; total {sum(timings.values()):.0f}.",
        "",
        "## Training",
        "",
        (f"Bundle: `{trained.bundle}`; stages run: {', '.join(trained.ran) or 'none'}; reused: "
        f"{', '.join(trained.reused) or 'none'}."),
        "",
        *_training_lines(meta),
        "",
        markdown(evaluation).replace("# Cross-domain", "## Cross-domain"),
        "## Export",
        "",
        *_export_lines(manifests),
        "",
        *_mask_warning(manifests),
        *([f"INT8 refused by the accuracy gate: {(out / 'onnx' / 'int8-refused.txt').read_text().strip()}", ""]
          if (out / "onnx" / "int8-refused.txt").is_file() else []),
        "## Site adaptation (bccd)",
        "",
        *_adaptation_table(adaptation),
        "",
        to_markdown(bench).replace("# dorl bench", "## Benchmark"),
        ("Accuracy here is on the labelled bccd sample (another lab than the training cells), unadapted; "
         "top-1 agreement is with ONNX Runtime FP32."),
        "",
        "Plots: `evaluate/` (summary: rows with 95 % intervals, confusion matrices), `bench/` (latency, throughput, accuracy).",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    (out / "report.json").write_text(json.dumps({"timings": timings, "adaptation": adaptation,
                                                 "artifacts": {k: str(v) for k, v in artifacts.items()}}, indent=1))
    return path
