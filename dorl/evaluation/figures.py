"""The evaluation's summary figure: every row's cross-lab balanced accuracy with its 95 % interval,
the majority-class level, and the confusion matrices of the best row on each target.

Reads the plain dict of `Evaluation.to_dict()`, as the markdown does, so the figure cannot
disagree with the JSON beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest mean cross-lab balanced accuracy (the first on ties)."""
    def score(row: dict[str, Any]) -> float:
        mean = row["cross_lab"]["balanced_accuracy"]["mean"]
        return mean if mean is not None and math.isfinite(mean) else -1.0

    return max(rows, key=score)


def draw_confusion(ax: Any, confusion: dict[str, Any], fontsize: int) -> None:
    """A row-normalised confusion matrix on `ax`, each cell's count written in it."""
    import numpy as np

    counts = np.asarray(confusion["counts"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for (r, c), n in np.ndenumerate(counts):
        ax.text(c, r, f"{int(n)}", ha="center", va="center", fontsize=fontsize,
                color="white" if share[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(confusion["columns"])), confusion["columns"], rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(confusion["rows"])), confusion["rows"], fontsize=fontsize)


def plot_summary(results: dict[str, Any], setting: str, path: Path) -> Path:
    """One PNG: bars (cross-lab balanced accuracy ± 95 % interval, one per row; dashed: the majority
    class's balanced accuracy) above the row-normalised confusion matrices of the best row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = results["settings"][setting]
    rows, targets = data["rows"], results["targets"]
    labels = [f"{r['method']} / {r['head']}" for r in rows]
    means = [100 * (r["cross_lab"]["balanced_accuracy"]["mean"] or 0.0) for r in rows]
    halves = [100 * _finite(r["cross_lab"]["balanced_accuracy"].get("ci95")) for r in rows]
    columns = max(1, len(targets))
    fig = plt.figure(figsize=(max(9.0, 4.2 * columns), 0.32 * len(rows) + 6.5))
    grid = fig.add_gridspec(2, columns, height_ratios=[0.32 * len(rows) + 1.5, 4.5])
    bars = fig.add_subplot(grid[0, :])
    position = np.arange(len(rows))[::-1]
    bars.barh(position, means, xerr=halves, color="#4c72b0", ecolor="black", capsize=3)
    bars.set_yticks(position, labels, fontsize=7)
    majority = data.get("majority", {})
    levels = [majority[t]["balanced_accuracy"] for t in targets if t in majority]
    if levels:
        bars.axvline(100 * sum(levels) / len(levels), color="grey", linestyle="--", label="majority class")
        bars.legend(fontsize=7, loc="lower right")
    bars.set_xlabel("cross-lab balanced accuracy, % (mean over targets ± 95 % interval)", fontsize=8)
    bars.set_xlim(0, 100)
    best = best_row(rows) if rows else None
    for i, target in enumerate(targets):
        if best is None:
            break
        ax = fig.add_subplot(grid[1, i])
        draw_confusion(ax, best["domains"][target]["confusion"], fontsize=6)
        ax.set_title(f"{results['source']}→{target}, best row (summed over splits)", fontsize=8)
    if best is not None:
        fig.suptitle(f"best: {best['method']} / {best['head']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else 0.0
