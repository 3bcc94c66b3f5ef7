"""`dorl adapt`: a site profile from a new lab's unlabelled cells, on the analyzer itself.

Runs the deployed graph over up to N distinct cells of the site (files with the same content
count once, across `--update` runs too), accumulates running statistics of the `feature`
output, and fits the affine map of `dorl.runtime.site_profile` behind its guard rails.
Torch-free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dorl.artifacts import read_manifest
from dorl.data.scan import require_existing, scan_images
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.head import load_head
from dorl.runtime.site_profile import (
    DEFAULT_METHOD,
    DIGEST_BYTES,
    METHODS,
    MIN_CELLS,
    RunningStats,
    SiteProfile,
    SiteProfileError,
    artifact_id,
    fit_profile,
    load_profile,
)

DRIFT_WARNING = 3.0  # site mean more than 3 source standard deviations away, on average


@dataclass
class _Cells:
    """The distinct cell files to use and what was left out."""

    files: list[Path]
    digests: list[bytes]
    duplicates: int
    already_seen: int


def check_method(method: str) -> None:
    """Refuse an unknown method before anything is loaded."""
    if method not in METHODS:
        raise SiteProfileError(f"unknown adaptation method {method!r}; choose one of {', '.join(METHODS)}.")


def collect_features(analyzer: Analyzer, images: Sequence[Path], stats: RunningStats,
                     progress: Callable[[int], None] | None = None) -> list[bool]:
    """Feed each cell's `feature` into `stats`; returns, per image, whether it was used."""
    used = []
    for result in analyzer.iter_analyze(images):
        ok = result.ok and result.feature is not None and bool(np.isfinite(result.feature).all())
        if ok:
            stats.update(result.feature[None, :])  # type: ignore[index]
        used.append(ok)
        if progress is not None:
            progress(1)
    return used


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
        max_cells: use at most this many new distinct cells (the first ones in sorted order).
        update: an existing profile of this site and artifact whose statistics are extended
            (running statistics: profiles grow as cells arrive; cells it counted are skipped).
        min_cells: refuse to fit on fewer usable cells (never fewer than the method needs).
        progress: called with 1 per processed cell.
        warn: called with a sentence about left-out cells or a site that looks wildly off.

    Returns:
        The fitted profile (not yet saved).
    """
    check_method(method)
    given = [cells] if isinstance(cells, (str, Path)) else list(cells)  # a generator is read once, here
    odd = next((c for c in given if not isinstance(c, (str, Path))), None)
    if odd is not None:
        raise ConfigError(f"a site profile is made from image files or folders (each file counts once by its "
                          f"content), not from {type(odd).__name__} data: save the site's images as files first.")
    require_existing(given, "the site's cell images or folders of them")
    manifest = read_manifest(artifact, ("onnx", "engine"))
    _, source = load_head(manifest)
    key = artifact_id(manifest)
    previous = load_profile(update, key, source=source) if update is not None else None
    if previous is not None and previous.site != site:
        raise SiteProfileError(f"profile {update} is of site {previous.site!r}, not {site!r}: update it with cells of "
                               f"{previous.site!r} (--site {previous.site}), or write a new profile for {site!r} "
                               "without --update.")
    found = _distinct_cells(given, previous.seen if previous is not None else None, max_cells)
    if not found.files and previous is None:
        where = (f"{given[0]}" + (f" and {len(given) - 1} more paths" if len(given) > 1 else "")) if given else "nothing given"
        raise ArtifactError(f"no images found in {where}: give a folder of the site's cell images.")
    stats = previous.stats if previous is not None else RunningStats(source["mean"].shape[0])
    # the profile is made from the plain view's feature: no test-time views (their passes would be thrown away)
    with Analyzer(artifact, backend=backend, check_cells=False, tta="none") as analyzer:
        used = collect_features(analyzer, found.files, stats, progress)
    _report_left_out(found, used, warn)
    seen = [d for d, ok in zip(found.digests, used) if ok]
    digests = np.frombuffer(b"".join(seen), np.uint8).reshape(-1, DIGEST_BYTES)
    if previous is not None:
        digests = np.concatenate([previous.seen, digests])
    profile = fit_profile(site, source, stats, method, key, min_cells=min_cells, seen=digests)
    if profile.drift > DRIFT_WARNING and warn is not None:
        warn(f"site {site!r} features sit {profile.drift:.1f} source standard deviations from the source on "
             "average: check that these are blood-cell images from one lab before using this profile.")
    return profile


def _distinct_cells(cells: Sequence[str | Path], seen: np.ndarray | None, max_cells: int) -> _Cells:
    """The first `max_cells` files whose content was neither seen before nor repeated here."""
    counted = {bytes(row) for row in seen} if seen is not None else set()
    here: set[bytes] = set()
    scan = scan_images(cells)
    out = _Cells([], [], 0, 0)
    for path, digest in _digests(scan.files):
        if len(out.files) >= max_cells:
            break
        if digest in counted:
            out.already_seen += 1
        elif digest in here:
            out.duplicates += 1
        else:  # new content, or unreadable (None): the analyzer reports an unreadable file as failed
            out.files.append(path)
            out.digests.append(digest or b"\0" * DIGEST_BYTES)
            if digest is not None:
                here.add(digest)
    return out


def _digests(files: list[Path]) -> Iterator[tuple[Path, bytes | None]]:
    for path in files:
        try:
            yield path, hashlib.sha256(path.read_bytes()).digest()[:DIGEST_BYTES]
        except OSError:
            yield path, None


def _report_left_out(found: _Cells, used: list[bool], warn: Callable[[str], None] | None) -> None:
    if warn is None:
        return
    failed = used.count(False)
    if failed:
        warn(f"{failed} of {len(used)} images could not be analysed and were left out of the statistics.")
    if found.duplicates:
        warn(f"{found.duplicates} files repeat the content of another file and were counted once.")
    if found.already_seen:
        warn(f"{found.already_seen} cells were already counted in the profile being updated and were skipped.")
