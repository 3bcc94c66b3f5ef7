"""Site profiles: re-centering a new lab's features from its unlabelled cells.

DoRL's CAE aligns domain means for the domains it saw at training; a new analyzer site
still drifts. A site profile is an affine map `x' = A x + b` applied between the deployed
graph's `feature` output and the classifier head, estimated from the site's unlabelled
cells only. The head's weights stay in the artifact; the engine is not rebuilt.

Methods (chosen by measurement, see the README's table):
- `standardise`: map the site's per-feature mean/std onto the source's: A = diag(σ_s/σ_t).
- `coral`: CORAL-style whitening and re-colouring with full covariances:
  A = C_s^{1/2} C_t^{-1/2} (with shrinkage).
- `mean`: shift only (A = I, b = μ_s − μ_t).

Every fit, write and load goes through the guard rails of `dorl.runtime.site_checks`.
Torch-free: numpy only.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.errors import ArtifactError
from dorl.runtime.site_checks import (
    DriftWatch,
    SiteProfileError,
    check_cell_count,
    check_map,
    check_spread,
    manifest_field,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MIN_CELLS",
    "PROFILE_FILE",
    "DriftWatch",
    "RunningStats",
    "SiteProfile",
    "SiteProfileError",
    "affine_map",
    "artifact_id",
    "describe",
    "fit_profile",
    "load_profile",
    "save_profile",
]

METHODS = ("standardise", "coral", "mean")
# Measured on the trained TinyViT DoRL model (README, "Which site-adaptation map"): the mean shift
# scores best; per-feature std and full covariances from a few hundred cells add noise.
DEFAULT_METHOD = "mean"
PROFILE_FILE = "profile.npz"
MIN_CELLS = 50
DIGEST_BYTES = 16  # of each cell file's sha256, kept so that `--update` never counts a cell twice


class RunningStats:
    """Running mean and covariance of feature vectors (Chan et al. parallel update)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64).reshape(-1, self.mean.shape[0])
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) == 0:
            return
        n_b, mean_b = len(x), x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        delta = mean_b - self.mean
        total = self.n + n_b
        self.m2 += m2_b + np.outer(delta, delta) * self.n * n_b / total
        self.mean += delta * n_b / total
        self.n = total

    @property
    def cov(self) -> np.ndarray:
        return self.m2 / max(self.n - 1, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 1e-12, None))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array(self.n), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RunningStats:
        stats = cls(arrays["mean"].shape[0])
        stats.n, stats.mean, stats.m2 = int(arrays["n"]), arrays["mean"].astype(np.float64), arrays["m2"]
        return stats


def _sqrtm(cov: np.ndarray, inverse: bool = False, shrink: float = 0.1) -> np.ndarray:
    """Symmetric (inverse) square root of a covariance, shrunk towards its diagonal."""
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 1e-8 * max(values.max(), 1e-12), None)
    power = -0.5 if inverse else 0.5
    return (vectors * values**power) @ vectors.T


def affine_map(source: dict[str, np.ndarray], site: RunningStats, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The (A, b) of `x' = A x + b` moving the site's feature distribution onto the source's.

    Args:
        source: the artifact's source-domain feature statistics: `mean`, `std` and (for coral) `cov`.
        site: the site's running statistics.
        method: one of METHODS.
    """
    mu_s, mu_t = source["mean"].astype(np.float64), site.mean
    if method == "mean":
        a = np.eye(len(mu_s))
    elif method == "standardise":
        a = np.diag(source["std"].astype(np.float64) / site.std)
    elif method == "coral":
        if "cov" not in source:
            raise SiteProfileError("this artifact carries no source covariance: use --method standardise.")
        a = _sqrtm(source["cov"].astype(np.float64)) @ _sqrtm(site.cov, inverse=True)
    else:
        raise SiteProfileError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}.")
    return a, mu_s - a @ mu_t


@dataclass
class SiteProfile:
    """A site's feature statistics and the affine map they give, for one artifact."""

    site: str
    method: str
    artifact_sha256: str
    stats: RunningStats
    a: np.ndarray
    b: np.ndarray
    drift: float  # mean |z| of the site mean under the source distribution: a sanity figure
    created: str
    seen: np.ndarray = field(default_factory=lambda: np.zeros((0, DIGEST_BYTES), np.uint8))  # cell digests

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (features.astype(np.float64) @ self.a.T + self.b).astype(np.float32)


def drift_score(source: dict[str, np.ndarray], site: RunningStats) -> float:
    """Mean absolute z-score of the site's feature mean under the source statistics."""
    return float(np.mean(np.abs(site.mean - source["mean"]) / np.maximum(source["std"], 1e-6)))


def fit_profile(site: str, source: dict[str, np.ndarray], stats: RunningStats, method: str,
                artifact_sha256: str, min_cells: int = MIN_CELLS, seen: np.ndarray | None = None) -> SiteProfile:
    """A profile from accumulated site statistics.

    Raises:
        SiteProfileError: an unknown method, too few cells for it, cells that barely vary, or a
            map outside the bounds of `site_checks.check_map`.
    """
    if method not in METHODS:
        raise SiteProfileError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}.")
    check_cell_count(site, method, stats.n, stats.mean.shape[0], min_cells)
    check_spread(site, np.diag(stats.cov), source["std"])
    a, b = affine_map(source, stats, method)
    check_map(a, b, repr(site), source)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    digests = seen if seen is not None else np.zeros((0, DIGEST_BYTES), np.uint8)
    return SiteProfile(site, method, artifact_sha256, stats, a, b, drift_score(source, stats), now, digests)


