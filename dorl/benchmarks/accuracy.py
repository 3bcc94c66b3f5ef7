"""The cells a benchmark runs on, the shipped analyzer timed over them, and the accuracy scores.

Cells come from labelled domain folders (`<domain>/<class>/<image>`, the label is the class
folder) and unlabelled image folders; a name that is not a path is looked up as a domain of the
shared data (`shared/data/wbc/<name>`), then of the sample bundled with dorl. Every configuration
sees the same cells in the same order, through the `Analyzer` that `dorl predict` runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from dorl.contract import NEAR_TIE_MARGIN, top2_margin
from dorl.errors import ConfigError, ImageError


@dataclass(frozen=True)
class Cells:
    """Image paths and their labels (None: unlabelled), in benchmark order."""

    paths: tuple[str, ...]
    labels: tuple[str | None, ...]

    def describe(self) -> dict[str, Any]:
        labelled = [label for label in self.labels if label is not None]
        return {"count": len(self.paths), "labelled": len(labelled),
                "per_class": {c: labelled.count(c) for c in sorted(set(labelled))}, "paths": list(self.paths)}


def resolve_folder(name: str | Path) -> Path:
    """A folder by path, else by domain name: the shared data's (`shared/data/wbc/NAME`), then the bundled sample's."""
    from dorl.paths import ASSETS_DIR, wbc_data_dir

    path = Path(name)
    if path.exists():
        return path
    for root in (wbc_data_dir(), ASSETS_DIR / "sample"):
        if root is not None and (root / str(name)).is_dir():
            return root / str(name)
    raise ImageError(f"{name} is neither an existing path nor a known domain: give a folder of images or a domain "
                     "name such as pbc or bccd (the bundled sample), or jtsc where the shared data is.")


def labelled_files(domain: Path, classes: Sequence[str] | None = None) -> list[tuple[Path, str]]:
    """(image, class) pairs of a `<domain>/<class>/<image>` folder, interleaved class by class.

    Args:
        domain: the folder; its `masks/` tree (expert masks) is not a class.
        classes: keep only these class folders (None: all).
    """
    from dorl.calibration.calibration_set import list_strata

    try:
        strata = list_strata({domain.name: domain})
    except ConfigError:  # no class folder holds an image
        return []
    per_class = [[(f, label) for f in files] for (_, label), files in sorted(strata.items())
                 if classes is None or label in classes]
    return [pair for row in zip_longest(*per_class) for pair in row if pair is not None]


def collect_cells(
    images: Sequence[str | Path], labelled: str | Path | None, max_cells: int, classes: Sequence[str] | None = None
) -> Cells:
    """The benchmark's cells: the labelled domain's first, then unlabelled images, at most `max_cells`.

    Args:
        images: folders or files of (unlabelled) cells, or shared domain names.
        labelled: a `<domain>/<class>/<image>` folder or shared domain name; labels score accuracy.
        max_cells: the most cells to use (labelled ones first, interleaved by class).
        classes: the model's class names; labelled folders of other classes are left out.

    Raises:
        ImageError: a folder does not exist, or no image was found.
    """
    from dorl.data.images import find_images

    if max_cells < 1:
        raise ConfigError(f"max_cells must be at least 1, got {max_cells}.")
    pairs: list[tuple[Path, str | None]] = []
    if labelled is not None:
        pairs.extend(labelled_files(resolve_folder(labelled), classes))
    pairs.extend((f, None) for f in find_images([resolve_folder(i) for i in images]))
    unique: dict[Path, tuple[Path, str | None]] = {}
    for path, label in pairs:
        unique.setdefault(path.resolve(), (path, label))  # a labelled copy wins: it comes first
    pairs = list(unique.values())[:max_cells]
    if not pairs:
        where = ", ".join(map(str, [*images, *([labelled] if labelled else [])])) or "no folder"
        raise ImageError(f"no image files found in {where}: give --images or --labelled folders holding cell images.")
    return Cells(tuple(str(p) for p, _ in pairs), tuple(label for _, label in pairs))


def analyzer_pass(runner: Any, class_names: Sequence[str], image_size: int, cells: Cells, batch: int,
                  inference_ms_per_cell: float | None = None, framing: Mapping[str, Any] | None = None,
                  tta: str = "none") -> dict[str, Any]:
    """Every cell through the shipped `Analyzer` (decode, resize, batched inference, softmax, mask) at `batch`.

    Args:
        runner: an active runner of the configuration (see `dorl.benchmarks.sessions`).
        class_names: the head's classes, in output order.
        image_size: the graph's input side.
        cells: the benchmark's cells.
        batch: the analyzer's batch size.
        inference_ms_per_cell: the timed inference alone at this batch; the rest of the analyzer's
            time is its host work.
        framing: the model's framing record (`dorl.data.framing`); with input "cell" the analyzer
            runs two passes, and the same cells are also run in one pass (whole images) to price
            the second (the crop on the host and inference on it).
        tta: the analyzer's test-time augmentation (`dorl.contract.TTA_MODES`); other than "none", the
            cells are also run without it, to price its extra classifying passes.

    Returns:
        The analyzer's time per cell (and its split), each cell's top-1 class index and probabilities;
        `second_pass_ms_per_cell` for a cell-centric model and `tta_ms_per_cell` with test-time
        augmentation (None otherwise).
    """
    from dorl.contract import tta_views
    from dorl.manifests import parse_framing
    from dorl.runtime.analyzer import Analyzer

    config = parse_framing({"framing": framing, "folder": "the benchmarked model"}) if framing else None

    def timed(framed: Any, mode: str) -> tuple[list[Any], float]:
        analyzer = Analyzer(runner, batch_size=batch, class_names=list(class_names), image_size=image_size,
                            framing=framed, tta=mode)
        start = time.perf_counter()
        found = analyzer.analyze(list(cells.paths))
        return found, (time.perf_counter() - start) * 1e3 / len(cells.paths)

    results, total_ms = timed(config, tta)
    plain_ms = total_ms if tta == "none" else timed(config, "none")[1]
    cell_centric = config is not None and config.cell
    second_pass = max(plain_ms - timed(None, "none")[1], 0.0) if cell_centric else None
    passes = (2 if cell_centric else 1) + len(tta_views(tta)) - 1
    probs = np.array([[r.probs.get(c, np.nan) for c in class_names] for r in results], dtype=np.float64)
    finite = np.asarray(np.isfinite(probs).all(axis=1), dtype=bool)
    stages = None if inference_ms_per_cell is None else {
        "inference": inference_ms_per_cell * passes, "host": max(total_ms - inference_ms_per_cell * passes, 0.0)}
    return {"pipeline_batch": batch, "analyzer_ms_per_cell": total_ms, "stages_ms_per_cell": stages,
            "second_pass_ms_per_cell": second_pass, "tta": tta,
            "tta_ms_per_cell": None if tta == "none" else max(total_ms - plain_ms, 0.0),
            "failed_cells": int((~finite).sum()),
            "predictions": [int(row.argmax()) if ok else -1 for row, ok in zip(probs, finite)],
            "probs": np.where(finite[:, None], probs, 0.0).round(6).tolist()}


def reference_name(results: Sequence[dict[str, Any]]) -> str | None:
    """The configuration others are compared with: ONNX Runtime FP32, else the PyTorch baseline."""
    ok = [r for r in results if r["status"] == "ok"]
    for backend in ("onnxruntime", "pytorch"):
        found = [r["name"] for r in ok if r["backend"] == backend and r["precision"] == "fp32"]
        if found:
            return found[0]
    return None


def score(results: Sequence[dict[str, Any]], cells: Cells) -> None:
    """Add `accuracy` (on labelled cells) and `agreement` (with the reference) to each ok result."""
    name = reference_name(results)
    reference = next((r for r in results if r["name"] == name), None)
    for result in results:
        if result["status"] != "ok":
            continue
        result["accuracy"] = accuracy(result, cells)
        result["agreement"] = agreement(result, reference) if reference is not None else None


def accuracy(result: dict[str, Any], cells: Cells) -> dict[str, Any] | None:
    """Correct top-1 labels among the labelled cells whose class the model knows (None if none)."""
    names = result["class_names"]
    known = [i for i, label in enumerate(cells.labels) if label is not None and label in names]
    if not known:
        return None
    predictions = result["predictions"]
    correct = sum(predictions[i] >= 0 and names[predictions[i]] == cells.labels[i] for i in known)
    unknown = sum(label is not None and label not in names for label in cells.labels)
    return {"correct": correct, "total": len(known), "accuracy": correct / len(known), "unknown_class_cells": unknown}


def agreement(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Top-1 agreement with the reference, the largest probability difference and the near-ties."""
    ours, theirs = np.asarray(result["probs"]), np.asarray(reference["probs"])
    same = np.asarray(result["predictions"]) == np.asarray(reference["predictions"])
    near = top2_margin(theirs) < NEAR_TIE_MARGIN
    return {"reference": reference["name"], "agree": int(same.sum()), "total": int(same.size),
            "top1_agreement": float(same.mean()), "max_abs_prob_diff": float(np.abs(ours - theirs).max()),
            "near_ties": int(near.sum()), "disagree_on_near_ties": int((~same & near).sum())}
