"""Which real cells an export checks parity on, when they are given and when they are not.

However many images are given, the check runs on at most `parity_cells` of them (0: all), drawn
stratified by lab and class folder (`<lab>/<class>/<image>`) with a fixed seed, so a folder of
thousands of cells costs minutes, not a quarter of an hour, and still covers every class. With
no images given, the cells come from the bundle's own training domains (their folders are
recorded in its manifest) where they are on this machine, else from the sample bundled with
dorl: an export works on a machine that holds nothing but the bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError

DEFAULT_PARITY_CELLS = 200  # 1 flip in 200 is the FP16 limit of 99.5 % agreement
SEED = 1


def sample_cells(sources: Sequence[Any], count: int, seed: int = SEED) -> list[Any]:
    """At most `count` of `sources` (0: all), stratified by (lab, class) folder, in their given order.

    Args:
        sources: image paths (or arrays and bytes, which form one stratum of their own).
        count: how many to keep; 0 or a negative number keeps every source.
        seed: the draw's seed.
    """
    from dorl.calibration.calibration_set import allocate

    if count <= 0 or len(sources) <= count:
        return list(sources)
    strata: dict[tuple[str, str], list[int]] = {}
    for index, source in enumerate(sources):
        key = (Path(source).parent.parent.name, Path(source).parent.name) if isinstance(source, (str, Path)) else ("", "")
        strata.setdefault(key, []).append(index)
    rng = np.random.default_rng(seed)
    counts = allocate({key: len(members) for key, members in strata.items()}, count, rng)
    keep = [int(i) for key in sorted(strata) for i in rng.choice(strata[key], size=counts[key], replace=False)]
    return [sources[i] for i in sorted(keep)]


def training_domains(metadata: dict[str, Any]) -> dict[str, Path]:
    """The training domains a bundle's manifest records, those whose folder is on this machine."""
    found = {}
    for domain in metadata.get("domains") or []:
        if isinstance(domain, dict) and domain.get("name") and Path(str(domain.get("root", ""))).is_dir():
            found[str(domain["name"])] = Path(str(domain["root"]))
    return found


def default_cells(metadata: dict[str, Any], count: int = DEFAULT_PARITY_CELLS,
                  exclude: frozenset[str] = frozenset(), classes: Sequence[str] | None = None) -> tuple[list[str], str]:
    """Cells for an export given no images: from the bundle's training domains, else the bundled sample.

    Args:
        metadata: the bundle manifest's `metadata` (what `dorl train` recorded).
        count: how many (0: every cell of those folders).
        exclude: sha256 of cells to leave out (an INT8 calibration set).
        classes: only cells of these classes (the INT8 gate scores the model's own classes); None: all.

    Returns:
        (image paths, where they came from, in words).
    """
    from dorl.calibration.calibration_set import draw_cells
    from dorl.paths import ASSETS_DIR

    domains = training_domains(metadata)
    where = f"the bundle's training domains ({', '.join(domains)})"
    if not domains:
        domains = {p.name: p for p in sorted((ASSETS_DIR / "sample").iterdir()) if p.is_dir()}
        where = "the sample bundled with dorl (pbc, bccd)"
    if not domains:
        raise ConfigError("no cell images to check the export on: pass --images with image files or folders.")
    cells = draw_cells(domains, count if count > 0 else 10**9, SEED, exclude=exclude, classes=classes)
    return [c.path for c in cells], where
