"""`dorl train`: LoRA-SAM, the cross-domain autoencoder and the head, then a bundle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from dorl.commands.common import console, user_errors

ENCODER_HELP = "image encoder: tinyvit_5m (shared pretrained weights), sam_vit_b/l/h (give --checkpoint), sam_vit_test"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


SHOWN_SKIPPED = 10  # skipped files named on the terminal per domain (the rest are counted)


def _load(domain_options: list[str], classes: str | None):  # type: ignore[no-untyped-def]
    """The domains (anchor first), cut to the class list: the given one, else the classes every domain has."""
    from dorl.data.classes import resolve_class_list
    from dorl.data.domains import load_domains

    domains = load_domains(domain_options)
    class_list = resolve_class_list(domains, _split(classes) if classes else None, mode="shared")
    kept = []
    for d in domains:
        ignored = tuple(sorted(set(d.ignored_classes) | (set(d.class_names) - set(class_list))))
        kept.append(dataclasses.replace(d, samples=tuple(s for s in d.samples if s.label in class_list),
                                        ignored_classes=ignored))
    return kept, class_list


@user_errors
def train(
    domain: Annotated[list[str], typer.Option("--domain", "-d", help="NAME=PATH of a domain's class folders; "
                                              "repeat it; the first is the anchor (source) domain")],
    out: Annotated[Path, typer.Option("-o", "--output", "--out", help="output folder: checkpoints/, tokens/, bundle/")],
    stages: Annotated[str, typer.Option(help="stages to run, comma-separated: seg,cae,head")] = "seg,cae,head",
    encoder: Annotated[str, typer.Option(help=ENCODER_HELP)] = "tinyvit_5m",
    checkpoint: Annotated[Path | None, typer.Option(help="pretrained encoder weights (SAM .pth or "
                                                            "TinyViT safetensors)")] = None,
    epochs_seg: Annotated[int | None, typer.Option(help="override the schedule's seg epochs")] = None,
    epochs_cae: Annotated[int | None, typer.Option(help="override the schedule's CAE epochs")] = None,
    cpu_schedule: Annotated[bool | None, typer.Option(
        "--cpu-schedule/--paper-schedule",
        help="the short schedule sized for 2 CPU cores, or the paper's; default: CPU schedule on a CPU")] = None,
    head: Annotated[str, typer.Option(help="classifier: logreg (linear, the default: the best measured), svm "
                                           "(linear) or mlp")] = "logreg",
    framing: Annotated[str | None, typer.Option(help="encoder input: 'cell' (the cell cut out with its mask, "
                                                     "grey around it) or 'whole' (the image as it is); "
                                                     "default: the schedule's")] = None,
    crop_mask: Annotated[str | None, typer.Option(help="the cell crop's mask: 'pseudo' (stain-based) or "
                                                       "'segmenter' (the model's mask decoder)")] = None,
    alignment: Annotated[str | None, typer.Option(help="what the CAE aligns across domains: 'z' (DoRL), "
                                                       "'cls_mean' or 'cls_coral' (the CLS feature the head "
                                                       "reads)")] = None,
    mmd_weight: Annotated[float | None, typer.Option(
        help="the CAE's mean-matching weight (default: the schedule's, 1); 0 trains it without")] = None,
    classes: Annotated[str | None, typer.Option(help="comma-separated classes; default: those every "
                                                        "domain has")] = None,
    tta: Annotated[str | None, typer.Option(help="the test-time augmentation the bundle records for the deployed "
                                                 "analyzer: 'flips' (average over the cell and its three flips) "
                                                 "or 'none'; default: the schedule's (flips)")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="reuse finished stages' checkpoints")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="under torchrun: auto (nccl on GPUs, gloo on CPUs), nccl or gloo")] = "auto",
) -> None:
    """Train DoRL on domains of cell images and write a bundle."""
    from contextlib import nullcontext

    from dorl.config import ModelConfig
    from dorl.data.framing import FramingConfig
    from dorl.training import config as training
    from dorl.training.device import resolve_device
    from dorl.training.distributed import start, stop
    from dorl.training.pipeline import train as run_training
    from dorl.training.progress import NullReporter, RichReporter

    processes = start(device, backend)  # joins torchrun's other processes, if any; rank 0 alone prints
    domains, class_list = _load(domain, classes)
    on_cpu = resolve_device(device).type == "cpu"
    model = ModelConfig(encoder=encoder, class_names=class_list)
    use_cpu = on_cpu if cpu_schedule is None else cpu_schedule
    config = training.cpu_schedule(model) if use_cpu else training.paper_schedule(model)
    if epochs_seg is not None:
        config = dataclasses.replace(config, seg=dataclasses.replace(config.seg, epochs=epochs_seg))
    if epochs_cae is not None:
        config = dataclasses.replace(config, cae=dataclasses.replace(config.cae, epochs=epochs_cae))
    if alignment is not None:
        config = dataclasses.replace(config, cae=dataclasses.replace(config.cae, alignment=alignment))
    if mmd_weight is not None:
        config = dataclasses.replace(config, cae=dataclasses.replace(config.cae, mmd_weight=mmd_weight))
    if tta is not None:
        config = dataclasses.replace(config, tta=tta)
    if framing is not None or crop_mask is not None:
        framed = FramingConfig(framing or config.framing.input, crop_mask or config.framing.mask, config.framing.margin)
        config = dataclasses.replace(config, framing=framed)
    config = config.with_head(head)
    show = console()
    show.quiet = not processes.is_main
    for d in domains:
        show.print(d.describe(), highlight=False)
        if d.ignored_classes:
            show.print(f"  left out (classes not trained): {', '.join(d.ignored_classes)}", highlight=False)
        for path, reason in d.skipped[:SHOWN_SKIPPED]:
            show.print(f"  skipped {path}: {reason}", highlight=False, markup=False)
        if len(d.skipped) > SHOWN_SKIPPED:
            show.print(f"  ... and {len(d.skipped) - SHOWN_SKIPPED} more skipped files", highlight=False)
    show.print(f"classes: {', '.join(class_list)}; schedule: {config.schedule}; device: {device}; "
               f"input: {config.framing.input}" + (f" (crop mask: {config.framing.mask})" if config.framing.cell else "")
               + f"; test-time augmentation: {config.tta}")
    with RichReporter() if processes.is_main else nullcontext(NullReporter()) as reporter:
        result = run_training(domains, out, config, stages=tuple(_split(stages)), resume=resume, reporter=reporter,
                              checkpoint=checkpoint, device=device)
    stop()
    if not processes.is_main:
        return
    seconds = result.metadata.get("seconds", {})
    show.print(f"stages run: {', '.join(result.ran) or 'none'}; reused: {', '.join(result.reused) or 'none'}; "
               f"seconds: {seconds}")
    typer.echo(str(result.bundle))