def save_profile(profile: SiteProfile, folder: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the profile folder (arrays in .npz, never pickled, + manifest) in one atomic step.

    The folder is written as a temporary sibling and renamed into place under a lock (see
    `dorl.safe_write`): a killed run leaves the previous profile as it was.

    Args:
        overwrite: replace an existing profile at `folder` (otherwise refused).
    """
    from dorl.safe_write import atomic_folder

    check_map(profile.a, profile.b, repr(profile.site), site_mean=profile.stats.mean, site_std=profile.stats.std)
    if not (np.isfinite(profile.stats.mean).all() and np.isfinite(profile.stats.m2).all()
            and np.isfinite(profile.drift)):
        raise SiteProfileError(f"the statistics of site {profile.site!r} are not finite: nothing was written; run "
                               "`dorl adapt` again on real cells of the site.")
    arrays = {"a": profile.a, "b": profile.b, "seen": profile.seen,
              **{f"stats_{k}": v for k, v in profile.stats.to_arrays().items()}}
    with atomic_folder(folder, overwrite=overwrite, kind="site-profile") as tmp:
        np.savez(str(tmp / PROFILE_FILE), **arrays)  # type: ignore[arg-type]
        return write_manifest(tmp, "site-profile", [PROFILE_FILE], site=profile.site, method=profile.method,
                              n_cells=profile.stats.n, artifact_sha256=profile.artifact_sha256,
                              drift=round(profile.drift, 6), date=profile.created)


def load_profile(path: str | Path, artifact_sha256: str | None = None,
                 source: dict[str, np.ndarray] | None = None) -> SiteProfile:
    """Read and check a profile.

    Args:
        path: the profile folder.
        artifact_sha256: refuse a profile made for another artifact.
        source: the artifact's source statistics, to check the map's dimension and shift.

    Raises:
        ArtifactError: not a profile, a changed file, or made for another artifact.
        SiteProfileError: malformed fields or arrays, non-finite values, an implausible map.
    """
    manifest = read_manifest(path, "site-profile")
    where = str(manifest["folder"])
    fields = {key: manifest_field(manifest, key, kind, where)
              for key, kind in (("site", str), ("method", str), ("artifact_sha256", str), ("drift", float),
                                ("date", str), ("n_cells", int))}
    if fields["method"] not in METHODS:
        raise SiteProfileError(f"site profile {where} names an unknown method {fields['method']!r}: run `dorl adapt` "
                               "again.")
    if artifact_sha256 is not None and fields["artifact_sha256"] != artifact_sha256:
        raise ArtifactError(
            f"site profile {where} was made for another model (artifact sha256 {fields['artifact_sha256'][:12]}…, "
            f"this one is {artifact_sha256[:12]}…): run `dorl adapt` again with this artifact."
        )
    arrays = _read_arrays(Path(where) / PROFILE_FILE, where)
    stats = RunningStats.from_arrays({k[len("stats_"):]: v for k, v in arrays.items() if k.startswith("stats_")})
    if stats.n != fields["n_cells"] or not (np.isfinite(stats.mean).all() and np.isfinite(stats.m2).all()):
        raise SiteProfileError(f"site profile {where} holds statistics that are not finite or do not match its "
                               "manifest: run `dorl adapt` again.")
    check_map(arrays["a"], arrays["b"], where, source, site_mean=stats.mean, site_std=stats.std)
    seen = arrays.get("seen", np.zeros((0, DIGEST_BYTES), np.uint8))
    return SiteProfile(fields["site"], fields["method"], fields["artifact_sha256"], stats, arrays["a"], arrays["b"],
                       fields["drift"], fields["date"], seen)


def _read_arrays(path: Path, where: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SiteProfileError(f"site profile {where} cannot be read ({exc}): run `dorl adapt` again.") from exc
    dim = arrays.get("b", np.zeros(0)).shape[0] if arrays.get("b") is not None and arrays["b"].ndim == 1 else -1
    expected = {"a": (dim, dim), "b": (dim,), "stats_mean": (dim,), "stats_m2": (dim, dim), "stats_n": ()}
    wrong = [k for k, shape in expected.items() if k not in arrays or arrays[k].shape != shape
             or not np.issubdtype(arrays[k].dtype, np.number)]
    seen = arrays.get("seen")
    if dim < 1 or wrong or (seen is not None and (seen.ndim != 2 or seen.shape[1] != DIGEST_BYTES)):
        raise SiteProfileError(f"site profile {where} lacks or mis-shapes its arrays ({', '.join(wrong) or 'seen'}): "
                               "run `dorl adapt` again.")
    return arrays


def artifact_id(manifest: dict[str, Any]) -> str:
    """What a profile is tied to: the trained weights (same bundle → same features), so one profile
    serves the FP32, FP16 and INT8 graphs and engines exported from one bundle."""
    if manifest.get("source_bundle_sha256"):
        return str(manifest["source_bundle_sha256"])
    files = manifest.get("files", {})
    return str(next(iter(files.values()))["sha256"]) if files else ""


def describe(profile: SiteProfile) -> str:
    """One JSON line about a profile (always valid JSON: the statistics are finite by construction)."""
    return json.dumps({"site": profile.site, "method": profile.method, "cells": profile.stats.n,
                       "drift": round(profile.drift, 3)}, allow_nan=False)
