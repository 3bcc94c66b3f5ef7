"""Deciding that an image holds no analysable white cell: from its mask and from its feature.

A classifier always names one of its classes; a black frame, an empty field, noise or a
platelet would get a confident white-cell label. Two independent signals say "no cell" instead:

- the mask (the graph's segmentation, largest component): empty, too small or too large a share
  of the image, or lying along the image's border rather than on a cell;
- the feature: its distance to the feature distribution of the source cells the model was
  trained on (mean and per-feature spread recorded in the artifact beside the head; the
  spread is shrunk towards its average so that near-constant features cannot dominate);
- the feature's side of a linear discriminant between the source cells and images known to hold
  no white cell (e.g. the source lab's platelet images), when one was fitted at export
  (`fit_non_cell`): such images share the source lab's stain and background, so they sit close
  to the source cells by distance, but on their own side of that direction.

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
# A recorded threshold is this quantile of held-out source cells' distances (`calibrate_threshold`), and
# the stain floor and the non-cell discriminant let the same share of source cells through. The checks
# refuse different cells, so their refusals add up, and held-out cells run past a quantile estimated
# from the others more often than its nominal share: 0.995 each keeps the analyzer within its budget of
# 2 % of real source cells answered "no cell" (0.99 each refused 2.5 % of held-out pbc cells).
QUANTILE = 0.995
# Without one, this quantile of the normal model: real features have heavier tails than a normal
# distribution, and its 99.9 % lands near the 99 % of held-out cells (2.13 vs 1.90 on the README's bundle).
NORMAL_QUANTILE = 0.999
# The non-cell discriminant's covariance is shrunk this far towards its mean variance (as the distance's).
DISCRIMINANT_SHRINK = SHRINK
# Source-cell statistics and non-cell images it is fitted from, at least.
MIN_NON_CELLS = 10
NON_CELL_KEYS = ("noncell_weight", "noncell_threshold", "noncell_images")
# A Romanowsky-stained (May-Grünwald-Giemsa, Wright) nucleus is purple: red and blue well above
# green. Pale backgrounds and red cells lie below this level of (R + B) / 2 - G (0-255 scale).
STAIN_LEVEL = 50.0
STAIN_SIDE = 56  # the stain map's side: the image is averaged down to it first
MIN_STAIN_KEY = "noncell_min_stain"


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


def stain_area(image: np.ndarray) -> float:
    """The share of the image covered by its largest stained (purple) region: a nucleus's size.

    Args:
        image: uint8 [S, S, 3], the model's input (the image resized as for the graph), so the
            share is measured on the same framing the source lab's cells were calibrated on.
    """
    from dorl.runtime.postprocess import largest_component

    x = np.asarray(image, dtype=np.float32)
    side = x.shape[0]
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[1] != side or side < STAIN_SIDE:
        raise ValueError(f"the stain map needs a square RGB image of at least {STAIN_SIDE} pixels, got {x.shape}")
    if side % STAIN_SIDE == 0:
        k = side // STAIN_SIDE
        x = x.reshape(STAIN_SIDE, k, STAIN_SIDE, k, 3).mean(axis=(1, 3))
    else:
        from PIL import Image

        small = Image.fromarray(np.asarray(image, np.uint8)).resize((STAIN_SIDE, STAIN_SIDE), Image.Resampling.BOX)
        x = np.asarray(small, dtype=np.float32)
    stained = (x[..., 0] + x[..., 2]) / 2 - x[..., 1] > STAIN_LEVEL
    return float(largest_component(stained).mean()) if stained.any() else 0.0


def stain_floor(areas: np.ndarray, quantile: float = QUANTILE) -> float:
    """The smallest stained region a white cell has: the (1 - `quantile`) quantile of source cells' `stain_area`.

    Args:
        areas: `stain_area` of the source lab's white cells (at least MIN_NON_CELLS of them).
    """
    a = np.asarray(areas, dtype=np.float64).reshape(-1)
    if a.shape[0] < MIN_NON_CELLS or not np.isfinite(a).all():
        raise ValueError(f"the stain floor needs the stained areas of at least {MIN_NON_CELLS} source cells, "
                         f"got {a.shape[0]}")
    floor = float(np.quantile(a, 1.0 - quantile))
    if floor <= 0.0:
        raise ValueError(f"over {1 - quantile:.0%} of these cells show no stained (purple) region: they are not "
                         "Romanowsky-stained white cells, and no stain floor can be set from them")
    return floor


@dataclass(frozen=True, eq=False)
class NonCellDiscriminant:
    """Fisher's linear discriminant between source cells and images that hold no white cell.

    The score of a feature x is w . (x - source mean), scaled so that the source cells' scores
    have unit standard deviation under their recorded covariance: a z-score along the direction
    that best separates the source cells from the non-cell images. Scores above the threshold
    are on the non-cells' side.
    """

    weight: np.ndarray  # [D], scaled: w' Σ_source w = 1
    centre: float  # w . source mean
    threshold: float
    images: int  # how many non-cell images it was fitted on, for reports

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Scores [B] of features [B, D] (NaN for rows that are not finite)."""
        return np.asarray(features, dtype=np.float64) @ self.weight - self.centre

    @classmethod
    def from_source(cls, source: dict[str, np.ndarray]) -> NonCellDiscriminant | None:
        """The discriminant recorded with an artifact's source statistics (None when none was fitted)."""
        if not all(k in source for k in NON_CELL_KEYS):
            return None
        weight = np.asarray(source["noncell_weight"], dtype=np.float64).reshape(-1)
        mean = np.asarray(source["mean"], dtype=np.float64).reshape(-1)
        if weight.shape != mean.shape:
            raise ValueError(f"the non-cell discriminant has {weight.shape[0]} weights for {mean.shape[0]} features")
        return cls(weight, float(weight @ mean), float(np.asarray(source["noncell_threshold"]).reshape(-1)[0]),
                   int(np.asarray(source["noncell_images"]).reshape(-1)[0]))


