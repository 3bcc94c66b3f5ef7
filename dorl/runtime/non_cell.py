"""Teaching an artifact what is not a white cell, torch-free.

Images that hold no white cell but come from the source lab itself (platelets, debris) share its
stain, camera and background, so they sit close to the source cells by feature distance and the
distance check alone labels them. `fit_non_cells` records two further checks in a derived
artifact's head file, each set from images rather than by hand:

- the stain floor (from the source lab's white cells): the share of the image that their largest
  stained (purple) region covers, at its 0.5 % quantile (`cell_check.stain_area`, `stain_floor`).
  A platelet's granulomere is a fraction of a nucleus's size, so its images fall below;
- the non-cell discriminant (from images without a white cell): the linear direction between the
  source cells' recorded statistics and those images' features (`cell_check.fit_non_cell`).

Every later `dorl predict` with the derived artifact answers "no cell" for images below the floor
or on the non-cells' side. The graph, the head and the source statistics are unchanged, so site
profiles made for the original artifact still apply.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.data.images import ImageSource
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.cell_check import DISCRIMINANT_SHRINK, MIN_NON_CELLS, QUANTILE, fit_non_cell
from dorl.runtime.head import HEAD_FILE

# Manifest fields that write_manifest sets itself.
_OWN_FIELDS = ("files", "folder", "format_version", "kind", "created")


def non_cell_features(artifact: str | Path, images: Iterable[ImageSource], threads: int | None = None,
                      progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[str]]:
    """The artifact's classification features of `images` (before any site map).

    Returns:
        (features [N, D] of the images that were read and gave finite outputs, the others'
        sources with why they were left out).
    """
    from dorl.runtime.analyzer import Analyzer

    features, skipped = [], []
    with Analyzer(artifact, check_cells=False, threads=threads, tta="none") as analyzer:  # features: the plain view
        for result in analyzer.iter_analyze(images):
            if result.ok and result.feature is not None and np.isfinite(result.feature).all():
                features.append(result.feature.astype(np.float32))
            else:
                skipped.append(f"{result.source}: {result.error or 'no finite feature'}")
            if progress is not None:
                progress(1)
    width = 0 if not features else features[0].shape[0]
    return (np.stack(features) if features else np.zeros((0, width), np.float32)), skipped


def source_stain_areas(images: Iterable[ImageSource], image_size: int) -> tuple[np.ndarray, int]:
    """`stain_area` of each image as the analyzer frames it (decoded, resized to the graph's input).

    Returns:
        (the areas of the images that could be read, how many could not).
    """
    from dorl.data.images import decode_image, resize_square
    from dorl.errors import ImageError
    from dorl.runtime.cell_check import stain_area

    areas, unreadable = [], 0
    for image in images:
        try:
            decoded = decode_image(image, reduce_for=image_size)
        except ImageError:
            unreadable += 1
            continue
        areas.append(stain_area(resize_square(decoded.rgb, image_size)))
    return np.asarray(areas, dtype=np.float64), unreadable


def fit_non_cells(artifact: str | Path, output: str | Path, *, non_cells: Sequence[ImageSource] = (),
                  cells: Sequence[ImageSource] = (), overwrite: bool = False, quantile: float = QUANTILE,
                  threads: int | None = None, progress: Callable[[int], None] | None = None,
                  inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Write a copy of `artifact` at `output` that answers "no cell" for images like `non_cells`
    and for images whose stained region is smaller than the `cells`' allow.

    Args:
        artifact: an ONNX or engine artifact folder with a host-side head and source statistics.
        output: the derived artifact's folder (written atomically, never over an input).
        non_cells: images that hold no white cell, of the artifact's source lab (paths, encoded
            bytes or arrays); at least `MIN_NON_CELLS`, or none (no discriminant).
        cells: white cells of the artifact's source lab (its training cells serve); at least
            `MIN_NON_CELLS`, or none (no stain floor).
        overwrite: replace an existing artifact of the same kind at `output`.
        quantile: the share of source cells each check lets through (0.995: about 0.5 % of source
            cells fall below the stain floor, about 0.5 % beyond the discriminant's normal model).
        inputs: further inputs (the folders the images came from) `output` must not touch.

    Returns:
        The derived artifact's manifest; its `non_cell` field says what was fitted, on how many images.

    Raises:
        ConfigError: neither kind of image, too few, or images that cannot set a check.
        ArtifactError: the artifact has no head file (or, for the discriminant, no source covariance).
        OutputError: `output` may not be written.
    """
    from safetensors.numpy import load_file, save_file

    from dorl.artifacts import read_manifest, write_manifest
    from dorl.runtime.cell_check import MIN_STAIN_KEY, stain_floor
    from dorl.runtime.head import load_head
    from dorl.safe_write import atomic_folder, check_output

    if not 0.5 <= quantile < 1.0:
        raise ConfigError(f"the quantile must be at least 0.5 and below 1, got {quantile}.")
    if not non_cells and not cells:
        raise ConfigError("give the source lab's white cells (for the stain floor), images that hold no white cell "
                          "(for the discriminant), or both.")
    few_non_cells = ("non-cell images given; at least {n} images that hold no white cell are needed (e.g. platelet "
                     "images of the artifact's source lab)")
    few_cells = "source cells given; at least {n} white cells of the artifact's source lab are needed for the stain floor"
    for given, what in ((non_cells, few_non_cells), (cells, few_cells)):
        if given and len(given) < MIN_NON_CELLS:
            raise ConfigError(f"{len(given)} {what.format(n=MIN_NON_CELLS)}.")
    manifest = read_manifest(artifact)
    kind = str(manifest["kind"])
    if kind not in ("onnx", "engine"):
        raise ArtifactError(f"{artifact} is a {kind!r} artifact: give an ONNX or engine artifact folder.")
    check_output(output, kind=kind, overwrite=overwrite, inputs=[artifact, *inputs])  # before any image is read
    _, source = load_head(manifest)
    fitted: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"quantile": quantile}
    if cells:
        areas, unreadable = source_stain_areas(cells, int(manifest["image_size"]))
        try:
            floor = stain_floor(areas, quantile)
        except ValueError as exc:
            raise ConfigError(f"the stain floor cannot be set from these cells ({unreadable} unreadable): {exc}.") from exc
        fitted[MIN_STAIN_KEY] = np.array([floor], np.float32)
        record["stain_floor"] = {"cells": int(areas.shape[0]), "unreadable": unreadable, "min_share": floor}
    if non_cells:
        fitted.update(_discriminant(artifact, source, non_cells, quantile, threads, progress, record))
    folder = Path(str(manifest["folder"]))
    with atomic_folder(output, kind=kind, overwrite=overwrite, inputs=[artifact, *inputs]) as tmp:
        for name in manifest["files"]:
            if name != HEAD_FILE:
                shutil.copy2(folder / name, tmp / name)
        tensors = {k: v for k, v in load_file(str(folder / HEAD_FILE)).items()}
        tensors.update({f"source.{k}": np.ascontiguousarray(v) for k, v in fitted.items()})
        save_file(tensors, str(tmp / HEAD_FILE))
        fields = {k: v for k, v in manifest.items() if k not in _OWN_FIELDS}
        fields["non_cell"] = {**record, "derived_from": _identity(manifest)}
        written = write_manifest(tmp, kind, list(manifest["files"]), **fields)
    return written


