"""Site profiles: re-centering a new lab's features from its unlabelled cells (issue 7).

DoRL's CAE aligns domain means for the domains it saw at training; a new analyzer site
still drifts. A site profile is an affine map `x' = A x + b` applied between the deployed
graph's `feature` output and the classifier head, estimated from the site's unlabelled
cells only. The head's weights stay in the artifact; the engine is not rebuilt.

Methods (chosen by measurement, see the README's table):
- `standardise`: map the site's per-feature mean/std onto the source's: A = diag(σ_s/σ_t).
- `coral`: CORAL-style whitening and re-colouring with full covariances:
  A = C_s^{1/2} C_t^{-1/2} (with shrinkage).
- `mean`: shift only (A = I, b = μ_s − μ_t).

Torch-free: numpy only.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, write_manifest
from dorl.errors import ArtifactError, DorlError

METHODS = ("standardise", "coral", "mean")
# Measured on the trained TinyViT DoRL model (README, "Which site-adaptation map"): the mean shift
# scores best; per-feature std and full covariances from a few hundred cells add noise.
DEFAULT_METHOD = "mean"
PROFILE_FILE = "profile.npz"
MIN_CELLS = 50


class SiteProfileError(DorlError):
    """A site profile cannot be made or does not fit the artifact."""


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

    def apply(self, features: np.ndarray) -> np.ndarray:
        return (features.astype(np.float64) @ self.a.T + self.b).astype(np.float32)


def drift_score(source: dict[str, np.ndarray], site: RunningStats) -> float:
    """Mean absolute z-score of the site's feature mean under the source statistics."""
    return float(np.mean(np.abs(site.mean - source["mean"]) / np.maximum(source["std"], 1e-6)))


def fit_profile(site: str, source: dict[str, np.ndarray], stats: RunningStats, method: str,
                artifact_sha256: str, min_cells: int = MIN_CELLS) -> SiteProfile:
    """A profile from accumulated site statistics; refuses too few cells."""
    if stats.n < min_cells:
        raise SiteProfileError(
            f"only {stats.n} usable cells from site {site!r}; at least {min_cells} are needed for stable "
            "statistics: give a folder with more cells of this site."
        )
    a, b = affine_map(source, stats, method)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return SiteProfile(site, method, artifact_sha256, stats, a, b, drift_score(source, stats), now)


def save_profile(profile: SiteProfile, folder: str | Path) -> dict[str, Any]:
    """Write the profile folder (arrays in .npz, never pickled, + manifest)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"a": profile.a, "b": profile.b, **{f"stats_{k}": v for k, v in profile.stats.to_arrays().items()}}
    np.savez(str(folder / PROFILE_FILE), **arrays)  # type: ignore[arg-type]
    return write_manifest(folder, "site-profile", [PROFILE_FILE], site=profile.site, method=profile.method,
                          n_cells=profile.stats.n, artifact_sha256=profile.artifact_sha256,
                          drift=profile.drift, date=profile.created)


def load_profile(path: str | Path, artifact_sha256: str | None = None) -> SiteProfile:
    """Read a profile; with `artifact_sha256`, refuse one made for another artifact."""
    manifest = read_manifest(path, "site-profile")
    if artifact_sha256 is not None and manifest["artifact_sha256"] != artifact_sha256:
        raise ArtifactError(
            f"site profile {manifest['folder']} was made for another model (artifact sha256 "
            f"{manifest['artifact_sha256'][:12]}…, this one is {artifact_sha256[:12]}…): run `dorl adapt` again "
            "with this artifact."
        )
    with np.load(Path(manifest["folder"]) / PROFILE_FILE, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    stats = RunningStats.from_arrays({k[len("stats_"):]: v for k, v in arrays.items() if k.startswith("stats_")})
    return SiteProfile(manifest["site"], manifest["method"], manifest["artifact_sha256"], stats,
                       arrays["a"], arrays["b"], float(manifest["drift"]), manifest["date"])


def artifact_id(manifest: dict[str, Any]) -> str:
    """What a profile is tied to: the trained weights (same bundle → same features), so one profile
    serves the FP32, FP16 and INT8 graphs and engines exported from one bundle."""
    if manifest.get("source_bundle_sha256"):
        return str(manifest["source_bundle_sha256"])
    files = manifest.get("files", {})
    return str(next(iter(files.values()))["sha256"]) if files else ""


def describe(profile: SiteProfile) -> str:
    return json.dumps({"site": profile.site, "method": profile.method, "cells": profile.stats.n,
                       "drift": round(profile.drift, 3)})
