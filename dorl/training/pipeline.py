"""`train`: LoRA-SAM, then the CAE, then the head, each saved as a checkpoint, then the bundle.

`<out>/checkpoints/<stage>/` holds each finished stage (see `dorl.training.checkpoint`),
`<out>/tokens/` the token cache, `<out>/bundle/` the final model (`save_bundle`, LoRA merged)
with a manifest whose metadata records the classes, the domains, the pseudo-mask IoU against
expert masks, the held-out mask IoU/Dice, the loss curves, the time of each stage, the input
framing (whole image or cell crop, and the crop's mask), which masks cut the SSIM targets (and
the IoU threshold the segmenter had to clear), and the token cache's folder, weights
fingerprint and input settings (so an evaluation can reuse the tokens).

The CAE and the head see the framed input (`TrainConfig.framing`); the segmenter is always
trained and run on the whole image, since that is what it gets to find the cell in.

A stage that is asked for runs unless `resume` finds its checkpoint made with the same
settings on the same earlier stage; a stage that is not asked for is read from its
checkpoint, or left as it is (pretrained or freshly initialised) with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dorl.bundle import save_bundle
from dorl.config import ModelConfig, from_dict, to_dict
from dorl.data.domains import Domain
from dorl.errors import ArtifactError, ConfigError
from dorl.models.dorl_model import DoRLModel
from dorl.models.registry import build_model
from dorl.pretrained import build_pretrained
from dorl.training.cae import train_cae
from dorl.training.checkpoint import StageCheckpoint, load_stage, restore, save_stage
from dorl.training.config import CPU_DEVIATIONS, STAGES, TrainConfig, train_config_to_dict
from dorl.training.device import resolve_device
from dorl.training.distributed import current, main_writes
from dorl.training.heads import anchor_features, fit_head, head_summary, to_torch_head
from dorl.training.progress import NullReporter, Reporter
from dorl.training.seg import run_segmentation
from dorl.training.token_cache import InputSettings, TokenSet, cached_tokens, model_fingerprint

CAE_FIELDS = ("cae_depth", "cae_decoder_depth", "cae_heads", "cae_mask_ratio", "projector_dim")
HEAD_FIELDS = ("head", "head_hidden")


@dataclass
class TrainResult:
    """Where the bundle is, which stages ran or were reused, and the bundle's metadata."""

    bundle: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    domains: list[Domain]
    out: Path
    config: TrainConfig
    stages: tuple[str, ...]
    resume: bool
    reporter: Reporter
    checkpoint: str | None
    device: torch.device
    result: TrainResult
    metrics: dict[str, Any] = field(default_factory=dict)

    def data_key(self) -> list[list[Any]]:
        """What each stage learnt from: per domain its name, size and a digest of every file's content, label
        and expert mask, so a resumed run trains a stage again when an image, label or mask changed."""
        from dorl.artifacts import sha256_file

        key = []
        for d in self.domains:
            digest = hashlib.sha256()
            for s in d.samples:
                mask = sha256_file(s.mask_path) if s.mask_path is not None else ""
                digest.update(f"{sha256_file(s.path)} {s.label} {mask}\n".encode())
            key.append([d.name, len(d), digest.hexdigest()])
        return key

    def settings(self) -> InputSettings:
        """How the cached tokens and SSIM targets are made: the framing, and the trusted segmenter domains."""
        cae = self.config.cae
        return InputSettings(self.config.framing, cae.ssim_masks, trusted_domains(self.metrics.get("seg"),
                                                                                 cae.segmenter_min_iou))

    def tokens(self, model: DoRLModel, domains: list[Domain]) -> list[TokenSet]:
        return cached_tokens(model, domains, self.out / "tokens", self.device, self.config.cae.encode_batch_size,
                             self.reporter, self.settings())

    def existing(self, stage: str, key: dict[str, Any], parent: str | None) -> StageCheckpoint | None:
        """The checkpoint to use instead of running `stage`, if any."""
        key = json.loads(json.dumps(key))  # as read back from state.json: tuples become lists
        wanted = stage in self.stages
        if wanted and not self.resume:
            return None
        found = load_stage(self.out, stage)
        if found is None or not wanted:
            return found
        if found.state.get("key") != key or found.state.get("parent") != parent:
            self.reporter.note(f"{stage}: the checkpoint was made with other settings or data; training again")
            return None
        return found

    def finish(self, stage: str, model: DoRLModel, parts: dict[str, torch.nn.Module], key: dict[str, Any],
               parent: str | None, metrics: dict[str, Any]) -> StageCheckpoint:
        state = {"model_config": to_dict(model.config), "key": key, "parent": parent, "metrics": metrics}
        self.result.ran.append(stage)
        found = main_writes(lambda: save_stage(self.out, stage, parts, state), lambda: load_stage(self.out, stage))
        if found is None:
            raise ArtifactError(f"the {stage} checkpoint written by rank 0 is not in {self.out} on this node: "
                                "training on several nodes needs --out on a filesystem they all see.")
        return found

    def reuse(self, stage: str, found: StageCheckpoint) -> None:
        self.result.reused.append(stage)
        self.reporter.note(f"{stage}: reused the checkpoint in {found.folder}")


