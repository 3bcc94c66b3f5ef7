"""`dorl triton`: write a Triton Inference Server model repository from an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def triton(
    artifact: Annotated[Path, typer.Argument(help="An exported ONNX artifact folder or a TensorRT engine folder.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="The model repository folder (created).")],
    name: Annotated[str, typer.Option(help="Model name: its folder in the repository, /v2/models/NAME.")] = "dorl",
    max_batch: Annotated[
        int | None, typer.Option(min=1, help="max_batch_size (default: the engine's max, or 8 for ONNX).")
    ] = None,
    max_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batcher's max queue delay (µs).")] = 5000,
    queue_size: Annotated[int, typer.Option(min=1, help="Requests Triton queues before refusing more.")] = 64,
    instances: Annotated[int, typer.Option(min=1, help="Model instances Triton runs in parallel.")] = 1,
    device: Annotated[str, typer.Option(help="Instance kind: auto, gpu or cpu (engines: GPU only).")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT/NAME.")] = False,
) -> None:
    """Write OUTPUT/NAME/{config.pbtxt, labels.txt, 1/model.onnx|model.plan} for `tritonserver`."""
    from dorl.serve.triton import write_repository

    folder = write_repository(artifact, output, name, overwrite=overwrite, max_batch=max_batch,
                              max_delay_us=max_delay_us, queue_size=queue_size, instances=instances, device=device)
    typer.echo(f"wrote {folder}")
    typer.echo(f"  start: tritonserver --model-repository={folder.parent.resolve()}  (in nvcr.io/nvidia/tritonserver)")
