"""How often the analyzer answers "no cell": on real held-out cells (should be rare) and on frames
without a white cell (should be nearly always).

    python -m dorl.benchmarks.no_cell ARTIFACT --cells pbc=FOLDER --cells bccd=FOLDER \\
        --platelets FOLDER [--exclude FOLDER] [--site bccd=PROFILE] [--json OUT]

Real cells: every image under each `--cells` folder, minus files whose content also lies under
an `--exclude` folder (the cells the model was trained on). Non-cell frames are made here:
black, white and grey frames, uniform and Gaussian noise, checkerboards, fully transparent
PNGs, each at several sizes, plus the platelet images given. Prints one row per group: how many
images, the share answered "no cell", the share caught by the mask, the feature distance, the
non-cell discriminant and the stain floor (when the artifact records them, see `dorl non-cells`),
and the distance's median; `--json` keeps every image's figures for threshold studies.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (96, 224, 363)
MASKS = "masks"  # a domain's expert masks live in <domain>/masks/, beside its class folders


def non_cell_frames(seed: int = 0) -> Iterator[tuple[str, str, Any]]:
    """(group, name, image source) for frames that hold no white cell."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for size in SIZES:
        yield "black", f"black_{size}", np.zeros((size, size, 3), np.uint8)
        yield "white", f"white_{size}", np.full((size, size, 3), 255, np.uint8)
        for level in (64, 128, 192, 230):
            yield "grey", f"grey{level}_{size}", np.full((size, size, 3), level, np.uint8)
        for i in range(3):
            yield "noise", f"uniform{i}_{size}", rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            gauss = np.clip(rng.normal(128 + 40 * (i - 1), 40, (size, size, 3)), 0, 255).astype(np.uint8)
            yield "noise", f"gauss{i}_{size}", gauss
        for square in (4, 16, 48):
            yy, xx = np.indices((size, size))
            cells = ((yy // square + xx // square) % 2).astype(np.uint8) * 255
            yield "checkerboard", f"checker{square}_{size}", np.repeat(cells[:, :, None], 3, axis=2)
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((size, size, 4), np.uint8)).save(buffer, format="PNG")
        yield "transparent", f"transparent_{size}", buffer.getvalue()


def held_out(folder: Path, exclude: list[Path]) -> list[Path]:
    """The images under `folder` (its masks/ left out) whose content is not under any `exclude` folder."""
    from dorl.data.scan import find_images

    trained = {hashlib.sha256(p.read_bytes()).digest() for e in exclude for p in find_images([e])}
    images = [p for p in find_images([folder]) if MASKS not in p.relative_to(folder).parts]  # expert masks
    return [p for p in images if hashlib.sha256(p.read_bytes()).digest() not in trained]


def measure(analyzer: Any, sources: list[Any]) -> list[dict[str, Any]]:
    """Per image: status, whether the mask, the distance or the non-cell discriminant said "no cell",
    the distance, the score and the mask figures (and, under "_", the feature and mask for re-deciding)."""

    rows = []
    for result in analyzer.iter_analyze(sources):
        rows.append(_row(result.status, result.no_cell, result.distance, result.non_cell_score, result.mask_lowres,
                         result.label, result.stain_area))
        rows[-1]["_"] = (result.feature, result.mask_lowres, result.stain_area)
    return rows


def _row(status: str, reasons: tuple[str, ...], distance: float | None, score: float | None, mask: Any,
         label: str | None, stain: float | None = None) -> dict[str, Any]:
    from dorl.runtime.cell_check import border_share, mask_area

    return {
        "status": status,
        "by_feature": any("feature lies" in r for r in reasons),
        "by_mask": any("mask" in r for r in reasons),
        "by_non_cell": any("towards the images without a white cell" in r for r in reasons),
        "by_stain": any("stained (purple) region" in r for r in reasons),
        "stain_area": stain,
        "distance": distance,
        "non_cell_score": score,
        "area": mask_area(mask) if mask is not None else None,
        "border": border_share(mask) if mask is not None else None,
        "label": label,
    }


def redecide(rows: list[dict[str, Any]], check: Any, transform: Any = None) -> list[dict[str, Any]]:
    """The rows decided again by `check` (a `CellCheck`), their features first mapped by `transform`."""
    out = []
    for row in rows:
        feature, mask, stain = row["_"]
        if feature is None:
            out.append(row)
            continue
        x = feature[None, :].astype(np.float64)
        x = transform(x) if transform is not None else x
        distance = float(check.distance(x)[0]) if check.distance is not None else None
        score = float(check.non_cell(x)[0]) if check.non_cell is not None else None
        reasons = check.reasons(mask, distance, score, stain)
        out.append({**_row("no_cell" if reasons else "ok", reasons, distance, score, mask, row["label"], stain),
                    "_": row["_"]})
    return out


def mean_shift(artifact: Path, name: str, rows: list[dict[str, Any]]) -> Any:
    """The site's mean-shift map from the rows' features, as `dorl adapt --method mean` fits it."""
    from dorl.artifacts import read_manifest
    from dorl.runtime.head import load_head
    from dorl.runtime.site_profile import RunningStats, artifact_id, fit_profile

    manifest = read_manifest(artifact, verify=False)
    _, source = load_head(manifest)
    stats = RunningStats(source["mean"].shape[0])
    stats.update(np.stack([r["_"][0] for r in rows if r["_"][0] is not None]))
    return fit_profile(name, source, stats, "mean", artifact_id(manifest), min_cells=1).apply


def held_out_source(rows: list[dict[str, Any]], non_cell_rows: list[dict[str, Any]] | None, folds: int,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Source-lab cells decided by statistics, thresholds and floors fitted without them.

    Each fold's cells are decided against the mean, covariance and calibrated distance threshold
    of the other folds, their stain floor (when the rows carry stained areas: the artifact
    records one) and, when `non_cell_rows` are given (the images the artifact's discriminant was
    fitted on), a discriminant fitted from those statistics, as `dorl non-cells` does.
    """
    from dorl.runtime.cell_check import (
        CellCheck,
        FeatureDistance,
        calibrate_threshold,
        fit_non_cell,
        stain_floor,
    )

    usable = [r for r in rows if r["_"][0] is not None]
    x = np.stack([r["_"][0] for r in usable]).astype(np.float64)
    stains = np.array([r["_"][2] if r["_"][2] is not None else np.nan for r in usable])
    negatives = np.stack([r["_"][0] for r in non_cell_rows if r["_"][0] is not None]) if non_cell_rows else None
    parts = np.array_split(np.random.default_rng(seed).permutation(len(usable)), folds)
    out: list[dict[str, Any]] = []
    for k, test in enumerate(parts):
        train = x[np.concatenate([p for j, p in enumerate(parts) if j != k])]
        source = {"mean": train.mean(axis=0), "std": train.std(axis=0, ddof=1), "cov": np.cov(train, rowvar=False)}
        distance = FeatureDistance.from_source(source, threshold=calibrate_threshold(train))
        non_cell = None
        if negatives is not None:
            from dorl.runtime.cell_check import NonCellDiscriminant

            non_cell = NonCellDiscriminant.from_source({**source, **fit_non_cell(source, negatives)})
        train_stains = stains[np.concatenate([p for j, p in enumerate(parts) if j != k])]
        floor = stain_floor(train_stains) if np.isfinite(train_stains).all() else None
        out.extend(redecide([usable[i] for i in test], CellCheck(distance=distance, non_cell=non_cell, min_stain=floor)))
    return out


def summarise(group: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    distances = [r["distance"] for r in rows if r["distance"] is not None]

    def share(key: str) -> float:
        return sum(bool(r[key]) for r in rows) / n if n else 0.0

    return {"group": group, "n": n, "no_cell": sum(r["status"] == "no_cell" for r in rows) / n if n else 0.0,
            "by_mask": share("by_mask"), "by_feature": share("by_feature"), "by_non_cell": share("by_non_cell"),
            "by_stain": share("by_stain"),
            "failed": sum(r["status"] == "failed" for r in rows),
            "median_distance": float(np.median(distances)) if distances else None}


def report(group: str, rows: list[dict[str, Any]], results: dict[str, Any], threshold: float | None) -> None:
    s = summarise(group, rows)
    results[group] = {"summary": s, "rows": [{k: v for k, v in r.items() if k != "_"} for r in rows],
                      "threshold": threshold}
    median = f"{s['median_distance']:.3f}" if s["median_distance"] is not None else "-"
    print(f"{group:<26} {s['n']:>5} {s['no_cell']:>8.1%} {s['by_mask']:>8.1%} {s['by_feature']:>10.1%} "
          f"{s['by_non_cell']:>11.1%} {s['by_stain']:>8.1%} {s['failed']:>6} {median:>11}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--cells", action="append", default=[], help="NAME=FOLDER of real cells (repeatable)")
    parser.add_argument("--platelets", type=Path, help="a folder of platelet images (no white cell), held out")
    parser.add_argument("--fitted-non-cells", type=Path,
                        help="the images the artifact's non-cell discriminant was fitted on (`dorl non-cells`)")
    parser.add_argument("--exclude", action="append", type=Path, default=[], help="training cells to leave out")
    parser.add_argument("--site", action="append", default=[], help="NAME=PROFILE: analyse NAME with this profile")
    parser.add_argument("--mean-shift", action="append", default=[],
                        help="NAME: also decide NAME's cells after the mean-shift map of their own features")
    parser.add_argument("--folds", type=int, default=0,
                        help="also decide the first --cells group by statistics fitted without each of K folds")
    parser.add_argument("--json", type=Path, help="write every image's figures here")
    args = parser.parse_args(argv)
    from dorl.runtime.analyzer import Analyzer

    sites = dict(s.split("=", 1) for s in args.site)
    groups: dict[str, tuple[list[Any], str | None]] = {}
    for spec in args.cells:
        name, folder = spec.split("=", 1)
        groups[f"cells:{name}"] = (list(held_out(Path(folder), args.exclude)), None)
        if name in sites:
            groups[f"cells:{name}+site"] = (groups[f"cells:{name}"][0], sites[name])
    frames: dict[str, list[Any]] = {}
    for group, _, source in non_cell_frames():
        frames.setdefault(f"frame:{group}", []).append(source)
    groups.update({g: (s, None) for g, s in frames.items()})
    if args.platelets is not None:
        groups["frame:platelet"] = (list(held_out(args.platelets, [])), None)
    if args.fitted_non_cells is not None:
        groups["fitted:non-cells"] = (list(held_out(args.fitted_non_cells, [])), None)
    results: dict[str, Any] = {}
    measured: dict[str, list[dict[str, Any]]] = {}
    print(f"{'group':<26} {'n':>5} {'no cell':>8} {'by mask':>8} {'by feature':>10} {'by non-cell':>11} {'by stain':>8} "
          f"{'failed':>6} {'median dist':>11}")
    threshold = None
    for group, (sources, site) in groups.items():
        with Analyzer(args.artifact, site=site) as analyzer:
            rows = measured[group] = measure(analyzer, sources)
            check = analyzer.cell_check
            threshold = check.distance.threshold if check is not None and check.distance is not None else None
        report(group, rows, results, threshold)
        name = group.split(":", 1)[1]
        if group.startswith("cells:") and name in args.mean_shift and check is not None:
            report(f"{group}+mean-shift", redecide(rows, check, mean_shift(args.artifact, name, rows)), results,
                   threshold)
    if args.folds and args.cells:
        group = f"cells:{args.cells[0].split('=', 1)[0]}"
        report(f"{group} held out ({args.folds}-fold)",
               held_out_source(measured[group], measured.get("fitted:non-cells"), args.folds), results, threshold)
    non_cells = [r for g, v in results.items() if g.startswith("frame:") for r in v["rows"]]
    if non_cells:
        print(f"all non-cell frames: {sum(r['status'] == 'no_cell' for r in non_cells) / len(non_cells):.1%} "
              f"answered 'no cell' (n={len(non_cells)}); distance threshold {threshold}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
