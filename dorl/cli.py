"""The `dorl` command line: a thin typer app joining one module per command."""

from __future__ import annotations

import signal

import typer

from dorl.commands import (
    adapt,
    bench,
    build,
    calibrate,
    demo,
    evaluate,
    export,
    fields,
    info,
    non_cells,
    predict,
    report,
    serve,
    train,
    triton,
)
from dorl.runtime.records import EXIT_INTERRUPTED

app = typer.Typer(
    name="dorl",
    help="DoRL blood-cell classification: train, evaluate, export, calibrate, build, predict, adapt, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("info", help="Print versions and the backends and accelerators usable here.")(info.info)
app.command("train", help="Train LoRA-SAM, the CAE and the heads on domains of cell images.")(train.train)
app.command("evaluate", help="Cross-domain evaluation with the paper's protocol.")(evaluate.evaluate)
app.command("export", help="Export a bundle to a verified ONNX graph (fp32, fp16, int8).")(export.export)
app.command("calibrate", help="Draw and save an INT8 calibration set.")(calibrate.calibrate)
app.command("build", help="Build a TensorRT engine from an exported ONNX graph.")(build.build)
app.command("predict", help="Classify and segment cell images with an exported artifact.",
            epilog=predict.EXIT_CODES_HELP)(predict.predict)
app.command("adapt", help="Write a site profile from a new lab's unlabelled cells.")(adapt.adapt)
app.command("non-cells", help="Teach an artifact what is not a white cell: a derived artifact refusing such images.")(
    non_cells.non_cells)
app.command("bench", help="Benchmark latency, throughput, memory and accuracy per backend.")(bench.bench)
app.command("fields", help="Find and classify every white cell of whole camera frames (JSON Lines).")(fields.fields)
app.command("report", help="A slide's white-cell differential and review gallery from frames or field records.")(
    report.report)
app.command("serve", help="Serve an artifact over HTTP (KServe v2 protocol, as Triton speaks).")(serve.serve)
app.command("triton", help="Write a Triton Inference Server model repository from an artifact.")(triton.triton)
app.command("demo", help="Run the whole path on the bundled sample and write a report.")(demo.demo)


def main() -> None:
    # SIGTERM ends a command as Ctrl-C would, by an exception: locks are released and temporary output
    # folders removed on the way out (commands that stream results install their own handler).
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_INTERRUPTED + signum)


if __name__ == "__main__":
    main()