def fit_non_cell(source: dict[str, np.ndarray], non_cells: np.ndarray, quantile: float = QUANTILE,
                 shrink: float = DISCRIMINANT_SHRINK) -> dict[str, np.ndarray]:
    """Fit the non-cell discriminant from the source statistics and non-cell images' features.

    The direction is Fisher's: the pooled covariance of the two groups (the source's recorded
    `cov`, the non-cells' own), shrunk `shrink` of the way to its mean variance, solved against
    the difference of their means. The threshold is the `quantile` of the source cells' scores
    under the normal model of their covariance (a score is a z-score: 2.33 at 99 %), so that about
    1 - `quantile` of source cells fall beyond it.

    Args:
        source: the source cells' `mean` [D] and `cov` [D, D] (as recorded with a bundle).
        non_cells: features [N, D] of images holding no white cell, N >= MIN_NON_CELLS.

    Returns:
        `noncell_weight` [D], `noncell_threshold` [1] and `noncell_images` [1], float32, to record
        beside the source statistics (`NonCellDiscriminant.from_source` reads them).

    Raises:
        ValueError: too few non-cell images, shapes that disagree, non-finite values, or
            non-cells whose mean is the source's (nothing to separate).
    """
    from statistics import NormalDist

    x = np.asarray(non_cells, dtype=np.float64)
    if "cov" not in source or "mean" not in source:
        raise ValueError("fitting the non-cell discriminant needs the source cells' mean and covariance")
    mean = np.asarray(source["mean"], dtype=np.float64).reshape(-1)
    cov = np.asarray(source["cov"], dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_NON_CELLS or x.shape[1] != mean.shape[0] or cov.shape != (x.shape[1],) * 2:
        raise ValueError(f"fitting the non-cell discriminant needs at least {MIN_NON_CELLS} non-cell features of "
                         f"{mean.shape[0]} values, got {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(cov).all() and np.isfinite(mean).all()):
        raise ValueError("the features for the non-cell discriminant are not all finite")
    pooled = (cov + np.cov(x, rowvar=False)) / 2
    pooled = (1 - shrink) * pooled + shrink * max(float(np.trace(pooled)) / len(pooled), 1e-12) * np.eye(len(pooled))
    weight = np.linalg.solve(pooled, x.mean(axis=0) - mean)
    spread = float(np.sqrt(max(float(weight @ cov @ weight), 0.0)))
    if not np.isfinite(spread) or spread <= 1e-12:
        raise ValueError("the non-cell images' features do not differ from the source cells': nothing to separate")
    return {"noncell_weight": (weight / spread).astype(np.float32),
            "noncell_threshold": np.array([NormalDist().inv_cdf(quantile)], np.float32),
            "noncell_images": np.array([float(x.shape[0])], np.float32)}


@dataclass(frozen=True, eq=False)
class CellCheck:
    """The "no cell" decision on one image's (mask, feature distance, non-cell score)."""

    mask: MaskLimits = MaskLimits()
    distance: FeatureDistance | None = None  # None: the artifact carries no source statistics
    non_cell: NonCellDiscriminant | None = None  # None: no non-cell images were given at export
    min_stain: float | None = None  # the smallest stained share of a source cell; None: not recorded

    @classmethod
    def of_source(cls, source: dict[str, np.ndarray] | None, distance: FeatureDistance | None = None) -> CellCheck:
        """The check with the stain floor and the non-cell discriminant recorded beside the source
        statistics, if any (`dorl non-cells`).

        Raises:
            ValueError: a recorded floor or discriminant is malformed.
        """
        floor = None
        non_cell = NonCellDiscriminant.from_source(source) if source is not None else None
        if source is not None and MIN_STAIN_KEY in source:
            floor = float(np.asarray(source[MIN_STAIN_KEY]).reshape(-1)[0])
            if not 0.0 < floor < 1.0:
                raise ValueError(f"the recorded stain floor {floor} is not a share of the image")
        return cls(distance=distance, non_cell=non_cell, min_stain=floor)

    def reasons(self, mask: np.ndarray | None, distance: float | None, score: float | None = None,
                stain: float | None = None) -> tuple[str, ...]:
        """Why the image holds no analysable white cell; empty when it may hold one."""
        found = self.mask.reasons(mask)
        if self.min_stain is not None and stain is not None and stain < self.min_stain:
            found.append(f"its largest stained (purple) region covers {stain:.1%} of the image, below the "
                         f"{self.min_stain:.1%} of the source lab's smallest white cells: too small for a white "
                         "cell's nucleus (a platelet or debris)")
        if self.distance is not None and distance is not None and distance > self.distance.threshold:
            found.append(f"its feature lies {distance:.2f} (RMS z-score) from the source cells, beyond "
                         f"{self.distance.threshold:.2f}: not a white cell like those the model learned (or a cell "
                         "of a lab without a site profile: see `dorl adapt`)")
        if self.non_cell is not None and score is not None and score > self.non_cell.threshold:
            found.append(f"its feature scores {score:.2f} towards the images without a white cell (e.g. platelets) "
                         f"the artifact was given at export, beyond {self.non_cell.threshold:.2f}")
        return tuple(found)