def train(domains: Sequence[Domain], out_dir: str | Path, config: TrainConfig | None = None,
          stages: Sequence[str] = STAGES, resume: bool = True, reporter: Reporter | None = None,
          checkpoint: str | Path | None = None, device: str = "auto") -> TrainResult:
    """Train DoRL on `domains` (the first is the anchor/source domain) and write the bundle.

    Args:
        domains: loaded domains, anchor first; their labels must be among the model's classes.
        out_dir: output folder (checkpoints/, tokens/, bundle/).
        config: the run's configuration (default: the paper's schedule).
        stages: the stages to run, any of "seg", "cae", "head".
        resume: reuse finished stages' checkpoints made with the same settings.
        reporter: progress and notes (library code never prints).
        checkpoint: pretrained encoder weights (an official SAM checkpoint, or TinyViT safetensors).
        device: "auto", "cpu" or "cuda".

    Returns:
        The bundle folder and what ran.

    Raises:
        ConfigError: unknown stages, no domains, or an anchor domain without two model classes.
    """
    config = config or TrainConfig()
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"unknown stages {unknown or '(none)'}: choose among {', '.join(STAGES)}.")
    _check_domains(list(domains), config.model)
    from dorl.safe_write import check_output

    check_output(out_dir, overwrite=True)  # a run folder (reused to resume): never a file, an artifact or in one
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(list(domains), out, config, tuple(stages), resume, reporter or NullReporter(),
               None if checkpoint is None else str(checkpoint), resolve_device(device), TrainResult(out / "bundle"))
    torch.manual_seed(config.seed)
    model, seg = _seg(run)
    cae, tokens = _cae(run, model, seg)
    _head(run, model, cae, tokens)
    run.result.metadata = _metadata(run)
    if (out / "tokens").is_dir():  # lets the evaluation reuse the tokens after checking the fingerprint
        settings = run.settings()
        run.result.metadata["token_cache"] = {"folder": str((out / "tokens").resolve()),
                                              "fingerprint": model_fingerprint(model),
                                              "settings": {d.name: json.loads(settings.key(d.name))
                                                           for d in run.domains}}
    source = _source_features(run, model, tokens)
    floor, run.result.metadata["stain_floor"] = source_stain_floor(run.domains[0], model.config.image_size)
    main_writes(lambda: save_bundle(model, run.result.bundle, run.result.metadata, source_features=source,
                                    stain_floor=floor))
    return run.result


def _source_features(run: _Run, model: DoRLModel, tokens: list[TokenSet]) -> Any:
    """The anchor domain's classification features, whose statistics site profiles map onto."""
    from dorl.training.features import cae_features

    if not tokens:  # every stage reused: the anchor's tokens come from the on-disk cache
        tokens = run.tokens(model, run.domains[:1])
    return cae_features(model.cae, tokens[0].tokens, 64)


