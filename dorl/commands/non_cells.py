"""`dorl non-cells`: teach an artifact what is not a white cell (a derived artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def non_cells(
    artifact: Annotated[Path, typer.Argument(help="Exported artifact folder (ONNX or engine) with a host-side head.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="The derived artifact folder to write.")],
    cells: Annotated[list[Path] | None, typer.Option(
        "--cells", help="White cells of the artifact's source lab (e.g. its training folder; repeat the option): "
                        "they set the stain floor, below which an image holds no white cell's nucleus.")] = None,
    images: Annotated[list[Path] | None, typer.Option(
        "--non-cells", help="Images that hold no white cell, of the source lab (e.g. its platelet images; repeat the "
                            "option): the linear discriminant between them and the source cells is recorded.")] = None,
    quantile: Annotated[float, typer.Option(
        min=0.5, max=0.9999, help="Share of source cells each check lets through.")] = 0.995,  # cell_check.QUANTILE
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing artifact at --output.")] = False,
) -> None:
    """Record the "no cell" checks set from images in a derived artifact (10 or more images of each kind given).

    The derived artifact is the same graph, head and source statistics with the checks added to
    its head file: `dorl predict` with it answers "no cell" for images below the stain floor of
    the source lab's white cells, or on the side of the images without a white cell.
    """
    from dorl.data.scan import find_images, require_existing
    from dorl.errors import ConfigError
    from dorl.runtime.non_cell import fit_non_cells

    found = {}
    for option, given in (("--cells", cells), ("--non-cells", images)):
        require_existing(given or [], f"{option} image files or folders")
        files = find_images(given) if given else []
        if given and not files:
            raise ConfigError(f"no images found in {', '.join(map(str, given))}: give {option} image files or folders.")
        found[option] = files
    manifest = fit_non_cells(artifact, output, cells=found["--cells"], non_cells=found["--non-cells"],
                             overwrite=overwrite, quantile=quantile, inputs=[*(cells or []), *(images or [])])
    fitted = manifest["non_cell"]
    lines = [f"wrote {output}"]
    if "stain_floor" in fitted:
        floor = fitted["stain_floor"]
        lines.append(f"stain floor {floor['min_share']:.2%} of the image, from {floor['cells']} source cells "
                     f"({floor['unreadable']} unreadable)")
    if "discriminant" in fitted:
        disc = fitted["discriminant"]
        lines.append(f"non-cell discriminant fitted on {disc['images']} images ({disc['skipped']} unusable), "
                     f"threshold {disc['threshold']:.2f}")
    typer.echo("; ".join(lines))
