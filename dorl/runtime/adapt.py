"""`dorl adapt`: a site profile from a new lab's unlabelled cells, on the analyzer itself.

Runs the deployed graph over up to N cells of the site, accumulates running statistics of
the `feature` output, and fits the affine map of `dorl.runtime.site_profile`. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dorl.artifacts import read_manifest
from dorl.data.images import find_images
from dorl.errors import ArtifactError
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.head import load_head
from dorl.runtime.site_profile import (
    DEFAULT_METHOD,
    MIN_CELLS,
    RunningStats,
    SiteProfile,
    artifact_id,
    fit_profile,
    load_profile,
)

DRIFT_WARNING = 3.0  # site mean more than 3 source standard deviations away, on average


def collect_features(
    analyzer: Analyzer, images: Sequence[Path], stats: RunningStats, progress: Callable[[int], None] | None = None
) -> int:
    """Feed each cell's `feature` into `stats`; returns how many cells failed to decode."""
    failed = 0
    for result in analyzer.iter_analyze(images):
        if result.ok and result.feature is not None:
            stats.update(result.feature[None, :])
        else:
            failed += 1
        if progress is not None:
            progress(1)
    return failed


def adapt_site(
    artifact: str | Path,
    cells: str | Path | Sequence[str | Path],
    site: str,
    method: str = DEFAULT_METHOD,
    max_cells: int = 500,
    update: str | Path | None = None,
    min_cells: int = MIN_CELLS,
    backend: str = "auto",
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SiteProfile:
    """Estimate a site profile for `artifact` from unlabelled cells.

    Args:
        artifact: the exported ONNX artifact (or engine) the analyzer runs.
        cells: a folder (searched recursively) or a list of image files from the new site.
        site: the site's name, recorded in the profile.
        method: "mean" (the default, measured best), "standardise" or "coral" (see site_profile).
        max_cells: use at most this many cells (the first ones in sorted order).
        update: an existing profile of this site and artifact whose statistics are extended
            (running statistics: profiles grow as cells arrive).
        min_cells: refuse to fit on fewer usable cells.
        progress: called with 1 per processed cell.
        warn: called with a sentence when the site looks wildly off (e.g. not blood cells).

    Returns:
        The fitted profile (not yet saved).
    """
    manifest = read_manifest(artifact, ("onnx", "engine"))
    _, source = load_head(manifest)
    key = artifact_id(manifest)
    images = find_images([cells] if isinstance(cells, (str, Path)) else list(cells))[:max_cells]
    if not images:
        raise ArtifactError(f"no images found in {cells}: give a folder of the site's cell images.")
    stats = load_profile(update, key).stats if update is not None else RunningStats(source["mean"].shape[0])
    with Analyzer(artifact, backend=backend) as analyzer:
        failed = collect_features(analyzer, images, stats, progress)
    if failed and warn is not None:
        warn(f"{failed} of {len(images)} images could not be analysed and were left out of the statistics.")
    profile = fit_profile(site, source, stats, method, key, min_cells=min_cells)
    if profile.drift > DRIFT_WARNING and warn is not None:
        warn(f"site {site!r} features sit {profile.drift:.1f} source standard deviations from the source on "
             "average: check that these are blood-cell images from one lab before using this profile.")
    return profile
