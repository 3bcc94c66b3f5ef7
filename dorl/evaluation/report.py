"""Evaluation reports: results.json, results.md, a summary PNG and confusion PNGs.

Everything here reads the plain dict of `Evaluation.to_dict()` (the JSON itself), so the
markdown and the figures cannot disagree with the JSON they sit beside. The headline table
gives each row's in-domain accuracy and its cross-lab balanced accuracy, macro-F1 and accuracy
(mean ± 95 % interval over the splits), with the majority class's scores as the last row;
then each domain's class counts, the paired differences with their verdicts, and per-domain
tables in the paper's layout (Li et al. 2024: columns = source→target pairs, the in-domain pair
first; mean ± std over splits).
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
METRICS = {"balanced_accuracy": "balanced accuracy", "accuracy": "accuracy", "macro_f1": "macro-F1"}


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


def interval(score: dict[str, Any], digits: int = 1) -> str:
    """A JSON score as `mean ± half-width of its 95 % interval` in percent (`–` where missing)."""
    mean, half = score.get("mean"), score.get("ci95")
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * half:.{digits}f}"


def headline(results: dict[str, Any], setting: str) -> str:
    """The honest table: per row the in-domain accuracy, then cross-lab balanced accuracy, macro-F1 and
    accuracy (mean over the targets) and each target's balanced accuracy, all `mean ± 95 % interval`;
    the majority-class row last (a constant answer: no interval)."""
    source, targets = results["source"], results["targets"]
    data = results["settings"][setting]
    header = ["method", "head", f"{source} accuracy (in-domain)", "cross-lab balanced accuracy", "cross-lab macro-F1",
              "cross-lab accuracy", *[f"{t} balanced accuracy" for t in targets]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in data["rows"]:
        cells = [row["method"], row["head"], interval(row["domains"][source]["accuracy"]),
                 *[interval(row["cross_lab"][m]) for m in ("balanced_accuracy", "macro_f1", "accuracy")],
                 *[interval(row["domains"][t]["balanced_accuracy"]) for t in targets]]
        lines.append("| " + " | ".join(cells) + " |")
    majority = data.get("majority", {})
    if majority:
        def mean_of(metric: str) -> str:
            values = [majority[t][metric] for t in targets if t in majority]
            return _plain(sum(values) / len(values)) if values else "–"

        cells = ["majority class of each domain", "constant", _plain(majority[source]["accuracy"]),
                 mean_of("balanced_accuracy"), mean_of("macro_f1"), mean_of("accuracy"),
                 *[_plain(majority[t]["balanced_accuracy"]) for t in targets]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_table(results: dict[str, Any], setting: str) -> str:
    """Each domain's cells per class and its majority class's share; classes under 5 cells in italics."""
    data = results["settings"][setting]
    counts, majority = data.get("class_counts", {}), data.get("majority", {})
    classes = sorted({c for per in counts.values() for c in per})
    header = ["domain", *classes, "cells", "majority class (share)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for domain, per in counts.items():
        cells = [f"*{per[c]}*" if 0 < per.get(c, 0) < 5 else str(per.get(c, 0)) for c in classes]
        top = majority.get(domain, {})
        share = f"{top.get('class')} ({_plain(top.get('accuracy'))} %)" if top else "–"
        lines.append("| " + " | ".join([domain, *cells, str(sum(per.values())), share]) + " |")
    return "\n".join(lines)


def comparisons_table(results: dict[str, Any], setting: str) -> str:
    """Paired differences of cross-lab balanced accuracy, mean ± 95 % interval, with their verdicts."""
    lines = ["| method | against | head | difference (points) | verdict |", "|---|---|---|---|---|"]
    for c in results["settings"][setting].get("comparisons", []):
        lines.append(f"| {c['method']} | {c['reference']} | {c['head']} | "
                     f"{interval({'mean': c['mean'], 'ci95': c['ci95']})} | {c['verdict']} |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The whole report: per class setting, the headline table, class counts, paired differences, and
    per-domain accuracy and macro-F1 tables."""
    protocol = results["protocol"]
    seeds = protocol.get("seeds", [protocol["seed"]])
    parts = [
        f"# Cross-domain evaluation: source `{results['source']}`",
        "",
        (f"{protocol['folds']}-fold stratified CV on `{results['source']}`, repeated with {len(seeds)} seed(s) "
         f"({', '.join(map(str, seeds))}); each head (standard scaler + {', '.join(protocol['heads'])}) is fit on "
         "the training folds and tested on the held-out fold and on all of every other domain. Headline: balanced "
         "accuracy (mean recall over a domain's classes; a constant answer scores 1/k). Cells: mean ± half-width of "
         f"the 95 % interval over the {len(seeds) * protocol['folds']} splits (Student t), in percent."),
    ]
    shown = distinct_settings(results)
    merged = len(shown) < len(results["settings"])
    for setting in shown:
        data = results["settings"][setting]
        heading = SAME_TITLE if merged and setting == "all" else SETTING_TITLES.get(setting, setting)
        parts += ["", f"## {heading}", "", f"Classes the heads learn: {', '.join(data['classes'])}.", "",
                  headline(results, setting), ""]
        if data.get("class_counts"):
            parts += ["**Cells per class**", "", counts_table(results, setting), ""]
            small = data.get("small_classes", {})
            for domain, names in small.items():
                parts += [f"- `{domain}`: fewer than 5 cells in {', '.join(names)}; their recall is a handful of cells."]
            if small:
                parts.append("")
        if data.get("comparisons"):
            parts += ["**Paired differences** (cross-lab balanced accuracy; an interval holding 0 is no difference)",
                      "", comparisons_table(results, setting), ""]
        for metric, title in METRICS.items():
            parts += [f"**{title} per domain** (mean ± std over splits)", "", table(results, setting, metric), ""]
    for note in results.get("notes", []):
        parts += [f"- {note}"]
    return "\n".join(parts).rstrip() + "\n"


def _plain(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


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

    from dorl.evaluation.figures import draw_confusion

    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 4.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        draw_confusion(ax, row["domains"][domain]["confusion"], fontsize=7)
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
    """Write results.json, results.md, one summary PNG per shown class setting (bars with intervals,
    the best row's confusion matrices) and (optionally) one confusion PNG per setting, method and head.

    Returns:
        The paths written: `json`, `markdown`, `summary` and `confusion` (lists).
    """
    from dorl.evaluation.figures import plot_summary

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    results = _clean(results)  # what the JSON holds is what the markdown and figures show
    json_path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(results))
    summaries = [plot_summary(results, s, out / f"summary_{s}.png") for s in distinct_settings(results)
                 if results["settings"][s]["rows"]]
    pngs = []
    if confusion:
        for setting, data in results["settings"].items():
            for row in data["rows"]:
                name = f"confusion_{setting}_{slug(row['method'])}_{row['head']}.png"
                pngs.append(plot_confusions(row, domain_order(results), results["source"], out / "confusion" / name))
    return {"json": json_path, "markdown": md_path, "summary": summaries, "confusion": pngs}


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
