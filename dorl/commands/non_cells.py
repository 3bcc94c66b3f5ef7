"""`dorl non-cells`: teach an artifact what is not a white cell (a derived artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def non_cells(
    artifact: Annotated[Path, typer.Argument(help="Exported artifact folder (ONNX or engine) with a host-side head.")],
    images: Annotated[list[Path], typer.Argument(
        help="Images or folders of images that hold no white cell, from the artifact's source lab (e.g. its "
             "platelet images); 10 or more.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="The derived artifact folder to write.")],
    quantile: Annotated[float, typer.Option(
        min=0.5, max=0.9999, help="Share of source cells the discriminant lets through (normal model).")] = 0.99,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing artifact at --output.")] = False,
) -> None:
    """Fit the "no cell" discriminant on images without a white cell and write a derived artifact.

    The derived artifact is the same graph, head and source statistics with the discriminant
    added to its head file: `dorl predict` with it answers "no cell" for images like these.
    """
    from dorl.data.scan import find_images
    from dorl.errors import ConfigError
    from dorl.runtime.non_cell import fit_non_cells

    files = find_images(images)
    if not files:
        raise ConfigError(f"no images found in {', '.join(map(str, images))}: give image files or folders of images "
                          "that hold no white cell.")
    manifest = fit_non_cells(artifact, files, output, overwrite=overwrite, quantile=quantile, inputs=images)
    fitted = manifest["non_cell"]
    typer.echo(f"wrote {output}: the non-cell discriminant fitted on {fitted['images']} images "
               f"({fitted['skipped']} unusable), threshold {fitted['threshold']:.2f} (z-score of source cells, "
               f"{quantile:.1%} let through)")
