"""Deciding that an image holds no analysable white cell: from its mask and from its feature.

A classifier always names one of its classes; a black frame, an empty field, noise or a
platelet would get a confident white-cell label. Two independent signals say "no cell" instead:

- the mask (the graph's segmentation, largest component): empty, too small or too large a share
  of the image, or lying along the image's border rather than on a cell;
- the feature: its distance to the feature distribution of the source cells the model was
  trained on (mean and per-feature spread recorded in the artifact beside the head; the
  spread is shrunk towards its average so that near-constant features cannot dominate).

The decision works on one (mask, feature) pair and knows nothing of how the image was framed,
so a cell-centric pipeline (segment, crop, classify) uses it unchanged. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Mask limits (shares of the image), loose enough that no real cell of three labs (1,201 images)
# trips them with the CPU-trained model, whose pbc masks often hold only the nucleus (README, "No cell").
MIN_AREA = 0.0  # only an empty mask
MAX_AREA = 0.95
MAX_BORDER = 0.80  # share of the image's border pixels under the mask
SHRINK = 0.1  # per-feature variance shrunk this far towards the mean variance
# A recorded threshold is this quantile of held-out source cells' distances (`calibrate_threshold`).
QUANTILE = 0.99
# Without one, this quantile of the normal model: real features have heavier tails than a normal
# distribution, and its 99.9 % lands near the 99 % of held-out cells (2.13 vs 1.90 on the README's bundle).
NORMAL_QUANTILE = 0.999


@dataclass(frozen=True)
class MaskLimits:
    """When a mask says "no cell": shares of the image (area) and of its border pixels."""

    min_area: float = MIN_AREA
    max_area: float = MAX_AREA
    max_border: float = MAX_BORDER

    def reasons(self, mask: np.ndarray | None) -> list[str]:
        """Why this low-resolution mask holds no analysable cell (empty list: it may hold one)."""
        if mask is None:
            return []
        area, border = mask_area(mask), border_share(mask)
        if area == 0.0:
            return ["the mask is empty: nothing was segmented"]
        found = []
        if area < self.min_area:
            found.append(f"the mask covers {area:.1%} of the image, below {self.min_area:.0%}")
        if area > self.max_area:
            found.append(f"the mask covers {area:.1%} of the image, above {self.max_area:.0%}")
        if border > self.max_border:
            found.append(f"the mask runs along {border:.0%} of the image's border: a background or "
                         "a frame, not a cell")
        return found


def mask_area(mask: np.ndarray) -> float:
    """The share of the image the mask covers."""
    return float(mask.mean()) if mask.size else 0.0


def border_share(mask: np.ndarray) -> float:
    """The share of the image's border pixels that the mask covers."""
    if mask.ndim != 2 or min(mask.shape) < 2:
        return 0.0
    edge = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(edge.mean())


