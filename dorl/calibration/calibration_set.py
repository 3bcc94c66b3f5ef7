"""INT8 calibration sets: cells drawn across domains and classes, seeded, saved as a listing.

A calibration set is an artifact folder holding `cells.json` (path, domain, class and sha256 of
each cell, in a stable order) and a "calibration-set" manifest. Drawing is stratified by
domain × class: every stratum gets an equal share, and what a small stratum cannot fill goes
to the others, so a rare class of a small lab is not swamped by a big one. The same folders
and seed give the same list. Each domain root is in ImageFolder layout (one folder per class);
a `masks/` folder beside the classes is not a class.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.artifacts import read_manifest, sha256_file, write_manifest
from dorl.errors import ArtifactError, ConfigError

CELLS_FILE = "cells.json"
KIND = "calibration-set"  # the artifact kind of its manifest
DEFAULT_SIZE = 512
NOT_CLASSES = ("masks",)

Stratum = tuple[str, str]  # (domain, class)


@dataclass(frozen=True)
class Cell:
    """One calibration image and where it came from."""

    path: str
    domain: str
    label: str
    sha256: str


@dataclass(frozen=True)
class CalibrationSet:
    """A calibration set read back from its folder."""

    folder: Path
    cells: tuple[Cell, ...]
    seed: int
    cells_sha256: str
    manifest_sha256: str

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.cells]

    def describe(self) -> dict[str, Any]:
        """What an INT8 manifest records about the set it was calibrated on."""
        return {"path": str(self.folder), "cells": len(self.cells), "seed": self.seed,
                "cells_sha256": self.cells_sha256, "manifest_sha256": self.manifest_sha256}


def list_strata(domains: Mapping[str, str | Path]) -> dict[Stratum, list[Path]]:
    """The image files of each (domain, class), sorted; classes are the sub-folders of each domain root."""
    from dorl.data.images import find_images

    if not domains:
        raise ConfigError("no domains given: pass --domain NAME=PATH once per lab (folders of class sub-folders).")
    strata: dict[Stratum, list[Path]] = {}
    for name, root in domains.items():
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"domain {name!r}: {root} is not a folder; give a folder with one sub-folder per class.")
        classes = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in NOT_CLASSES and not d.name.startswith("."))
        for class_dir in classes:
            files = find_images([class_dir])
            if files:
                strata[(name, class_dir.name)] = files
        if not any(key[0] == name for key in strata):
            raise ConfigError(f"domain {name!r}: no images in class sub-folders of {root}; the layout is "
                              f"{root}/<class>/<image>.")
    return strata


def allocate(counts: Mapping[Stratum, int], size: int, rng: np.random.Generator) -> dict[Stratum, int]:
    """Equal shares per stratum, capped by what each holds (water-filling); odd ones at random."""
    size = min(size, sum(counts.values()))
    level, top = 0, max(counts.values(), default=0)
    while level < top and sum(min(n, level + 1) for n in counts.values()) <= size:
        level += 1
    alloc = {key: min(n, level) for key, n in counts.items()}
    open_keys = sorted(key for key, n in counts.items() if n > level)
    for i in rng.permutation(len(open_keys))[: size - sum(alloc.values())]:
        alloc[open_keys[i]] += 1
    return alloc


def draw_cells(domains: Mapping[str, str | Path], size: int = DEFAULT_SIZE, seed: int = 0,
               exclude: frozenset[str] = frozenset(), classes: Collection[str] | None = None) -> list[Cell]:
    """Draw up to `size` cells stratified by domain × class, reproducibly.

    Args:
        domains: domain name -> root folder (ImageFolder layout).
        size: how many cells (all of them where fewer exist).
        seed: the random seed; the same seed and files give the same list.
        exclude: sha256 of cells to leave out (e.g. a calibration set when drawing held-out cells).
        classes: draw only from these class folders (None: every class folder).

    Returns:
        The cells, sorted by domain, class and path.
    """
    if size < 1:
        raise ConfigError(f"the calibration set needs at least one cell, got --size {size}.")
    strata = list_strata(domains)
    if classes is not None:
        wanted = set(classes)
        strata = {key: files for key, files in strata.items() if key[1] in wanted}
    hashed = {key: [(p, sha256_file(p)) for p in files] for key, files in strata.items()} if exclude else None
    if hashed is not None:
        strata = {key: [p for p, h in pairs if h not in exclude] for key, pairs in hashed.items()}
    rng = np.random.default_rng(seed)
    alloc = allocate({k: len(v) for k, v in strata.items()}, size, rng)
    cells = []
    for key in sorted(strata):
        files = strata[key]
        for i in sorted(rng.choice(len(files), size=alloc[key], replace=False)):
            cells.append(Cell(str(files[i].resolve()), key[0], key[1], sha256_file(files[i])))
    return cells


def write_calibration_set(domains: Mapping[str, str | Path], out_dir: str | Path, size: int = DEFAULT_SIZE,
                          seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Draw a calibration set and save it as an artifact folder, atomically.

    Args:
        overwrite: replace an existing calibration set at `out_dir` (never anything else).

    Returns:
        The manifest written (with per-domain and per-class counts).

    Raises:
        OutputError: `out_dir` may not be written (checked before any image is read).
    """
    from dorl.safe_write import atomic_folder, check_output

    check_output(out_dir, kind=KIND, overwrite=overwrite, inputs=list(domains.values()))
    cells = draw_cells(domains, size, seed)
    _check_decodable(cells)
    counts: dict[str, dict[str, int]] = {}
    for c in cells:
        counts.setdefault(c.domain, {}).setdefault(c.label, 0)
        counts[c.domain][c.label] += 1
    with atomic_folder(out_dir, kind=KIND, overwrite=overwrite, inputs=list(domains.values())) as folder:
        (folder / CELLS_FILE).write_text(json.dumps([asdict(c) for c in cells], indent=1) + "\n")
        return write_manifest(folder, KIND, [CELLS_FILE], size=len(cells), requested_size=size, seed=seed,
                              domains={k: str(Path(v).resolve()) for k, v in domains.items()}, counts=counts)


