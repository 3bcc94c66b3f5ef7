"""`dorl evaluate`: the paper's cross-domain protocol on a trained bundle, with the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import fail, user_errors

HEADS_HELP = "Comma-separated heads to fit per fold: svm (linear), logreg, mlp."


@user_errors
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `dorl train`.")],
    domain: Annotated[list[str], typer.Option(
        "--domain", "-d", help="NAME=PATH of a domain (class folders of images); repeat it. The first is the source.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out", help="Folder for results.json, results.md, confusion PNGs.")],
    heads: Annotated[str, typer.Option(help=HEADS_HELP)] = "svm,logreg,mlp",
    folds: Annotated[int, typer.Option(min=2, help="Stratified folds on the source domain.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and of the heads.")] = 1234,
    cache: Annotated[Path | None, typer.Option(
        help="Token cache folder (reused when bundle and images match; default OUTPUT/tokens).")] = None,
    cae_baseline: Annotated[bool, typer.Option(
        "--cae-baseline/--no-cae-baseline", help="Train the CAE without mean-matching (the bundle's CAE schedule).")] = True,
    pooled_baselines: Annotated[bool, typer.Option(
        "--pooled-baselines/--no-pooled-baselines", help="Score pooled encoder tokens, plain and per-domain standardised.")] = True,
    confusion: Annotated[bool, typer.Option("--confusion/--no-confusion", help="Write confusion-matrix PNGs.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder pass.")] = 32,
    adapt_methods: Annotated[str, typer.Option(
        "--adapt-methods", help="Comma-separated site-adaptation maps, one row each: mean, standardise, coral.")] = "mean",
) -> None:
    """Cross-validate heads on the source domain and test them on every other domain."""
    from dorl.evaluation.report import distinct_settings, table, write_report
    from dorl.evaluation.run import EvaluationOptions, evaluate_bundle
    from dorl.training.progress import RichReporter

    if not bundle.exists():
        fail(f"bundle {bundle} does not exist: give the bundle folder `dorl train` wrote (OUT/bundle).")
    options = EvaluationOptions(heads=_listed(heads), folds=folds, seed=seed, cae_baseline=cae_baseline,
                                pooled_baselines=pooled_baselines, adapt_methods=_listed(adapt_methods), device=device,
                                batch_size=batch_size)
    with RichReporter() as reporter:
        result = evaluate_bundle(bundle, domain, cache or output / "tokens", options, reporter)
        data = result.to_dict()
        paths = write_report(data, output, confusion=confusion)
    for setting in distinct_settings(data):
        typer.echo(f"\n{setting} classes, accuracy %:\n{table(data, setting)}")
    for note in data["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"\nwrote {paths['json']}, {paths['markdown']} and {len(paths['confusion'])} confusion PNGs", err=True)


def _listed(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
