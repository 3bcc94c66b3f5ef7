"""Teaching an artifact what is not a white cell, torch-free.

Images that hold no white cell but come from the source lab itself (platelets, debris, empty
fields of the same stain and camera) sit close to the source cells by feature distance, so the
distance check alone labels them. Given examples of such images, `fit_non_cells` runs the
artifact on them, fits the linear discriminant between the source cells' recorded statistics
and their features (`cell_check.fit_non_cell`), and writes a derived artifact whose head file
carries it: every later `dorl predict` with that artifact answers "no cell" for images on the
non-cells' side. The graph, the head and the source statistics are unchanged, so site profiles
made for the original artifact still apply.
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
    with Analyzer(artifact, check_cells=False, threads=threads) as analyzer:
        for result in analyzer.iter_analyze(images):
            if result.ok and result.feature is not None and np.isfinite(result.feature).all():
                features.append(result.feature.astype(np.float32))
            else:
                skipped.append(f"{result.source}: {result.error or 'no finite feature'}")
            if progress is not None:
                progress(1)
    width = 0 if not features else features[0].shape[0]
    return (np.stack(features) if features else np.zeros((0, width), np.float32)), skipped


def fit_non_cells(artifact: str | Path, images: Sequence[ImageSource], output: str | Path, *,
                  overwrite: bool = False, quantile: float = QUANTILE, threads: int | None = None,
                  progress: Callable[[int], None] | None = None,
                  inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Write a copy of `artifact` at `output` that refuses images like `images` as "no cell".

    Args:
        artifact: an ONNX or engine artifact folder with a host-side head and source statistics
            (mean, covariance).
        images: at least `MIN_NON_CELLS` images that hold no white cell, of the artifact's source
            lab (paths, encoded bytes or arrays).
        output: the derived artifact's folder (written atomically, never over an input).
        overwrite: replace an existing artifact of the same kind at `output`.
        quantile: the share of source cells the discriminant lets through, under the normal
            model of their covariance (0.99: about 1 % of source cells are refused by it).
        inputs: further inputs (the folders the images came from) `output` must not touch.

    Returns:
        The derived artifact's manifest; its `non_cell` field says how it was fitted.

    Raises:
        ConfigError: too few usable images, or images indistinguishable from the source cells.
        ArtifactError: the artifact has no head file or no source covariance.
        OutputError: `output` may not be written.
    """
    from safetensors.numpy import load_file, save_file

    from dorl.artifacts import read_manifest, write_manifest
    from dorl.runtime.head import load_head
    from dorl.safe_write import atomic_folder, check_output

    if not 0.5 < quantile < 1.0:
        raise ConfigError(f"the quantile must be between 0.5 and 1, got {quantile}.")
    if len(images) < MIN_NON_CELLS:
        raise ConfigError(f"{len(images)} non-cell images given; at least {MIN_NON_CELLS} images that hold no white "
                          "cell are needed (e.g. platelet images of the artifact's source lab).")
    manifest = read_manifest(artifact)
    kind = str(manifest["kind"])
    if kind not in ("onnx", "engine"):
        raise ArtifactError(f"{artifact} is a {kind!r} artifact: give an ONNX or engine artifact folder.")
    check_output(output, kind=kind, overwrite=overwrite, inputs=[artifact, *inputs])  # before any image is read
    _, source = load_head(manifest)
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
    folder = Path(str(manifest["folder"]))
    with atomic_folder(output, kind=kind, overwrite=overwrite, inputs=[artifact, *inputs]) as tmp:
        for name in manifest["files"]:
            if name != HEAD_FILE:
                shutil.copy2(folder / name, tmp / name)
        tensors = {k: v for k, v in load_file(str(folder / HEAD_FILE)).items()}
        tensors.update({f"source.{k}": np.ascontiguousarray(v) for k, v in fitted.items()})
        save_file(tensors, str(tmp / HEAD_FILE))
        fields = {k: v for k, v in manifest.items() if k not in _OWN_FIELDS}
        fields["non_cell"] = {"images": int(features.shape[0]), "skipped": len(skipped), "quantile": quantile,
                              "shrink": DISCRIMINANT_SHRINK,
                              "threshold": float(fitted["noncell_threshold"][0]),
                              "derived_from": _identity(manifest)}
        written = write_manifest(tmp, kind, list(manifest["files"]), **fields)
    return written


def _identity(manifest: dict[str, Any]) -> str:
    """The original artifact's graph digest, for the derived artifact's record."""
    files = manifest.get("files", {})
    return str(next(iter(files.values()))["sha256"]) if files else ""
