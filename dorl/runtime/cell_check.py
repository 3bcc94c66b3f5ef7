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

# Mask limits, measured on the real cells of three labs (README, "No cell"); a share of the image.
MIN_AREA = 0.01
MAX_AREA = 0.90
MAX_BORDER = 0.60  # share of the image's border pixels under the mask
SHRINK = 0.1  # per-feature variance shrunk this far towards the mean variance
# The distance above which a feature is "not a source cell" when the artifact records no
# calibrated threshold: see `FeatureDistance.from_source`.
DEFAULT_QUANTILE = 0.99


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

        Without a recorded threshold, the `DEFAULT_QUANTILE` of the distance is taken from the
        normal model of the recorded covariance (`normal_quantile`).
        """
        mean = np.asarray(source["mean"], dtype=np.float64).reshape(-1)
        variance = np.asarray(source["std"], dtype=np.float64).reshape(-1) ** 2
        variance = (1 - SHRINK) * variance + SHRINK * max(float(variance.mean()), 1e-12)
        scale = np.sqrt(variance)
        if threshold is not None:
            return cls(mean, scale, float(threshold), "given")
        if "distance_threshold" in source:
            return cls(mean, scale, float(np.asarray(source["distance_threshold"]).reshape(-1)[0]),
                       "recorded with the artifact (held-out source cells)")
        return cls(mean, scale, normal_quantile(source, scale, DEFAULT_QUANTILE),
                   f"normal model of the source covariance, {DEFAULT_QUANTILE:.0%} quantile")


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
                         f"{self.distance.threshold:.2f}: not a white cell like those the model learned")
        return tuple(found)
