"""`dorl bench`: latency, throughput, memory, FLOPs and accuracy of each configuration on real cells."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import TtaOption, console, user_errors
from dorl.errors import ConfigError


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """"1,2,4,8" → (1, 2, 4, 8); raises ConfigError on anything else."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise ConfigError(f"--batch-sizes {text!r} is not a comma-separated list of positive integers: e.g. 1,2,4,8.")
    return tuple(sorted(set(sizes)))


@user_errors
def bench(
    artifacts: Annotated[list[Path] | None, typer.Argument(help="ONNX artifact and TensorRT engine folders.")] = None,
    out: Annotated[Path, typer.Option("-o", "--output", "--out", help="Folder for report.json, report.md and the plots.")] = Path(
        "bench"),
    bundle: Annotated[Path | None, typer.Option(help="Model bundle: the PyTorch eager FP32 baseline.")] = None,
    images: Annotated[list[str] | None, typer.Option(
        help="Folders of cells, or shared domain names (pbc, bccd, jtsc); repeat the option.")] = None,
    labelled: Annotated[str | None, typer.Option(
        help="A <domain>/<class>/<image> folder or shared domain name: accuracy is scored on it.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,2,4,8",
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs per batch size.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before them.")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads (default: each library's).")] = None,
    max_cells: Annotated[int, typer.Option(
        "--max-cells", "-n", min=1, help="At most this many cells (labelled first).")] = 64,
    device: Annotated[str, typer.Option(help="cpu, or cuda (ONNX Runtime CUDA provider, torch on the GPU).")] = "cpu",
    plots: Annotated[bool, typer.Option(help="Write latency, throughput and accuracy PNGs.")] = True,
    tta: TtaOption = None,
) -> None:
    """Benchmark each configuration on the same real cells and write the report.

    Exit codes: 0 every configuration measured (or skipped where its backend is absent), 3 some failed,
    4 none measured.
    """
    from dorl.benchmarks.accuracy import collect_cells
    from dorl.benchmarks.harness import BenchSettings, targets_from
    from dorl.benchmarks.harness import bench as run_bench
    from dorl.benchmarks.report import print_report, write_report
    from dorl.runtime.records import EXIT_NOTHING, EXIT_PARTIAL
    from dorl.safe_write import check_output

    check_output(out, overwrite=True)  # a folder of report files: never a file, an artifact or inside one
    paths = list(artifacts or [])
    settings = BenchSettings(batch_sizes=parse_batch_sizes(batch_sizes), iterations=iterations, warmup=warmup,
                             threads=threads, device=device, tta=tta)
    targets = targets_from(paths, bundle)  # checks every artifact before any image is read
    if not images and labelled is None:
        raise ConfigError("no cells to benchmark on: give --labelled DOMAIN and/or --images FOLDER.")
    classes = next((list(t.class_names) for t in targets if t.class_names), None)
    cells = collect_cells(images or [], labelled, max_cells, classes)
    err = console()
    report = run_bench(paths, cells, settings, bundle=bundle, reporter=lambda line: err.print(line, highlight=False),
                       targets=targets)
    print_report(report)
    written = write_report(report, out, plots=plots)
    typer.echo(f"report written to {written['json'].parent}: {', '.join(p.name for p in written.values())}", err=True)
    failed = [c["name"] for c in report["configurations"] if c["status"] == "failed"]
    if failed:
        measured = sum(c["status"] == "ok" for c in report["configurations"])
        typer.secho(f"error: {len(failed)} of {len(report['configurations'])} configurations failed "
                    f"({', '.join(failed)}): see their reasons above.", fg="red", err=True)
        raise typer.Exit(EXIT_PARTIAL if measured else EXIT_NOTHING)
