"""`dorl evaluate`: the paper's cross-domain protocol on a trained bundle, with the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import fail, user_errors

HEADS_HELP = "Comma-separated heads to fit per split: logreg (linear, what `dorl train` deploys by default), svm, mlp."
# The CAE rows of the table (dorl.evaluation.run.CAE_VARIANTS and DEFAULT_CAE_VARIANTS; written here to keep
# the CLI import light).
CAE_VARIANT_NAMES = ("DoRL (CAE CLS)", "CAE without mean-matching", "CLS-aligned CAE")
DEFAULT_CAE_VARIANT = CAE_VARIANT_NAMES[0]


@user_errors
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `dorl train`.")],
    domain: Annotated[list[str], typer.Option(
        "--domain", "-d", help="NAME=PATH of a domain (class folders of images); repeat it. The first is the source.")],
    output: Annotated[Path, typer.Option("-o", "--output", "--out",
                                         help="Folder for results.json, results.md and the PNGs.")],
    heads: Annotated[str, typer.Option(help=HEADS_HELP)] = "logreg",
    folds: Annotated[int, typer.Option(min=2, help="Stratified folds on the source domain.")] = 5,
    seed: Annotated[int, typer.Option(help="First seed of the fold splits and the heads.")] = 1234,
    repeats: Annotated[int, typer.Option(min=1, help="Seeds (seed, seed+1, ...): each splits the source anew.")] = 3,
    framings: Annotated[str, typer.Option(help="Comma-separated encoder inputs to score: whole, cell.")] = "whole,cell",
    cae_variants: Annotated[str, typer.Option(
        "--cae-variants", help=f"Comma-separated CAE rows (empty: none; 'all': every one): "
                               f"{', '.join(CAE_VARIANT_NAMES)}. Each CAE the bundle does not hold is trained "
                               "on the cached tokens with the bundle's schedule (minutes on a CPU).")] =
        DEFAULT_CAE_VARIANT,
    cae_framings: Annotated[str, typer.Option(
        "--cae-framings", help="Comma-separated inputs the CAE rows are scored on (among --framings), or "
                               "'bundle': the input the bundle was trained on, whose CAE needs no training.")] =
        "bundle",
    cache: Annotated[Path | None, typer.Option(
        help="Token and CAE cache folder (reused when bundle and images match; default OUTPUT/cache).")] = None,
    confusion: Annotated[bool, typer.Option("--confusion/--no-confusion",
                                            help="Also write one confusion PNG per row.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder pass.")] = 32,
    adapt_methods: Annotated[str, typer.Option(
        "--adapt-methods", help="Comma-separated site-adaptation maps, one row each (empty: none): "
                                "mean, standardise, coral.")] = "mean",
    tta: Annotated[str, typer.Option(
        help="Comma-separated test-time augmentations, rows each: none, flips (the head's probabilities "
             "averaged over the input and its three flips, as `dorl predict --tta flips`; each flip's tokens "
             "are computed once and cached), or 'bundle': none and the one the bundle records.")] = "bundle",
) -> None:
    """Cross-validate heads on the source domain and test them on every other domain, for every
    feature (CAE variants, pooled tokens), input framing, adaptation and test-time augmentation."""
    from dorl.evaluation.report import distinct_settings, headline, write_report
    from dorl.evaluation.run import EvaluationOptions, evaluate_bundle
    from dorl.safe_write import check_output
    from dorl.training.progress import RichReporter

    if not bundle.exists():
        fail(f"bundle {bundle} does not exist: give the bundle folder `dorl train` wrote (OUT/bundle).")
    for folder in (output, cache or output / "cache"):  # report files and caches: never a file or an artifact
        check_output(folder, overwrite=True)
    options = EvaluationOptions(heads=_listed(heads), folds=folds, seed=seed, repeats=repeats,
                                framings=_listed(framings), cae_variants=_variants(cae_variants),
                                cae_framings=None if cae_framings.strip() == "bundle" else _listed(cae_framings),
                                adapt_methods=_listed(adapt_methods),
                                tta=None if tta.strip() == "bundle" else _listed(tta), device=device,
                                batch_size=batch_size)
    with RichReporter() as reporter:
        result = evaluate_bundle(bundle, domain, cache or output / "cache", options, reporter)
        data = result.to_dict()
        paths = write_report(data, output, confusion=confusion)
    for setting in distinct_settings(data):
        typer.echo(f"\n{setting} classes, mean ± 95 % interval, %:\n{headline(data, setting)}")
    for note in data["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"\nwrote {paths['json']}, {paths['markdown']}, {len(paths['summary'])} summary and "
               f"{len(paths['confusion'])} confusion PNGs", err=True)


def _listed(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _variants(text: str) -> tuple[str, ...]:
    """CAE variant names, matched without regard to case (their names hold no commas); 'all': every one."""
    if text.strip().lower() == "all":
        return CAE_VARIANT_NAMES
    by_lower = {name.lower(): name for name in CAE_VARIANT_NAMES}
    return tuple(by_lower.get(part.lower(), part) for part in _listed(text))
