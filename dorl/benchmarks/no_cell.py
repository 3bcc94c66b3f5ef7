"""How often the analyzer answers "no cell": on real held-out cells (should be rare) and on frames
without a white cell (should be nearly always).

    python -m dorl.benchmarks.no_cell ARTIFACT --cells pbc=FOLDER --cells bccd=FOLDER \\
        --platelets FOLDER [--exclude FOLDER] [--site bccd=PROFILE] [--json OUT]

Real cells: every image under each `--cells` folder, minus files whose content also lies under
an `--exclude` folder (the cells the model was trained on). Non-cell frames are made here:
black, white and grey frames, uniform and Gaussian noise, checkerboards, fully transparent
PNGs, each at several sizes, plus the platelet images given. Prints one row per group: how many
images, the share answered "no cell", the share caught by the mask and by the feature distance,
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
    """Per image: status, whether the mask or the feature said "no cell", the distance and mask figures."""
    from dorl.runtime.cell_check import border_share, mask_area

    rows = []
    for result in analyzer.iter_analyze(sources):
        mask = result.mask_lowres
        rows.append({
            "status": result.status,
            "by_feature": any("feature lies" in r for r in result.no_cell),
            "by_mask": any("mask" in r for r in result.no_cell),
            "distance": result.distance,
            "area": mask_area(mask) if mask is not None else None,
            "border": border_share(mask) if mask is not None else None,
            "label": result.label,
        })
    return rows


def summarise(group: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    distances = [r["distance"] for r in rows if r["distance"] is not None]

    def share(key: str) -> float:
        return sum(bool(r[key]) for r in rows) / n if n else 0.0

    return {"group": group, "n": n, "no_cell": sum(r["status"] == "no_cell" for r in rows) / n if n else 0.0,
            "by_mask": share("by_mask"), "by_feature": share("by_feature"),
            "failed": sum(r["status"] == "failed" for r in rows),
            "median_distance": float(np.median(distances)) if distances else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--cells", action="append", default=[], help="NAME=FOLDER of real cells (repeatable)")
    parser.add_argument("--platelets", type=Path, help="a folder of platelet images (no white cell)")
    parser.add_argument("--exclude", action="append", type=Path, default=[], help="training cells to leave out")
    parser.add_argument("--site", action="append", default=[], help="NAME=PROFILE: analyse NAME with this profile")
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
    results: dict[str, Any] = {}
    print(f"{'group':<22} {'n':>5} {'no cell':>8} {'by mask':>8} {'by feature':>10} {'failed':>6} {'median dist':>11}")
    for group, (sources, site) in groups.items():
        with Analyzer(args.artifact, site=site) as analyzer:
            rows = measure(analyzer, sources)
            threshold = analyzer.cell_check.distance.threshold if analyzer.cell_check and analyzer.cell_check.distance \
                else None
        s = summarise(group, rows)
        results[group] = {"summary": s, "rows": rows, "threshold": threshold}
        median = f"{s['median_distance']:.3f}" if s["median_distance"] is not None else "-"
        print(f"{group:<22} {s['n']:>5} {s['no_cell']:>8.1%} {s['by_mask']:>8.1%} {s['by_feature']:>10.1%} "
              f"{s['failed']:>6} {median:>11}", flush=True)
    non_cells = [r for g, v in results.items() if g.startswith("frame:") for r in v["rows"]]
    if non_cells:
        print(f"all non-cell frames: {sum(r['status'] == 'no_cell' for r in non_cells) / len(non_cells):.1%} "
              f"answered 'no cell' (n={len(non_cells)}); distance threshold {threshold}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
