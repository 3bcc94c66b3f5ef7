"""Guard rails of site profiles: when a fit, a stored map or a profile's use cannot be trusted.

A site profile is an affine map in front of the classifier. A degenerate one makes the analyzer
certain and wrong: 60 copies of one image give a per-feature spread near zero and a scale of
1e8; three cells cannot estimate a 320x320 covariance; NaN statistics silently unlabel every
cell; the profile of another lab moves correct features away from the source. Each check here
turns one of those into a sentence that says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dorl.errors import DorlError

# Cells a method needs at least: the mean of D features is stable from a few dozen cells; the
# per-feature spread needs more; a full DxD covariance (coral) needs more cells than features.
METHOD_MIN_CELLS = {"mean": 20, "standardise": 50}
CORAL_CELLS_PER_FEATURE = 1.0
# The map's scale: singular values of A within [1/MAX_SCALE, MAX_SCALE]. Real labs measured here
# need at most ~3 (README, "Site profiles"); 60 copies of one image asked for 3.5e8.
MAX_SCALE = 20.0
# The site's mean at most this many source standard deviations from the source's, per feature.
MAX_SHIFT = 50.0
# The site's total variance at least this share of the source's (copies of one image: ~0).
MIN_SPREAD = 1e-3
# At predict time: warn when cells sit this far (mean |z| of their mean, in the site's own
# standard deviations) from the profile's site, once enough cells were seen.
WATCH_DRIFT = 1.0
WATCH_MIN_CELLS = 16


class SiteProfileError(DorlError):
    """A site profile cannot be made or does not fit the artifact."""


def min_cells_for(method: str, dim: int) -> int:
    """The fewest distinct cells `method` needs for features of `dim` dimensions."""
    if method == "coral":
        return max(METHOD_MIN_CELLS["standardise"], int(np.ceil(CORAL_CELLS_PER_FEATURE * dim)) + 1)
    return METHOD_MIN_CELLS.get(method, METHOD_MIN_CELLS["standardise"])


def check_cell_count(site: str, method: str, n: int, dim: int, min_cells: int) -> None:
    """Refuse fitting `method` on fewer than max(min_cells, what the method needs) cells."""
    needed = max(min_cells, min_cells_for(method, dim))
    if n < needed:
        why = (f"the {method} map needs at least {min_cells_for(method, dim)} for {dim} features"
               if needed > min_cells else f"at least {needed} are asked for (--min-cells)")
        raise SiteProfileError(
            f"only {n} distinct usable cells from site {site!r}; {why}: give a folder with more cells of this site"
            + (" or use --method mean." if method != "mean" else ".")
        )


def check_spread(site: str, site_variance: np.ndarray, source_std: np.ndarray) -> None:
    """Refuse site cells that barely vary compared with the source's (copies, blank frames)."""
    ratio = float(np.sum(site_variance) / max(float(np.sum(source_std.astype(np.float64) ** 2)), 1e-30))
    if not np.isfinite(ratio) or ratio < MIN_SPREAD:
        raise SiteProfileError(
            f"the cells of site {site!r} barely differ from each other (total feature variance {ratio:.1e} of the "
            "source's): they look like copies of one image or blank frames; give real, distinct cells of the site."
        )


def check_map(a: np.ndarray, b: np.ndarray, where: str, source: dict[str, np.ndarray] | None = None,
              site_mean: np.ndarray | None = None, site_std: np.ndarray | None = None) -> None:
    """Refuse a map x' = A x + b that is not finite, mis-shaped or implausibly scaled or shifted.

    Args:
        a, b: the map.
        where: the profile's name or folder, for the message.
        source: the artifact's source statistics (`mean`, `std`): with them, the dimension is
            checked and the shift measured in source standard deviations.
        site_mean, site_std: the site's statistics: without `source`, the shift of the site's own
            mean is measured in the site's standard deviations.
    """
    problem = None
    if a.ndim != 2 or a.shape[0] != a.shape[1] or b.shape != (a.shape[0],):
        problem = f"its map has shapes A {a.shape} and b {b.shape}"
    elif not (np.isfinite(a).all() and np.isfinite(b).all()):
        problem = "its map holds NaN or infinite values"
    elif source is not None and a.shape[0] != source["mean"].shape[0]:
        problem = f"its map is for {a.shape[0]} features and this artifact has {source['mean'].shape[0]}"
    else:
        singular = np.linalg.svd(a, compute_uv=False)
        if singular.max() > MAX_SCALE or singular.min() < 1 / MAX_SCALE:
            problem = (f"its map scales features by {singular.min():.3g} to {singular.max():.3g}, outside "
                       f"[1/{MAX_SCALE:g}, {MAX_SCALE:g}]; such a map comes from degenerate cells")
        else:
            shift = _shift(a, b, source, site_mean, site_std)
            if shift is not None and shift > MAX_SHIFT:
                problem = f"its map moves a feature by {shift:.3g} standard deviations, above {MAX_SHIFT:g}"
    if problem is not None:
        raise SiteProfileError(f"site profile {where} cannot be used: {problem}; run `dorl adapt` again on real "
                               "cells of the site.")


