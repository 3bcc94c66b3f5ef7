"""`dorl build`: a TensorRT engine from an exported ONNX artifact, on the machine that will run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def build(
    onnx: Annotated[Path, typer.Argument(help="The ONNX artifact folder written by `dorl export`.")],
    precision: Annotated[str, typer.Option("--precision", help="Engine precision: fp16 or int8.")] = "fp16",
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the engine accepts.")] = 8,
    opt_batch: Annotated[int | None, typer.Option(
        "--opt-batch", help="Batch TensorRT tunes for (default: --max-batch).")] = None,
    workspace: Annotated[int, typer.Option(
        "--workspace", help="Builder workspace limit in MB (keep it low on a Jetson).")] = 1024,
    opt_level: Annotated[int, typer.Option(
        "--opt-level", help="Builder optimization level 0-5: higher builds slower and may run faster.")] = 3,
    timing_cache: Annotated[Path | None, typer.Option(
        "--timing-cache", help="Timing cache file, read and updated: rebuilds get faster.")] = None,
    calibration_cache: Annotated[Path | None, typer.Option(
        "--calibration-cache", help="Legacy INT8 calibration cache (TensorRT 10, FP32 graph only).")] = None,
    verify: Annotated[int, typer.Option(
        "--verify", help="Real cells run through the engine and its ONNX graph before it is kept (0: skip).")] = 64,
    verify_images: Annotated[list[Path] | None, typer.Option(
        "--verify-images", help="Images or folders to verify on (default: the bundled sample cells).")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", "--out", help="Engine artifact folder (default: beside the ONNX artifact).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print TensorRT's verbose build log.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing engine artifact at the output.")
                         ] = False,
) -> None:
    from dorl.tensorrt.builder import BuildSettings, build_engine
    from dorl.tensorrt.plan import default_engine_dir

    settings = BuildSettings(precision=precision, max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace,
                             opt_level=opt_level, timing_cache=timing_cache, calibration_cache=calibration_cache,
                             verify_cells=verify, verify_images=tuple(verify_images or ()), verbose=verbose)
    folder = build_engine(onnx, output if output is not None else default_engine_dir(onnx, precision), settings,
                          overwrite=overwrite)
    typer.echo(f"wrote {folder}")
