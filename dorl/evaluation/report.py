"""Evaluation reports: results.json, a markdown table in the paper's layout, confusion PNGs.

Everything here reads the plain dict of `Evaluation.to_dict()` (the JSON itself), so the
markdown and the figures cannot disagree with the JSON they sit beside. Table layout as in
Li et al. 2024: rows = method and head, columns = source→target pairs (the in-domain pair
first), then the cross-domain average (targets only) and the paper's average over every
column; cells are accuracy mean ± std over folds, in percent.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

SETTING_TITLES = {
    "all": "All source classes (targets scored on their own labels)",
    "shared": "Classes shared by every domain",
}
SAME_TITLE = "All source classes, which every domain shares (the two class settings are one here)"
METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def percent(score: dict[str, Any], digits: int = 1) -> str:
    """A JSON mean/std score as `mean ± std` in percent (`–` where it is missing)."""
    mean, std = score.get("mean"), score.get("std")
    if mean is None or std is None or not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def domain_order(results: dict[str, Any]) -> list[str]:
    return [results["source"], *results["targets"]]


def table(results: dict[str, Any], setting: str, metric: str = "accuracy") -> str:
    """The markdown table of one class setting and one metric (`accuracy` or `macro_f1`)."""
    source, domains = results["source"], domain_order(results)
    with_averages = metric == "accuracy" and len(domains) > 1
    header = ["method", "head", *[f"{source}→{d}" for d in domains]]
    if with_averages:
        header += ["cross-domain avg", "avg (all columns)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["settings"][setting]["rows"]:
        cells = [row["method"], row["head"], *[percent(row["domains"][d][metric]) for d in domains]]
        if with_averages:
            cells += [percent(row["cross_domain_average"]), percent(row["average_all_columns"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The whole report: per class setting, an accuracy table and a macro-F1 table."""
    protocol = results["protocol"]
    parts = [
        f"# Cross-domain evaluation: source `{results['source']}`",
        "",
        (f"{protocol['folds']}-fold stratified CV on `{results['source']}` (seed {protocol['seed']}); each head "
         f"(standard scaler + {', '.join(protocol['heads'])}) is fit on the training folds and tested on the "
         "held-out fold and on all of every other domain. Mean ± std over folds, in percent."),
    ]
    shown = distinct_settings(results)
    merged = len(shown) < len(results["settings"])
    for setting in shown:
        data = results["settings"][setting]
        heading = SAME_TITLE if merged and setting == "all" else SETTING_TITLES.get(setting, setting)
        parts += ["", f"## {heading}", "", f"Classes the heads learn: {', '.join(data['classes'])}.", ""]
        for metric, title in METRICS.items():
            parts += [f"**{title}**", "", table(results, setting, metric), ""]
    for note in results.get("notes", []):
        parts += [f"- {note}"]
    return "\n".join(parts).rstrip() + "\n"


def distinct_settings(results: dict[str, Any]) -> list[str]:
    """The class settings to show: `shared` is left out when its rows are those of `all` (every source
    class is in every domain and no target holds another class, so the two settings are one)."""
    settings = results["settings"]
    if "all" in settings and "shared" in settings and settings["all"]["rows"] == settings["shared"]["rows"]:
        return [s for s in settings if s != "shared"]
    return list(settings)


def slug(text: str) -> str:
    """A file-name-safe version of a method name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "method"


def plot_confusions(row: dict[str, Any], domains: list[str], source: str, path: Path) -> Path:
    """One PNG with one row-normalised confusion matrix per test domain (counts written in each cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 4.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        confusion = row["domains"][domain]["confusion"]
        counts = np.asarray(confusion["counts"], dtype=float)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, f"{int(n)}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(confusion["columns"])), confusion["columns"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(confusion["rows"])), confusion["rows"], fontsize=7)
        accuracy = percent(row["domains"][domain]["accuracy"])
        ax.set_title(f"{source}→{domain}: {accuracy} %", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0][0].set_ylabel("true", fontsize=8)
    fig.suptitle(f"{row['method']} / {row['head']} (counts summed over folds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: str | Path, confusion: bool = True) -> dict[str, Any]:
    """Write results.json, results.md and (optionally) one confusion PNG per setting, method and head.

    Returns:
        The paths written: `json`, `markdown`, `confusion` (a list).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(results))
    pngs = []
    if confusion:
        for setting, data in results["settings"].items():
            for row in data["rows"]:
                name = f"confusion_{setting}_{slug(row['method'])}_{row['head']}.png"
                pngs.append(plot_confusions(row, domain_order(results), results["source"], out / "confusion" / name))
    return {"json": json_path, "markdown": md_path, "confusion": pngs}


def _clean(value: Any) -> Any:
    """JSON-ready data: NaN/inf become null, numpy values plain Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