@dataclass(frozen=True, eq=False)
class FeatureDistance:
    """The root-mean-square z-score of a feature under the source cells' statistics."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D] shrunk standard deviation
    threshold: float  # distances above this are not source cells
    calibration: str  # where the threshold comes from, for reports

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Distances [B] of features [B, D] (NaN for rows that are not finite)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.sqrt(np.mean(z * z, axis=-1))

    @classmethod
    def from_source(cls, source: dict[str, np.ndarray], threshold: float | None = None) -> FeatureDistance:
        """The distance of an artifact's recorded source statistics.

        Args:
            source: `mean`, `std` and, when recorded, `cov`, `n` and `distance_threshold` (a
                quantile of held-out source cells' distances, recorded when the bundle was made).
            threshold: overrides the recorded threshold.

        Without a recorded threshold, the `NORMAL_QUANTILE` of the distance is taken from the
        normal model of the recorded covariance (`normal_quantile`).
        """
        mean = np.asarray(source["mean"], dtype=np.float64).reshape(-1)
        scale = shrunk_scale(np.asarray(source["std"], dtype=np.float64).reshape(-1))
        if threshold is not None:
            return cls(mean, scale, float(threshold), "given")
        if "distance_threshold" in source:
            return cls(mean, scale, float(np.asarray(source["distance_threshold"]).reshape(-1)[0]),
                       f"recorded with the bundle ({QUANTILE:.0%} of held-out source cells)")
        return cls(mean, scale, normal_quantile(source, scale, NORMAL_QUANTILE),
                   f"normal model of the source covariance, {NORMAL_QUANTILE:.1%} quantile")


def shrunk_scale(std: np.ndarray) -> np.ndarray:
    """Per-feature standard deviations with the variance shrunk `SHRINK` of the way to its mean."""
    variance = std.astype(np.float64) ** 2
    return np.sqrt((1 - SHRINK) * variance + SHRINK * max(float(variance.mean()), 1e-12))


def calibrate_threshold(features: np.ndarray, quantile: float = QUANTILE, folds: int = 5, seed: int = 0) -> float:
    """The distance threshold of source cells: the `quantile` of held-out cells' distances.

    Each of `folds` folds is measured against the statistics (mean, standard deviation) of the
    other folds, so the threshold reflects cells the statistics have not seen, as the analyzer's
    cells are. Recorded with the bundle's source statistics as `distance_threshold`.

    Args:
        features: the source cells' classification features [N, D], N >= 2 * folds.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 * folds:
        raise ValueError(f"calibrating the distance needs at least {2 * folds} feature rows, got {x.shape}")
    parts = np.array_split(np.random.default_rng(seed).permutation(x.shape[0]), folds)
    held = []
    for k, test in enumerate(parts):
        train = x[np.concatenate([p for j, p in enumerate(parts) if j != k])]
        distance = _distance_of(train.mean(axis=0), train.std(axis=0, ddof=1))
        held.append(distance(x[test]))
    return float(np.quantile(np.concatenate(held), quantile))


def _distance_of(mean: np.ndarray, std: np.ndarray) -> FeatureDistance:
    """A distance (without a threshold) from a mean and standard deviations."""
    return FeatureDistance(mean.astype(np.float64), shrunk_scale(std), float("inf"), "none")


def normal_quantile(source: dict[str, np.ndarray], scale: np.ndarray, quantile: float,
                    samples: int = 40_000, seed: int = 0) -> float:
    """The `quantile` of the RMS z-score of normal features with the source's covariance.

    The squared distance is a weighted sum of independent chi-square(1) variables whose weights
    are the eigenvalues of the standardised covariance; its quantile is taken from `samples`
    draws of that sum (fixed seed, so the threshold is the same on every start).
    """
    d = scale.shape[0]
    if "cov" in source:
        cov = np.asarray(source["cov"], dtype=np.float64)
        weights = np.clip(np.linalg.eigvalsh(cov / np.outer(scale, scale)), 0.0, None)
    else:  # independent features
        weights = (np.asarray(source["std"], dtype=np.float64) / scale) ** 2
    rng = np.random.default_rng(seed)
    sums = np.concatenate([(rng.standard_normal((4_000, d)) ** 2) @ weights for _ in range(samples // 4_000)])
    return float(np.sqrt(np.quantile(sums, quantile) / d))


@dataclass(frozen=True, eq=False)
class CellCheck:
    """The "no cell" decision on one image's (mask, feature distance)."""

    mask: MaskLimits = MaskLimits()
    distance: FeatureDistance | None = None  # None: the artifact carries no source statistics

    def reasons(self, mask: np.ndarray | None, distance: float | None) -> tuple[str, ...]:
        """Why the image holds no analysable white cell; empty when it may hold one."""
        found = self.mask.reasons(mask)
        if self.distance is not None and distance is not None and distance > self.distance.threshold:
            found.append(f"its feature lies {distance:.2f} (RMS z-score) from the source cells, beyond "
                         f"{self.distance.threshold:.2f}: not a white cell like those the model learned (or a cell "
                         "of a lab without a site profile: see `dorl adapt`)")
        return tuple(found)
