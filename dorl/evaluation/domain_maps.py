"""Per-domain feature maps applied after the protocol's class restriction, from unlabelled cells only.

`align_to_source` is site adaptation as the runtime applies it (`dorl.runtime.site_profile`);
`standardise_per_domain` is the per-domain standardisation baseline. Features may be [N, D] or
[N, V, D] (test-time views): the statistics come from the plain view, as a site profile is made
from the analyzer's plain `feature` output, and the map is applied to every view.
"""

from __future__ import annotations

import numpy as np

from dorl.evaluation.protocol import DomainArrays, plain_view
from dorl.runtime.site_profile import DEFAULT_METHOD, RunningStats, affine_map


def standardise_per_domain(domains: DomainArrays, eps: float = 1e-6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each domain's features standardised by its own mean/std over all its cells (no labels used)."""
    out = {}
    for name, (x, y) in domains.items():
        x = np.asarray(x, dtype=np.float64)
        plain = plain_view(x)
        out[name] = (((x - plain.mean(axis=0)) / (plain.std(axis=0) + eps)).astype(np.float32), y)
    return out


def align_to_source(domains: DomainArrays, method: str = DEFAULT_METHOD) -> DomainArrays:
    """Site adaptation exactly as the runtime applies it (`dorl.runtime.site_profile`): every domain
    but the first (the source) is moved onto the source's feature statistics with the affine map
    estimated from its own cells (no labels); the source is left as it is (its own profile is the
    identity), so in-domain scores cannot change. `method`: see `dorl.runtime.site_profile`
    (default: what `dorl adapt` uses).
    """
    names = list(domains)
    source_stats = _statistics(plain_view(domains[names[0]][0]))
    source = {"mean": source_stats.mean, "std": source_stats.std, "cov": source_stats.cov}
    out = {names[0]: domains[names[0]]}
    for name in names[1:]:
        x, y = domains[name]
        a, b = affine_map(source, _statistics(plain_view(x)), method)
        out[name] = ((np.asarray(x, dtype=np.float64) @ a.T + b).astype(np.float32), y)
    return out


def _statistics(features: np.ndarray) -> RunningStats:
    stats = RunningStats(features.shape[1])
    stats.update(features)
    return stats
