"""Measure the field analysis on annotated frames: finding, speed, crops, and label agreement.

    python -m dorl.fields.benchmark FIELDS [--artifact ARTIFACT --cells WBC_CROPS]

FIELDS holds `images/*.jpg`, `annotations/*.xml` (Pascal VOC, white cells named `WBC`) and
optionally `labels.csv` (frame, wbc_class). It prints:

- the finder's recall, precision and mean IoU at box IoU >= 0.5 on all frames and on the two
  halves it was tuned and held out on (even and odd frame numbers), and its frames/s;
- how often its edge flag agrees with the annotators' `truncated` flag;
- with `--cells` (single-cell crops cut from the same frames, `<class>/<frame>_<n>.jpg`): where
  each crop lies in its frame, and how well the analyzer's crop boxes overlap them;
- with `--artifact` too: how often the label the analyzer gives a cell found in its frame equals
  the label it gives the single-cell crop of the same cell, and the frame labels' accuracy
  against labels.csv beside the majority-class rate.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dorl.data.images import load_rgb
from dorl.fields.crop import crop_box
from dorl.fields.finder import Box, FinderConfig, FoundCell, find_white_cells
from dorl.fields.scoring import HELD_OUT, TUNE, DetectionScore, box_iou, split_of
from dorl.fields.voc import read_voc


@dataclass
class Frame:
    name: str  # the frame's file stem, e.g. BloodImage_00001
    rgb: np.ndarray
    truth: list[Box]  # annotated white-cell boxes
    truncated: list[bool]


def load_frames(fields: Path) -> list[Frame]:
    frames = []
    for path in sorted((fields / "images").glob("*.jpg")):
        objects = [o for o in read_voc(fields / "annotations" / f"{path.stem}.xml") if o.name == "WBC"]
        frames.append(Frame(path.stem, load_rgb(path), [o.box for o in objects], [o.truncated for o in objects]))
    return frames


def score_finder(frames: Sequence[Frame], found: dict[str, list[FoundCell]]) -> dict[str, DetectionScore]:
    scores = {"all": DetectionScore(), TUNE: DetectionScore(), HELD_OUT: DetectionScore()}
    for frame in frames:
        boxes = [c.box for c in found[frame.name]]
        scores["all"].add(boxes, frame.truth)
        scores[split_of(frame.name)].add(boxes, frame.truth)
    return scores


def time_finder(fields: Path, frames: Sequence[Frame], config: FinderConfig, repeats: int = 2) -> tuple[float, float]:
    """(frames/s finding only, frames/s decoding the JPEG and finding), best of `repeats`."""
    best_find = best_all = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for frame in frames:
            find_white_cells(frame.rgb, config)
        best_find = min(best_find, time.perf_counter() - start)
        start = time.perf_counter()
        for frame in frames:
            find_white_cells(load_rgb(fields / "images" / f"{frame.name}.jpg"), config)
        best_all = min(best_all, time.perf_counter() - start)
    return len(frames) / best_find, len(frames) / best_all


def edge_agreement(frames: Sequence[Frame], found: dict[str, list[FoundCell]]) -> tuple[int, int, Counter[tuple[bool, bool]]]:
    """Matched cells whose edge flag equals the annotation's truncated flag: (agreeing, matched, table)."""
    table: Counter[tuple[bool, bool]] = Counter()
    for frame in frames:
        cells = found[frame.name]
        score = DetectionScore()
        for i, j, _ in score.add([c.box for c in cells], frame.truth):
            table[(frame.truncated[j], cells[i].edge)] += 1
    agree = table[(True, True)] + table[(False, False)]
    return agree, sum(table.values()), table


def locate(frame: np.ndarray, crop: np.ndarray, step: int = 4) -> tuple[Box, float]:
    """Where an unscaled crop of `frame` lies in it: (box, normalised cross-correlation), coarse to fine."""
    grey_f = frame.astype(np.float64).mean(axis=2)
    grey_c = crop.astype(np.float64).mean(axis=2)
    coarse_f, coarse_c = grey_f[::step, ::step], grey_c[::step, ::step]
    scores = _ncc(coarse_f, coarse_c)
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(scores)), scores.shape))
    h, w = grey_c.shape
    best = (-2.0, 0, 0)
    t = grey_c - grey_c.mean()
    for yy in range(max(0, y * step - step), min(grey_f.shape[0] - h, y * step + step) + 1):
        for xx in range(max(0, x * step - step), min(grey_f.shape[1] - w, x * step + step) + 1):
            window = grey_f[yy:yy + h, xx:xx + w]
            window = window - window.mean()
            value = float((window * t).sum() / (np.sqrt((window**2).sum() * (t**2).sum()) + 1e-9))
            best = max(best, (value, xx, yy))
    return (best[1], best[2], best[1] + w, best[2] + h), best[0]


