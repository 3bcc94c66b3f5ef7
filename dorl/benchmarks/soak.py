"""Soak test of `dorl predict --json`: memory stays flat and records stream out, however many cells.

    python -m dorl.benchmarks.soak ARTIFACT [--cells 10000] [--batch-size 8] [--source FOLDER ...]

Makes a folder of N cell files (hard links to the bundled sample's real cells, or to the images
of the `--source` folders, repeated under distinct names), runs `dorl predict ARTIFACT FOLDER --json` in a
child process, reads its records as they arrive, and samples the child's resident memory (RSS)
as it goes. Prints the time to the first record, the RSS every `--every` cells, the growth of
RSS from cell 1,000 to the end, cells/s, the first record's time in batches (the time to the
first record over the mean time per batch: about 1 when records stream, the number of batches
when they come only at the end), and the load average before and after (Linux only:
the RSS comes from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"


def make_cells(folder: Path, count: int, sources: list[Path]) -> int:
    """Fill `folder` with `count` distinct names for the images under `sources` (hard links, else copies)."""
    from dorl.data.scan import find_images

    images = find_images(sources)
    if not images:
        raise SystemExit(f"no images under {', '.join(map(str, sources))}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        original = images[i % len(images)]
        target = folder / f"cell_{i:06d}{original.suffix.lower()}"
        try:
            os.link(original, target)
        except OSError:
            target.write_bytes(original.read_bytes())
    return len(images)


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(artifact: Path, folder: Path, batch_size: int, every: int) -> dict[str, object]:
    """Run predict over `folder`; returns the measurements (also printed as they come)."""
    command = [sys.executable, "-c", "from dorl.cli import main; main()", "predict", str(artifact), str(folder),
               "--json", "--batch-size", str(batch_size)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    samples: list[tuple[int, float, float]] = []  # (cells, seconds, RSS MB)
    first = None
    statuses: dict[str, int] = {}
    count = 0
    for line in child.stdout:
        count += 1
        record = json.loads(line)
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
        now = time.perf_counter() - started
        if first is None:
            first = now
            print(f"first record after {now:.1f} s (RSS {rss_mb(child.pid):.0f} MB)", flush=True)
        if count % every == 0 or count in (batch_size, 1000):
            samples.append((count, now, rss_mb(child.pid)))
            print(f"{count:>7} cells  {now:>8.1f} s  RSS {samples[-1][2]:>7.1f} MB  {count / now:>6.1f} cells/s",
                  flush=True)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    code = child.wait()
    total = time.perf_counter() - started
    after_1000 = [rss for cells, _, rss in samples if cells >= 1000]
    per_batch = total / max(1, -(-count // batch_size))
    return {"cells": count, "exit_code": code, "seconds": round(total, 1), "first_record_s": first,
            "first_record_batches": round(first / per_batch, 2) if first is not None else None,
            "cells_per_s": round(count / total, 2), "statuses": statuses, "samples": samples,
            "rss_growth_from_1000_mb": round(max(after_1000) - after_1000[0], 1) if after_1000 else None,
            "summary": stderr.strip().splitlines()[-1] if stderr.strip() else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--every", type=int, default=500, help="sample RSS every N cells")
    parser.add_argument("--source", type=Path, action="append",
                        help="a folder of images to repeat; may be given more than once (default: the bundled sample)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dorl-soak-") as tmp:
        distinct = make_cells(Path(tmp) / "cells", args.cells, args.source or [SAMPLE])
        print(f"{args.cells} cells ({distinct} distinct images repeated), batch {args.batch_size}, "
              f"load average {load_before[0]:.1f}", flush=True)
        result = soak(args.artifact, Path(tmp) / "cells", args.batch_size, args.every)
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    print(f"{result['cells']} records in {result['seconds']} s: {result['cells_per_s']} cells/s; first record after "
          f"{result['first_record_s']:.1f} s ({result['first_record_batches']} batches' time); RSS growth from cell 1,000 to the end: "
          f"{result['rss_growth_from_1000_mb']} MB; exit code {result['exit_code']}; load average "
          f"{result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}")  # type: ignore[index]
    print(result["summary"])
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