def source_stain_floor(anchor: Domain, image_size: int) -> tuple[float | None, dict[str, Any]]:
    """The stain floor of the anchor's cells (`cell_check.stain_floor`), and what the manifest records of it.

    Recorded at training beside the source feature statistics, so every exported artifact answers
    "no cell" for images whose stained region is smaller than a source white cell's (platelets,
    debris) without a separate `dorl non-cells` step. None, with the reason, where no floor can be
    set: too few cells, an input side below the stain map's, cells that are not stained.
    """
    from dorl.runtime.cell_check import MIN_NON_CELLS, QUANTILE, STAIN_SIDE, stain_floor
    from dorl.runtime.non_cell import source_stain_areas

    record: dict[str, Any] = {"domain": anchor.name, "quantile": QUANTILE}
    if image_size < STAIN_SIDE:
        return None, {**record, "skipped": f"the input side {image_size} is below the stain map's {STAIN_SIDE}"}
    if len(anchor.samples) < MIN_NON_CELLS:
        return None, {**record, "skipped": f"{len(anchor.samples)} cells; the floor needs at least {MIN_NON_CELLS}"}
    areas, unreadable = source_stain_areas([s.path for s in anchor.samples], image_size)
    record.update(cells=int(areas.shape[0]), unreadable=unreadable)
    try:
        floor = stain_floor(areas)
    except ValueError as exc:
        return None, {**record, "skipped": str(exc)}
    return floor, {**record, "min_share": floor}


def trusted_domains(seg_metrics: dict[str, Any] | None, min_iou: float) -> tuple[str, ...]:
    """Domains whose held-out segmenter IoU (all reference kinds, weighted by count) is at least `min_iou`."""
    holdout = (seg_metrics or {}).get("holdout", {})
    totals: dict[str, list[float]] = {}
    for group, score in holdout.items():
        entry = totals.setdefault(group.split("/")[0], [0.0, 0.0])
        entry[0] += score["iou"] * score["n"]
        entry[1] += score["n"]
    return tuple(sorted(d for d, (iou, n) in totals.items() if n and iou / n >= min_iou))


def _check_domains(domains: list[Domain], model: ModelConfig) -> None:
    if not domains:
        raise ConfigError("no domains given: pass at least one --domain NAME=PATH.")
    known = set(model.class_names)
    for domain in domains:
        extra = sorted(set(domain.class_names) - known)
        if extra:
            raise ConfigError(f"domain {domain.name!r} has classes {extra} that the model does not have "
                              f"({list(model.class_names)}): load the domains with the model's class list.")
    if len(set(domains[0].class_names)) < 2:
        raise ConfigError(f"the anchor domain {domains[0].name!r} needs cells of at least two classes.")


def _timed(run: _Run, stage: str, started: float) -> None:
    run.metrics.setdefault("seconds", {})[stage] = round(time.perf_counter() - started, 1)


def _seg(run: _Run) -> tuple[DoRLModel, StageCheckpoint | None]:
    started = time.perf_counter()
    model_key = {k: v for k, v in to_dict(run.config.model).items() if k not in CAE_FIELDS + HEAD_FIELDS}
    key = {"train": dataclasses.asdict(run.config.seg), "model": model_key, "checkpoint": run.checkpoint,
           "seed": run.config.seed, "data": run.data_key()}
    found = run.existing("seg", key, None)
    if found is not None:
        saved = from_dict(ModelConfig, found.state["model_config"])  # for the pixel statistics the stage chose
        model = build_model(dataclasses.replace(run.config.model, pixel_mean=saved.pixel_mean,
                                                pixel_std=saved.pixel_std))
        restore(model, found)
        run.reuse("seg", found)
    elif "seg" in run.stages:
        model, metrics = run_segmentation(run.domains, run.config, run.checkpoint, run.device, run.reporter)
        found = run.finish("seg", model, {"encoder": model.encoder, "mask_decoder": model.mask_decoder}, key, None,
                           metrics)
    else:
        model, loaded = build_pretrained(run.config.model, run.checkpoint)
        run.reporter.note(f"seg: not run and no checkpoint; using the pretrained weights ({', '.join(loaded) or 'none'})")
    run.metrics["seg"] = found.state["metrics"] if found else None
    _timed(run, "seg", started)
    return model, found


