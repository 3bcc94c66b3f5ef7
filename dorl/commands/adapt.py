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
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", "--out", help="Site profile folder to write (default: site-NAME, or the --update profile).")] = None,
    site: Annotated[str | None, typer.Option(help="Site name (default: the cells folder's name).")] = None,
    method: Annotated[str, typer.Option(
        help="mean (shift only; measured best), standardise (mean and std) or coral (full covariance).")] = "mean",
    max_cells: Annotated[int, typer.Option("--max-cells", "-n", min=1, help="New distinct cells to use at most.")] = 500,
    update: Annotated[Path | None, typer.Option(
        help="Extend this existing profile's statistics (cells it counted are skipped).")] = None,
    min_cells: Annotated[int, typer.Option(
        "--min-cells", min=1, help="Refuse with fewer usable cells (never fewer than the method needs).")] = 50,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing site profile at --output.")] = False,
) -> None:
    """Estimate the feature statistics of a new site and write its profile.

    The profile is written atomically under a lock: a failed or interrupted run leaves an
    existing profile as it was, and a second `dorl adapt` into the same folder is refused.
    """
    from rich.progress import Progress

    from dorl.runtime.adapt import adapt_site, check_method
    from dorl.runtime.site_profile import describe, save_profile
    from dorl.safe_write import check_output, output_lock

    check_method(method)
    name = site or _site_name(update, cells)
    out = output or update or Path(f"site-{name}")
    in_place = update is not None and out.resolve() == update.resolve()
    check_output(out, kind="site-profile", overwrite=overwrite or in_place, inputs=[artifact, cells])
    with output_lock(out), Progress(transient=True) as bar:
        task = bar.add_task(f"adapting to {name}", total=None)
        profile = adapt_site(artifact, cells, name, method=method, max_cells=max_cells, update=update,
                             min_cells=min_cells, progress=lambda n: bar.advance(task, n),
                             warn=lambda msg: typer.secho(f"warning: {msg}", fg=typer.colors.YELLOW, err=True))
        save_profile(profile, out, overwrite=overwrite or in_place)
    typer.echo(describe(profile))
    typer.echo(f"site profile written to {out}; use it with `dorl predict {artifact} IMAGES --site {out}`", err=True)


def _site_name(update: Path | None, cells: Path) -> str:
    """The site of the profile being updated, else the cells folder's name."""
    if update is not None:
        from dorl.artifacts import read_manifest

        site = read_manifest(update, "site-profile", verify=False).get("site")
        if isinstance(site, str):
            return site
    return cells.resolve().name