def _check_decodable(cells: Sequence[Cell]) -> None:
    """Refuse a set that lists a file the calibration could not read (found now, not deep in an INT8 export)."""
    from dorl.data.images import decode_image
    from dorl.errors import ImageError

    bad = []
    for cell in cells:
        try:
            decode_image(cell.path, reduce_for=256)
        except ImageError as exc:
            bad.append(str(exc))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(f"{bad[0].rstrip('.')}{more}. A calibration set lists only images: remove or fix such files "
                          "in the domain folders, then draw the set again.")


def read_calibration_set(folder: str | Path, verify_images: bool = True) -> CalibrationSet:
    """Read a calibration set, checking its listing and (by default) every image's sha256.

    Raises:
        ArtifactError: not a calibration set, an empty one, or an image is missing or changed.
    """
    path = Path(folder)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise ArtifactError(f"calibration set {path} is missing or empty: create one with "
                            "`dorl calibrate --domain NAME=PATH ... -o DIR`.")
    manifest = read_manifest(path, KIND)
    root = Path(manifest["folder"])
    cells = tuple(Cell(**entry) for entry in json.loads((root / CELLS_FILE).read_text()))
    if not cells:
        raise ArtifactError(f"calibration set {root} lists no cells: draw it again from folders that hold images.")
    if verify_images:
        for cell in cells:
            if not Path(cell.path).is_file() or sha256_file(cell.path) != cell.sha256:
                raise ArtifactError(f"calibration image {cell.path} is missing or changed since the set was drawn: "
                                    "draw the set again with `dorl calibrate`.")
    return CalibrationSet(root, cells, int(manifest["seed"]), manifest["files"][CELLS_FILE]["sha256"],
                          sha256_file(root / "manifest.json"))