def _cae(run: _Run, model: DoRLModel, parent: StageCheckpoint | None) -> tuple[StageCheckpoint | None, list[TokenSet]]:
    started = time.perf_counter()
    key = {"train": dataclasses.asdict(run.config.cae), "model": {f: getattr(model.config, f) for f in CAE_FIELDS},
           "framing": dataclasses.asdict(run.config.framing), "seed": run.config.seed, "data": run.data_key()}
    found = run.existing("cae", key, parent.sha256 if parent else None)
    tokens: list[TokenSet] = []
    if found is not None:
        restore(model, found)
        run.reuse("cae", found)
    elif "cae" in run.stages:
        tokens = run.tokens(model, run.domains)
        run.metrics["inputs"] = {t.domain: t.info for t in tokens}
        torch.manual_seed(run.config.seed)
        history = train_cae(model.cae, tokens, run.config.cae, run.device, run.reporter, run.config.seed)
        found = run.finish("cae", model, {"cae": model.cae}, key, parent.sha256 if parent else None,
                           {"losses": history})
    else:
        run.reporter.note("cae: not run and no checkpoint; the CAE keeps its fresh initialisation")
    run.metrics["cae"] = found.state["metrics"] if found else None
    _timed(run, "cae", started)
    return found, tokens


def _head(run: _Run, model: DoRLModel, parent: StageCheckpoint | None, tokens: list[TokenSet]) -> None:
    started = time.perf_counter()
    key = {"train": dataclasses.asdict(run.config.head), "classes": list(model.config.class_names),
           "seed": run.config.seed, "data": run.data_key()}
    found = run.existing("head", key, parent.sha256 if parent else None)
    if found is not None:
        restore(model, found)
        run.reuse("head", found)
    elif "head" in run.stages:
        anchor = tokens[0] if tokens else run.tokens(model, run.domains[:1])[0]
        features, labels = anchor_features(model, anchor)
        fitted = fit_head(features, labels, run.config.head, run.config.seed)
        model.head = to_torch_head(fitted, model.feature_dim, model.config.num_classes, model.config.head_hidden)
        found = run.finish("head", model, {"head": model.head}, key, parent.sha256 if parent else None,
                           head_summary(fitted, features, labels))
    else:
        run.reporter.note("head: not run and no checkpoint; the head keeps its fresh initialisation")
    run.metrics["head"] = found.state["metrics"] if found else None
    _timed(run, "head", started)


def _metadata(run: _Run) -> dict[str, Any]:
    config = run.config
    return {
        "class_names": list(config.model.class_names),
        "anchor_domain": run.domains[0].name,
        "domains": [{"name": d.name, "root": str(d.root), "images": len(d), "classes": d.summary(),
                     "expert_masks": d.num_masks} for d in run.domains],
        "train_config": train_config_to_dict(config),
        "schedule": config.schedule,
        "framing": dataclasses.asdict(config.framing),
        "tta": config.tta,
        "ssim_targets": {"masks": config.cae.ssim_masks, "segmenter_min_iou": config.cae.segmenter_min_iou,
                         "segmenter_trusted_on": list(run.settings().trusted)},
        "deviations_from_paper": list(CPU_DEVIATIONS) if config.schedule == "cpu" else [],
        "device": str(run.device),
        "processes": current().world_size,
        "stages_run": list(run.result.ran),
        "stages_reused": list(run.result.reused),
        **run.metrics,
    }
