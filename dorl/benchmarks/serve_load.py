"""Load test: `dorl predict` against `dorl serve` (1 and N concurrent clients) on the same artifact and cells.

One command (`python -m dorl.benchmarks.serve_load ARTIFACT [CELLS...]`) measures, on loopback:

- `dorl predict` on every cell in one call (cells/s over the whole process, model load included),
  and one call per cell for a few cells (its latency is what a firmware calling the CLI would see);
- `dorl serve` started as its own process, then 1 and N client threads, each with a keep-alive
  connection, posting encoded cells to `/analyze` (decode, inference and mask, as predict does),
  and N clients posting the graph's uint8 tensors to the v2 `/infer` endpoint;

and reports cells/s, p50/p99 latency per request, the mean batch the server formed (from its
/metrics), the peak RSS of each process (`wait4`), whether the served labels equal predict's, and
the load average before and after (the numbers are only as quiet as the machine).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class Row:
    """One line of the report."""

    configuration: str
    cells: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch: float | None
    peak_rss_mb: float
    errors: int = 0

    @property
    def cells_per_s(self) -> float:
        return self.cells / self.seconds


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dorl.cli", *args]


def _run_measured(command: list[str]) -> tuple[float, float, str]:
    """Run a process to the end: (wall seconds, its own peak RSS in MB, stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:5])} ... exited with {process.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out


def _percentiles(latencies: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return float(p50), float(p99)


def measure_predict(artifact: Path, cells: list[Path], single: int) -> tuple[list[Row], dict[str, str]]:
    """`dorl predict` on all cells in one call, and on `single` cells one call each; and its labels."""
    seconds, rss, out = _run_measured(_cli("predict", str(artifact), *map(str, cells), "--json"))
    labels = {r["source"]: r["label"] for r in map(json.loads, out.splitlines())}
    rows = [Row("`dorl predict`, all cells in one call (batch 8)", len(cells), seconds, None, None, 8.0, rss)]
    timings, peak = [], 0.0
    for cell in cells[:single]:
        took, rss, _ = _run_measured(_cli("predict", str(artifact), str(cell), "--json"))
        timings.append(took)
        peak = max(peak, rss)
    rows.append(Row("`dorl predict`, one call per cell", len(timings), sum(timings), *_percentiles(timings), 1.0, peak))
    return rows, labels


class ServeProcess:
    """`dorl serve` on a free loopback port, in its own process."""

    def __init__(self, artifact: Path, extra: Sequence[str]) -> None:
        self.process = subprocess.Popen(_cli("serve", str(artifact), "--port", "0", *extra), stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "ready on http://" not in line:
            self.process.kill()
            raise RuntimeError(f"dorl serve did not start: {line!r}")
        self.address = line.rsplit("http://", 1)[1].strip()

    def batches(self) -> tuple[float, float]:
        """(items, batches) the server has run so far, from /metrics."""
        connection = http.client.HTTPConnection(self.address, timeout=60)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        values = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for key in values:
                if line.startswith(f"dorl_batch_size_{key}{{"):
                    values[key] += float(line.split()[-1])
        return values["sum"], values["count"]

    def stop(self) -> float:
        """SIGTERM, wait for the drain; the server's peak RSS in MB."""
        self.process.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(self.process.pid, 0)
        return usage.ru_maxrss / 1024


Request = Callable[[http.client.HTTPConnection, int], str | None]  # sends request i, returns the label (if any)


def analyze_request(cells: list[Path]) -> Request:
    payloads = [(c.read_bytes(), str(c)) for c in cells]

    def send(connection: http.client.HTTPConnection, i: int) -> str | None:
        body, source = payloads[i % len(payloads)]
        connection.request("POST", "/v2/models/dorl/analyze?mask=none", body, {"X-Dorl-Source": source})
        response = connection.getresponse()
        record = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(record.get("error"))
        return record["label"]

    return send


def infer_request(cells: list[Path], size: int) -> Request:
    from dorl.data.images import load_rgb, resize_square

    bodies = []
    for cell in cells:
        pixels = resize_square(load_rgb(cell), size)[None]
        header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": list(pixels.shape),
                                         "parameters": {"binary_data_size": pixels.nbytes}}],
                             "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]}).encode()
        bodies.append((header + pixels.tobytes(), len(header)))

    def send(connection: http.client.HTTPConnection, i: int) -> str | None:
        body, length = bodies[i % len(bodies)]
        connection.request("POST", "/v2/models/dorl/infer", body, {HEADER_LENGTH: str(length)})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return None

    return send


def drive(server: ServeProcess, send: Request, clients: int, per_client: int) -> tuple[float, list[float], int]:
    """`clients` threads, each sending `per_client` requests on its own connection: (seconds, latencies, errors)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(server.address, timeout=300)
        for k in range(per_client):
            start = time.perf_counter()
            try:
                send(connection, index * per_client + k)
            except (RuntimeError, OSError):
                with lock:
                    errors[0] += 1
                connection.close()
                connection = http.client.HTTPConnection(server.address, timeout=300)
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors[0]


def measure_serve(artifact: Path, cells: list[Path], clients: Sequence[int], per_client: int, image_size: int,
                  predicted: dict[str, str], serve_args: Sequence[str]) -> tuple[list[Row], float]:
    """The serve rows, and the share of cells whose served label equals predict's."""
    server = ServeProcess(artifact, serve_args)
    try:
        warm = analyze_request(cells)
        connection = http.client.HTTPConnection(server.address, timeout=300)
        served = {str(c): warm(connection, i) for i, c in enumerate(cells)}  # warm-up, and the labels
        connection.close()
        agreement = float(np.mean([served[str(c)] == predicted.get(str(c)) for c in cells]))
        runs = [(f"`dorl serve` /analyze (image bytes), {n} client{'s' * (n > 1)}", analyze_request(cells), n)
                for n in clients]
        runs.append((f"`dorl serve` /infer (v2 binary uint8), {max(clients)} clients",
                     infer_request(cells, image_size), max(clients)))
        measured = []
        for name, send, n in runs:
            items, batches = server.batches()
            seconds, latencies, errors = drive(server, send, n, per_client)
            items_after, batches_after = server.batches()
            mean_batch = (items_after - items) / max(batches_after - batches, 1)
            measured.append((name, len(latencies), seconds, *_percentiles(latencies), mean_batch, errors))
    finally:
        rss = server.stop()
    return [Row(name, n, s, p50, p99, batch, rss, errors) for name, n, s, p50, p99, batch, errors in measured], agreement


def markdown(rows: list[Row]) -> str:
    lines = ["| configuration | cells | cells/s | p50 ms | p99 ms | mean batch | peak RSS MB | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = (f"{r.p50_ms:.0f} | {r.p99_ms:.0f}" if r.p50_ms is not None and r.p99_ms is not None else "- | -")
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        lines.append(f"| {r.configuration} | {r.cells} | {r.cells_per_s:.1f} | {ms} | {batch} | "
                     f"{r.peak_rss_mb:.0f} | {r.errors} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from dorl.artifacts import read_manifest
    from dorl.data.images import find_images
    from dorl.paths import ASSETS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an ONNX artifact (or engine) folder")
    parser.add_argument("cells", nargs="*", type=Path, help="images or folders (default: the bundled sample)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients per run, comma-separated")
    parser.add_argument("--requests", type=int, default=100, help="requests per client per run")
    parser.add_argument("--single", type=int, default=5, help="cells run through one `dorl predict` call each")
    parser.add_argument("--serve-args", default="", help="extra `dorl serve` options, e.g. '--max-batch 16'")
    parser.add_argument("--json", type=Path, help="also write the rows and conditions here")
    args = parser.parse_args(argv)
    cells = find_images(args.cells or [ASSETS_DIR / "sample"])
    manifest = read_manifest(args.artifact, verify=False)
    load_before = os.getloadavg()
    rows, predicted = measure_predict(args.artifact, cells, args.single)
    serve_rows, agreement = measure_serve(args.artifact, cells, [int(n) for n in args.clients.split(",")],
                                          args.requests, int(manifest.get("image_size", 224)), predicted,
                                          args.serve_args.split())
    rows += serve_rows
    load_after = os.getloadavg()
    print(markdown(rows))
    print(f"\n{len(cells)} cells; top-1 of /analyze equal to `dorl predict`: {agreement:.1%}; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [asdict(r) | {"cells_per_s": r.cells_per_s} for r in rows],
                                         "agreement": agreement, "load_before": load_before,
                                         "load_after": load_after, "cells": len(cells)}, indent=2))


if __name__ == "__main__":
    main()
