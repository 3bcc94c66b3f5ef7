"""Paired differences between two rows of the table, and whether they are a difference at all.

Two rows scored with the same protocol were fit and tested on the very same splits (the same
seeds, the same folds), so their per-split scores pair up. The difference of two methods is
the mean of the per-split differences with its 95 % interval (Student's t over the splits,
`dorl.evaluation.metrics.ci95`); when that interval holds 0 the verdict is "no difference",
not a win for the larger mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dorl.evaluation.metrics import ci95

NO_DIFFERENCE = "no difference"


def verdict(mean: float, half_width: float) -> str:
    """"better" / "worse" when the 95 % interval mean ± half_width excludes 0, else "no difference"."""
    if not (np.isfinite(mean) and np.isfinite(half_width)) or abs(mean) <= half_width:
        return NO_DIFFERENCE
    return "better" if mean > 0 else "worse"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of a - b over paired split values, its 95 % half-width and the verdict for a against b.

    Raises:
        ValueError: the two sequences are not paired (different lengths).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same splits, got {x.size} and {y.size} values.")
    diff = x - y
    mean = float(diff.mean()) if diff.size else float("nan")
    half = ci95(diff.tolist())
    return {"mean": mean, "ci95": half, "verdict": verdict(mean, half)}


def _key(row: Mapping[str, Any], vary: str) -> tuple[Any, ...]:
    tags = row.get("tags", {})
    return (row["head"], *[(k, v) for k, v in sorted(tags.items()) if k != vary])


def compare_rows(rows: Sequence[Mapping[str, Any]], vary: str, reference: str,
                 metric: str = "balanced_accuracy") -> list[dict[str, Any]]:
    """Every row against the row that differs from it only in tag `vary`, set to `reference`.

    E.g. vary="feature", reference="pooled tokens": each CAE row against pooled tokens on the
    same input framing, adaptation and head. Scores are the rows' cross-lab values of `metric`
    (mean over the targets, per split).

    Args:
        rows: rows as in `Evaluation.to_dict()` (each with `tags`, `head`, `cross_lab`).
        vary: the tag that differs.
        reference: its value in the reference row.
        metric: balanced_accuracy, macro_f1 or accuracy.

    Returns:
        One entry per compared row: method, reference method, head, metric, mean difference, ci95, verdict.
    """
    references = {_key(r, vary): r for r in rows if r.get("tags", {}).get(vary) == reference}
    out = []
    for row in rows:
        tag = row.get("tags", {}).get(vary)
        ref = references.get(_key(row, vary))
        if tag is None or tag == reference or ref is None:
            continue
        diff = paired_difference(row["cross_lab"][metric]["folds"], ref["cross_lab"][metric]["folds"])
        out.append({"method": row["method"], "reference": ref["method"], "head": row["head"], "metric": metric,
                    "compared": f"{vary}: {tag} vs {reference}", **diff})
    return out
