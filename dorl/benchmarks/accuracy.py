"""The cells a benchmark runs on, the timed pipeline pass over them, and the accuracy scores.

Cells come from labelled domain folders (`<domain>/<class>/<image>`, the label is the class
folder) and unlabelled image folders; a name that is not a path is looked up as a domain of the
shared data (`shared/data/wbc/<name>`). Every configuration sees the same cells in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError, ImageError

MASKS_FOLDER = "masks"
NEAR_TIE = 0.05  # reference top-1 minus top-2 probability below this: agreement there is a coin toss


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
    """A folder by path, else by domain name under the shared data (`shared/data/wbc/NAME`)."""
    from dorl.paths import wbc_data_dir

    path = Path(name)
    if path.exists():
        return path
    shared = wbc_data_dir()
    if shared is not None and (shared / str(name)).is_dir():
        return shared / str(name)
    raise ImageError(f"{name} is neither an existing path nor a domain of the shared data: give a folder of images "
                     "or a domain name such as pbc, bccd or jtsc.")


def labelled_files(domain: Path, classes: Sequence[str] | None = None) -> list[tuple[Path, str]]:
    """(image, class) pairs of a `<domain>/<class>/<image>` folder, interleaved class by class.

    Args:
        domain: the folder; its `masks/` tree (expert masks) is not a class.
        classes: keep only these class folders (None: all).
    """
    from dorl.data.images import find_images

    folders = [d for d in sorted(domain.iterdir()) if d.is_dir() and d.name != MASKS_FOLDER]
    per_class = [[(f, d.name) for f in find_images([d])] for d in folders if classes is None or d.name in classes]
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


def preprocess(paths: Sequence[str], size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Decode and resize cells exactly as the analyzer does: uint8 [N,S,S,3] and original (h, w)."""
    from dorl.data.images import load_rgb, resize_square

    rgbs = [load_rgb(p) for p in paths]
    return np.stack([resize_square(rgb, size) for rgb in rgbs]), [(r.shape[0], r.shape[1]) for r in rgbs]


def postprocess(outputs: dict[str, np.ndarray], sizes: list[tuple[int, int]]) -> np.ndarray:
    """The analyzer's host work per batch: softmax of the logits and each cell's mask; returns probs."""
    from dorl.runtime import postprocess as post

    probs = post.softmax(outputs["logits"]) if "logits" in outputs else outputs["probs"]
    if "mask_logits" in outputs:
        for row, size in enumerate(sizes):
            post.cell_mask(outputs["mask_logits"][row], size)
    return probs


def pipeline_pass(session: Any, cells: Cells, batch: int) -> dict[str, Any]:
    """Every cell through decode+resize → inference → postprocessing at `batch`, each stage timed."""
    spent = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    probs: list[np.ndarray] = []
    for start in range(0, len(cells.paths), batch):
        t0 = time.perf_counter()
        pixels, sizes = preprocess(cells.paths[start:start + batch], session.image_size)
        t1 = time.perf_counter()
        outputs = session.infer(pixels)
        t2 = time.perf_counter()
        probs.append(postprocess(outputs, sizes))
        spent["preprocess"] += t1 - t0
        spent["inference"] += t2 - t1
        spent["postprocess"] += time.perf_counter() - t2
    table = np.concatenate(probs).astype(np.float64)
    return {"pipeline_batch": batch, "stages_ms_per_cell": {k: v * 1e3 / len(cells.paths) for k, v in spent.items()},
            "predictions": [int(i) for i in table.argmax(axis=1)], "probs": table.round(6).tolist()}


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
    correct = sum(names[result["predictions"][i]] == cells.labels[i] for i in known)
    unknown = sum(label is not None and label not in names for label in cells.labels)
    return {"correct": correct, "total": len(known), "accuracy": correct / len(known), "unknown_class_cells": unknown}


def agreement(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Top-1 agreement with the reference, the largest probability difference and the near-ties."""
    ours, theirs = np.asarray(result["probs"]), np.asarray(reference["probs"])
    same = np.asarray(result["predictions"]) == np.asarray(reference["predictions"])
    ranked = np.sort(theirs, axis=1)
    near = (ranked[:, -1] - ranked[:, -2]) < NEAR_TIE if theirs.shape[1] > 1 else np.zeros(len(same), bool)
    return {"reference": reference["name"], "agree": int(same.sum()), "total": int(same.size),
            "top1_agreement": float(same.mean()), "max_abs_prob_diff": float(np.abs(ours - theirs).max()),
            "near_ties": int(near.sum()), "disagree_on_near_ties": int((~same & near).sum())}
