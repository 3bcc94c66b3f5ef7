"""`dorl adapt`: write a site profile from a new lab's unlabelled cells."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import user_errors


@user_errors
def adapt(
    artifact: Annotated[Path, typer.Argument(help="Exported artifact folder (ONNX or engine).")],
    cells: Annotated[Path, typer.Option("--cells", help="Folder of the new site's unlabelled cell images.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", "--out", help="Site profile folder to write.")] = None,
    site: Annotated[str | None, typer.Option(help="Site name (default: the cells folder's name).")] = None,
    method: Annotated[str, typer.Option(
        help="mean (shift only; measured best), standardise (mean and std) or coral (full covariance).")] = "mean",
    max_cells: Annotated[int, typer.Option("--max-cells", "-n", help="Cells to use at most.")] = 500,
    update: Annotated[Path | None, typer.Option(help="Extend this existing profile's statistics.")] = None,
    min_cells: Annotated[int, typer.Option("--min-cells", help="Refuse with fewer usable cells.")] = 50,
) -> None:
    """Estimate the feature statistics of a new site and write its profile."""
    from rich.progress import Progress

    from dorl.runtime.adapt import adapt_site
    from dorl.runtime.site_profile import describe, save_profile

    name = site or cells.name
    out = output or Path(f"site-{name}")
    with Progress(transient=True) as bar:
        task = bar.add_task(f"adapting to {name}", total=None)
        profile = adapt_site(artifact, cells, name, method=method, max_cells=max_cells, update=update,
                             min_cells=min_cells, progress=lambda n: bar.advance(task, n),
                             warn=lambda msg: typer.secho(f"warning: {msg}", fg=typer.colors.YELLOW, err=True))
    save_profile(profile, out)
    typer.echo(describe(profile))
    typer.echo(f"site profile written to {out}; use it with `dorl predict {artifact} IMAGES --site {out}`")
