"""The demo's report: one markdown page joining the reports of every step."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from dorl.deps import versions


def _machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, python {platform.python_version()}"


def _adaptation_table(adaptation: dict[str, Any]) -> list[str]:
    acc = adaptation["accuracy"]
    return [
        "| bccd cells | unadapted | adapted (site profile) |",
        "|---|---|---|",
        f"| {adaptation['cells']} | {100 * acc['unadapted']:.1f} % | {100 * acc['adapted']:.1f} % |",
        "",
        f"Method `{adaptation['method']}`, drift {adaptation['drift']:.2f}; {adaptation['note']}.",
    ]


def _export_lines(artifacts: dict[str, Path]) -> list[str]:
    lines = ["| artifact | precision | parity |", "|---|---|---|"]
    for folder in artifacts.values():
        manifest = json.loads((folder / "manifest.json").read_text())
        lines.append(f"| `{folder.name}` | {manifest.get('precision')} {manifest.get('target', '')} | "
                     f"{json.dumps(manifest.get('parity', manifest.get('gate', {})))[:200]} |")
    return lines


def write_demo_report(out: Path, trained: Any, evaluation: dict[str, Any], artifacts: dict[str, Path],
                      adaptation: dict[str, Any], bench: dict[str, Any], timings: dict[str, float],
                      config: Any) -> Path:
    """Write `out/report.md` and `out/report.json`; returns the markdown path."""
    from dorl.benchmarks.report import to_markdown
    from dorl.training.report import markdown

    meta = trained.metadata
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
        "```json",
        json.dumps({k: meta.get(k) for k in ("seg", "cae", "head", "pseudo_masks") if k in meta}, indent=1,
                   default=str)[:3000],
        "```",
        "",
        markdown(evaluation).replace("# Cross-domain", "## Cross-domain"),
        "## Export",
        "",
        *_export_lines(artifacts),
        "",
        *([f"INT8 refused by the accuracy gate: {(out / 'onnx' / 'int8-refused.txt').read_text().strip()}", ""]
          if (out / "onnx" / "int8-refused.txt").is_file() else []),
        "## Site adaptation (bccd)",
        "",
        *_adaptation_table(adaptation),
        "",
        to_markdown(bench).replace("# dorl bench", "## Benchmark"),
        "Plots: `evaluate/` (confusion matrices), `bench/` (latency, throughput, accuracy).",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    (out / "report.json").write_text(json.dumps({"timings": timings, "adaptation": adaptation,
                                                 "artifacts": {k: str(v) for k, v in artifacts.items()}}, indent=1))
    return path