def _ncc(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of a template at every valid position (FFT and running sums)."""
    h, w = template.shape
    t = template - template.mean()
    shape = (image.shape[0] + h - 1, image.shape[1] + w - 1)
    full = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(t[::-1, ::-1], shape), shape)
    numerator = full[h - 1:image.shape[0], w - 1:image.shape[1]]

    def window_sum(a: np.ndarray) -> np.ndarray:
        c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]

    n = h * w
    variance = np.maximum(window_sum(image**2) - window_sum(image) ** 2 / n, 1e-9)
    return numerator / np.sqrt(variance * (t**2).sum())


@dataclass
class CropMatch:
    """A single-cell crop of the data set, where it lies in its frame, and the found cell it shows."""

    path: Path
    label: str  # the crop's folder
    frame: str
    box: Box
    ncc: float
    cell: int | None  # index into the frame's found cells; None when no found cell lies in the crop


def match_crops(cells_dir: Path, frames: Sequence[Frame], found: dict[str, list[FoundCell]]) -> list[CropMatch]:
    by_name = {f.name: f for f in frames}
    matches = []
    for path in sorted(cells_dir.glob("*/*.jpg")):
        name = path.stem.rsplit("_", 1)[0]
        if name not in by_name:
            continue
        box, ncc = locate(by_name[name].rgb, load_rgb(path))
        overlaps = [box_iou(c.box, box) for c in found[name]]
        cell = int(np.argmax(overlaps)) if overlaps and max(overlaps) > 0.2 else None
        matches.append(CropMatch(path, path.parent.name, name, box, ncc, cell))
    return matches


def _print_finder(scores: dict[str, DetectionScore], speed: tuple[float, float], edges: tuple) -> None:
    print("white-cell finder vs the annotated WBC boxes (box IoU >= 0.5)")
    print("| frames | recall | precision | mean IoU | found | missed | spurious |")
    print("|---|---|---|---|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {s.recall:.3f} | {s.precision:.3f} | {s.mean_iou:.3f} | {s.true_positives} | "
              f"{s.false_negatives} | {s.false_positives} |")
    print(f"speed: {speed[0]:.1f} frames/s finding, {speed[1]:.1f} frames/s decoding the JPEG and finding "
          "(one thread)")
    agree, total, table = edges
    print(f"edge flag vs the annotators' truncated flag: {agree}/{total} matched cells agree "
          f"(truncated & flagged {table[(True, True)]}, truncated only {table[(True, False)]}, "
          f"flagged only {table[(False, True)]})")


def _print_crops(matches: Sequence[CropMatch], found: dict[str, list[FoundCell]], sizes: dict[str, tuple[int, int]]) -> None:
    placed = [(m, m.cell) for m in matches if m.cell is not None]
    ious = np.array([box_iou(crop_box(found[m.frame][i].nucleus_box, sizes[m.frame]), m.box) for m, i in placed])
    print(f"single-cell crops located in their frames: {len(matches)} (NCC min {min(m.ncc for m in matches):.3f}); "
          f"{len(placed)} show a found cell")
    whole = [(m.box, found[m.frame][i]) for m, i in placed if not found[m.frame][i].edge]
    ratios = np.array([(b[2] - b[0]) / max(c.nucleus_box[2] - c.nucleus_box[0], c.nucleus_box[3] - c.nucleus_box[1])
                       for b, c in whole])
    if len(ratios):
        print(f"crop side / nucleus box's longer side, {len(ratios)} cells not cut by the edge: median "
              f"{np.median(ratios):.3f}, quartiles {np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}")
    edge = np.array([found[m.frame][i].edge for m, i in placed], dtype=bool)
    for name, rows in (("", np.ones_like(edge)), (" (cells not cut by the edge)", ~edge), (" (cells cut by the edge)", edge)):
        if rows.any():
            part = ious[rows]
            print(f"analyzer crop boxes vs the data set's crops{name}: {len(part)} cells, IoU median "
                  f"{np.median(part):.3f}, mean {part.mean():.3f}, 10th percentile {np.percentile(part, 10):.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fields", type=Path, help="folder with images/, annotations/ and labels.csv")
    parser.add_argument("--cells", type=Path, help="single-cell crops cut from the same frames (<class>/<frame>_N.jpg)")
    parser.add_argument("--artifact", type=Path, help="an exported artifact, to compare field and crop labels")
    parser.add_argument("--site", type=Path, help="a site profile from `dorl adapt` for the artifact")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    config = FinderConfig()
    frames = load_frames(args.fields)
    found = {f.name: find_white_cells(f.rgb, config) for f in frames}
    print(f"{len(frames)} frames, {sum(len(f.truth) for f in frames)} annotated white cells; {config}")
    _print_finder(score_finder(frames, found), time_finder(args.fields, frames, config), edge_agreement(frames, found))
    if args.cells is None:
        return
    matches = match_crops(args.cells, frames, found)
    sizes = {f.name: (f.rgb.shape[0], f.rgb.shape[1]) for f in frames}
    _print_crops(matches, found, sizes)
    if args.artifact is not None:
        from dorl.fields.agreement import print_agreement

        print_agreement(args.artifact, args.fields, frames, matches, args.batch_size, args.site)


if __name__ == "__main__":
    main()