def _shift(a: np.ndarray, b: np.ndarray, source: dict[str, np.ndarray] | None, site_mean: np.ndarray | None,
           site_std: np.ndarray | None) -> float | None:
    """How far the map moves the source's mean (in source std) or the site's (in site std), at most."""
    if source is not None:
        centre, spread = np.asarray(source["mean"], np.float64), np.asarray(source["std"], np.float64)
    elif site_mean is not None and site_std is not None:
        centre, spread = site_mean.astype(np.float64), site_std.astype(np.float64)
    else:
        return None
    moved = np.abs(a @ centre + b - centre) / np.maximum(spread, 1e-12)
    return float(moved.max())


def manifest_field(manifest: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """A site-profile manifest field of the expected type (a malformed one is refused, not a traceback)."""
    value: Any = manifest.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise SiteProfileError(f"site profile {where} has no valid {key!r} in its manifest (found {value!r}): the "
                               "profile is corrupt; run `dorl adapt` again.")
    if kind is float and not np.isfinite(np.asarray(value, dtype=np.float64)):
        raise SiteProfileError(f"site profile {where} records {key!r} = {value}: the profile is corrupt; run "
                               "`dorl adapt` again.")
    return value


class DriftWatch:
    """Watches the raw features of analysed cells against a lab's statistics, and warns once.

    A site profile's map is right only for the lab it was made for; applied to another lab's
    cells it moves them away from the source while the head stays confident. Without a profile,
    cells of a lab the model was not adapted to sit far from the source and are answered "no
    cell". The running mean of the cells, in the lab's own standard deviations, says when either
    is happening.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, warn: Callable[[str], None] | None,
                 message: Callable[[int, float], str]) -> None:
        """Args: `mean`, `std` of the expected lab; `message(cells, drift)` is the warning."""
        self.mean, self.std = np.asarray(mean, np.float64), np.maximum(np.asarray(std, np.float64), 1e-6)
        self.warn, self.message = warn, message
        self.n = 0
        self.total = np.zeros_like(self.mean)
        self.warned = False

    @classmethod
    def of_site(cls, profile: Any, warn: Callable[[str], None] | None) -> DriftWatch:
        """Cells against the site of a profile: the wrong profile for these cells."""
        def message(n: int, drift: float) -> str:
            return (f"the {n} cells analysed so far sit {drift:.1f} standard deviations (mean |z|) from site "
                    f"{profile.site!r} of this profile: it looks like the wrong profile for these cells; check "
                    "--site, or make a profile for this lab with `dorl adapt`.")

        return cls(profile.stats.mean, profile.stats.std, warn, message)

    @classmethod
    def of_source(cls, source: dict[str, np.ndarray], warn: Callable[[str], None] | None) -> DriftWatch:
        """Cells against the source lab, when no profile is applied: an unadapted lab."""
        def message(n: int, drift: float) -> str:
            return (f"the {n} cells analysed so far sit {drift:.1f} standard deviations (mean |z|) from the cells "
                    "this model was trained on: if they come from another lab, most will be answered 'no cell' "
                    "and labels would be unreliable; make a site profile for this lab with `dorl adapt` and pass "
                    "it with --site.")

        return cls(source["mean"], source["std"], warn, message)

    def update(self, features: np.ndarray) -> float | None:
        """Add a batch's features; returns the current drift once enough cells were seen."""
        features = np.asarray(features, dtype=np.float64)
        if features.size == 0:
            return None
        self.n += features.shape[0]
        self.total += features.sum(axis=0)
        if self.n < WATCH_MIN_CELLS:
            return None
        drift = float(np.mean(np.abs(self.total / self.n - self.mean) / self.std))
        if drift > WATCH_DRIFT and not self.warned and self.warn is not None:
            self.warned = True
            self.warn(self.message(self.n, drift))
        return drift
