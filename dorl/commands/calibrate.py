"""`dorl calibrate`: draw an INT8 calibration set across domains and classes and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import fail, user_errors

DOMAIN_HELP = "A domain as NAME=PATH (a folder of class sub-folders); repeat once per lab."


def parse_domains(options: list[str]) -> dict[str, Path]:
    """NAME=PATH options -> {name: path}; a name given twice is an error."""
    from dorl.data.domains import parse_domain_option

    domains: dict[str, Path] = {}
    for option in options:
        name, path = parse_domain_option(option)
        if name in domains:
            fail(f"--domain {name!r} is given twice: give each domain one folder.")
        domains[name] = path
    return domains


@user_errors
def calibrate(
    domain: Annotated[list[str], typer.Option("-d", "--domain", help=DOMAIN_HELP)],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="The calibration-set folder to write.")],
    size: Annotated[int, typer.Option(min=1, help="How many cells to draw (stratified by domain and class).")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and folders give the same set.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing calibration set at --output.")
                         ] = False,
) -> None:
    """Draw a reproducible INT8 calibration set and write it as a manifest of paths and sha256."""
    from dorl.calibration.calibration_set import write_calibration_set

    manifest = write_calibration_set(parse_domains(domain), output, size=size, seed=seed, overwrite=overwrite)
    for name, classes in manifest["counts"].items():
        typer.echo(f"{name}: " + ", ".join(f"{label} {n}" for label, n in classes.items()), err=True)
    typer.echo(f"wrote a calibration set of {manifest['size']} cells (seed {seed}) to {output}")
    if manifest["size"] < size:
        typer.secho(f"warning: the domains hold only {manifest['size']} cells, fewer than the {size} asked for: INT8 "
                    "ranges from so few cells may not cover the next lab's; add cells if you can.", fg="yellow",
                    err=True)