def _discriminant(artifact: str | Path, source: dict[str, np.ndarray], images: Sequence[ImageSource],
                  quantile: float, threads: int | None, progress: Callable[[int], None] | None,
                  record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The non-cell discriminant's tensors, fitted on the artifact's features of `images`."""
    if "cov" not in source:
        raise ArtifactError(f"{artifact} records no covariance of its source cells, which the non-cell "
                            "discriminant is fitted against: export it again from a bundle trained with this dorl.")
    features, skipped = non_cell_features(artifact, images, threads, progress)
    if features.shape[0] < MIN_NON_CELLS:
        raise ConfigError(f"{features.shape[0]} usable non-cell images ({len(skipped)} could not be used, e.g. "
                          f"{skipped[:1]}); at least {MIN_NON_CELLS} images that hold no white cell are needed.")
    try:
        fitted = fit_non_cell(source, features, quantile)
    except ValueError as exc:
        raise ConfigError(f"the non-cell discriminant cannot be fitted on these images: {exc}.") from exc
    record["discriminant"] = {"images": int(features.shape[0]), "skipped": len(skipped),
                              "shrink": DISCRIMINANT_SHRINK, "threshold": float(fitted["noncell_threshold"][0])}
    return fitted


def _identity(manifest: dict[str, Any]) -> str:
    """The original artifact's graph digest, for the derived artifact's record."""
    files = manifest.get("files", {})
    return str(next(iter(files.values()))["sha256"]) if files else ""
