"""`dorl evaluate`'s driver: every row of the cross-lab table from one bundle's encoder.

The table crosses three things, all on the bundle's (LoRA-merged) encoder:

- the **feature** the head reads: DoRL's CAE CLS, the CLS of a CAE trained without the
  mean-matching term, the CLS of a CAE whose alignment acts on the CLS feature itself
  (`alignment="cls_mean"`), and the pooled encoder tokens (no CAE);
- the **input framing**: the whole image, or the cell cut out with its mask (`dorl.data.framing`);
- **site adaptation** or none: each target's features moved onto the source's statistics from
  its own unlabelled cells, as `dorl adapt` + the analyzer do (`domain_maps.align_to_source`);
- **test-time augmentation** or none (opt-in, `tta`): each test cell's label from the head's
  probabilities averaged over views of its input (`dorl.contract.TTA_MODES`), as the analyzer's
  `--tta` does; each view is encoded like the plain input and cached beside it.

By default the CAE rows are DoRL's alone, on the bundle's own input, so the bundle's CAE is read
and none is trained; pooled tokens are scored on every framing. The ablations and the CAE rows
of the other input are opt-in (`cae_variants`, `cae_framings`): each costs one CAE training.

Tokens are computed once per framing and domain and cached (`dorl.training.token_cache`); each
CAE the bundle does not hold (another variant, or another framing) is trained on those tokens
with the bundle's CAE schedule and cached too, so a second evaluation only fits the heads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dorl.contract import TTA_MODES, tta_views
from dorl.data.framing import FRAMINGS, FramingConfig
from dorl.errors import ConfigError
from dorl.evaluation.compare import compare_rows
from dorl.evaluation.domain_maps import align_to_source
from dorl.evaluation.protocol import Evaluation, Method, Protocol, check_source, evaluate
from dorl.models.cae import CAE
from dorl.models.dorl_model import DoRLModel
from dorl.runtime.site_profile import DEFAULT_METHOD, METHODS
from dorl.training.config import CaeTrainConfig, TrainConfig, cpu_schedule, train_config_from_dict
from dorl.training.features import cae_features, pooled_tokens
from dorl.training.progress import NullReporter, Reporter
from dorl.training.token_cache import InputSettings, TokenSet, model_fingerprint

DORL_METHOD = "DoRL (CAE CLS)"
NO_MMD_METHOD = "CAE without mean-matching"
CLS_ALIGNED_METHOD = "CLS-aligned CAE"
POOLED_METHOD = "pooled tokens"
# How each CAE variant's schedule differs from the bundle's.
CAE_VARIANTS: dict[str, dict[str, Any]] = {
    DORL_METHOD: {"alignment": "z"},
    NO_MMD_METHOD: {"mmd_weight": 0.0},
    CLS_ALIGNED_METHOD: {"alignment": "cls_mean"},
}
FEATURES = (*CAE_VARIANTS, POOLED_METHOD)
# The CAE rows scored unless asked otherwise: each CAE the bundle does not hold is a whole CAE training
# (minutes on a CPU), so the two ablations are opt-in (`--cae-variants all`).
DEFAULT_CAE_VARIANTS = (DORL_METHOD,)
NO_ADAPTATION = "none"
NO_TTA = "none"


def variant_schedule(schedule: CaeTrainConfig, variant: str) -> CaeTrainConfig:
    """The bundle's CAE schedule changed to train `variant` (a key of CAE_VARIANTS).

    A variant that aligns keeps the bundle's mean-matching weight, or 1 where the bundle trained without it.
    """
    change = dict(CAE_VARIANTS[variant])
    if "mmd_weight" not in change:
        change["mmd_weight"] = schedule.mmd_weight or 1.0
    return dataclasses.replace(schedule, **change)


def is_variant(schedule: CaeTrainConfig, variant: str) -> bool:
    """Whether a CAE trained with `schedule` is `variant` (so the bundle's own CAE can stand for it)."""
    if variant == NO_MMD_METHOD:
        return schedule.mmd_weight == 0
    return schedule.mmd_weight > 0 and schedule.alignment == CAE_VARIANTS[variant]["alignment"]


def variant_cae(model: DoRLModel, token_sets: Sequence[TokenSet], config: CaeTrainConfig, device: torch.device,
                cache_dir: str | Path | None = None, seed: int = 1234, inputs: str = "",
                reporter: Reporter | None = None) -> CAE:
    """A fresh CAE of the model's shape trained on `token_sets` with `config`; read from `cache_dir` when
    trained there before.

    Args:
        model: the evaluated model (its CAE's shape; its encoder made the tokens).
        token_sets: every domain's cached tokens and SSIM targets, anchor first.
        config: the CAE schedule (the variant's: see `variant_schedule`).
        device: where to train.
        cache_dir: where the trained CAE is kept, keyed by the encoder's weights, the images, `inputs`,
            the schedule, the CAE's shape and the seed; None: not kept.
        seed: initialisation and sampling seed.
        inputs: what the tokens were made from (the framing), since the image keys do not say it.
        reporter: progress and notes.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from dorl.safe_write import write_bytes
    from dorl.training.cae import train_cae

    reporter = reporter or NullReporter()
    c = model.config
    key = json.dumps({"encoder": model_fingerprint(model), "tokens": [[t.domain, *t.keys] for t in token_sets],
                      "inputs": inputs, "schedule": dataclasses.asdict(config),
                      "shape": [model.feature_dim, c.grid, c.cae_depth, c.cae_decoder_depth, c.cae_heads,
                                c.cae_mask_ratio, c.projector_dim], "seed": seed}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    torch.manual_seed(seed)
    cae = CAE(model.feature_dim, c.grid, depth=c.cae_depth, decoder_depth=c.cae_decoder_depth, num_heads=c.cae_heads,
              mask_ratio=c.cae_mask_ratio, projector_dim=c.projector_dim)
    path = Path(cache_dir) / f"cae_{digest[:16]}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cae.load_state_dict(load_file(str(path)))
        except (SafetensorError, OSError, RuntimeError, ValueError):  # damaged or foreign: trained again below
            reporter.note(f"{path} could not be read: the CAE is trained again")
        else:
            reporter.note(f"CAE ({config.alignment}, mmd_weight {config.mmd_weight}): read from {path}")
            return cae.eval()
    train_cae(cae, token_sets, config, device, reporter, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in cae.state_dict().items()}),
                    overwrite=True)
    return cae.eval()


def method_name(feature: str, framing: str, adaptation: str = NO_ADAPTATION, tta: str = NO_TTA) -> str:
    """A row's name, e.g. "pooled tokens · cell + TTA flips + adapt (mean)"."""
    return (f"{feature} · {framing}" + ("" if tta == NO_TTA else f" + TTA {tta}")
            + ("" if adaptation == NO_ADAPTATION else f" + adapt ({adaptation})"))


def feature_methods(feature: str, framing: str, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    adapt_methods: Sequence[str], tta: str = NO_TTA) -> list[Method]:
    """One feature on one framing with one test-time augmentation (arrays [N,V,D] for V > 1 views):
    the plain row, then one adapted row per site-adaptation map."""
    tags = {"feature": feature, "framing": framing, "tta": tta}
    methods = [Method(method_name(feature, framing, tta=tta), arrays, tags={**tags, "adaptation": NO_ADAPTATION})]
    for m in adapt_methods:
        methods.append(Method(method_name(feature, framing, m, tta), arrays,
                              functools.partial(align_to_source, method=m), tags={**tags, "adaptation": m}))
    return methods


def token_set_arrays(token_sets: Sequence[TokenSet], features: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """domain -> (features(token set) [N,D], its labels), in the token sets' order."""
    return {t.domain: (features(t), np.asarray(t.labels)) for t in token_sets}


def view_arrays(per_view: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], views: Sequence[str]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The arrays of one test-time augmentation from every view's (view -> `token_set_arrays`): the
    plain view's [N,D] alone, or the views stacked [N,V,D] in the order given, plain first."""
    if len(views) == 1:
        return dict(per_view[views[0]])
    plain = per_view[views[0]]
    return {d: (np.stack([per_view[v][d][0] for v in views], axis=1), y) for d, (_, y) in plain.items()}


@dataclass(frozen=True)
class EvaluationOptions:
    """What `dorl evaluate` runs beside the bundle and the domains; validated on construction."""

    heads: tuple[str, ...] = ("logreg",)  # fit per split: logreg (what `dorl train` deploys by default), svm, mlp
    folds: int = 5  # stratified folds on the source domain
    seed: int = 1234  # the first seed of the splits and heads
    repeats: int = 3  # seeds: seed, seed + 1, ...
    framings: tuple[str, ...] = FRAMINGS  # whole image and cell crop
    # the inputs the CAE rows are scored on; None: the bundle's own (whose CAE needs no training)
    cae_framings: tuple[str, ...] | None = None
    cae_variants: tuple[str, ...] = DEFAULT_CAE_VARIANTS  # CAE rows (pooled tokens are always scored);
    # tuple(CAE_VARIANTS) adds the ablations without mean-matching and aligned on the CLS
    adapt_methods: tuple[str, ...] = (DEFAULT_METHOD,)  # one adapted row per feature and framing, each
    # test-time augmentations (keys of dorl.contract.TTA_MODES), rows each on every framing; None: none, and
    # the bundle's own on the bundle's input (the shipped pipeline), whose views are the only extra encoder passes
    tta: tuple[str, ...] | None = None
    device: str = "auto"  # auto, cpu or cuda for the encoder and the CAEs
    batch_size: int = 32  # images per encoder pass

    def __post_init__(self) -> None:
        unknown = [m for m in self.adapt_methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown site-adaptation method {unknown[0]!r}: choose among {', '.join(METHODS)}.")
        bad = [f for f in self.framings if f not in FRAMINGS]
        if bad or not self.framings:
            raise ConfigError(f"unknown framing {bad or '(none)'}: choose among {', '.join(FRAMINGS)}.")
        bad = [f for f in self.cae_framings or () if f not in self.framings]
        if bad:
            raise ConfigError(f"CAE rows on input {bad[0]!r}, which is not among the scored framings "
                              f"{list(self.framings)}: add it to the framings or leave it out.")
        bad = [v for v in self.cae_variants if v not in CAE_VARIANTS]
        if bad:
            raise ConfigError(f"unknown CAE variant {bad[0]!r}: choose among {', '.join(CAE_VARIANTS)}.")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {self.batch_size}.")
        bad = [t for t in self.tta or () if t not in TTA_MODES]
        if bad or self.tta == ():
            raise ConfigError(f"unknown test-time augmentation {bad or '(none)'}: choose among {', '.join(TTA_MODES)}.")

    def protocol(self, source: str) -> Protocol:
        """The protocol for `source` (which checks the heads, folds and seeds); one class setting: the
        bundle's classes, each target scored on its own labels."""
        return Protocol(source, tuple(self.heads), self.folds, self.seed, self.repeats, ("all",))


def evaluate_bundle(bundle: str | Path, domains: Sequence[str | tuple[str, str | Path]], cache_dir: str | Path,
                    options: EvaluationOptions = EvaluationOptions(), reporter: Reporter | None = None) -> Evaluation:
    """The whole evaluation of a bundle: tokens per framing, the CAE variants, every row, the comparisons.

    Args:
        bundle: a bundle folder written by `dorl train`.
        domains: "NAME=PATH" strings or (name, path) pairs; the first is the source domain. Only the
            bundle's classes are kept.
        cache_dir: tokens (one folder per framing) and trained CAE variants, reused when model and images match.
        options: heads, folds, seeds, framings, CAE variants, adaptation, test-time augmentation, device and
            batch size.
        reporter: progress and notes.

    Raises:
        DorlError: a missing or corrupt bundle, a malformed or empty domain, or bad protocol settings.
    """
    from dorl.bundle import load_bundle
    from dorl.data.domains import load_domains
    from dorl.manifests import parse_tta, read_bundle
    from dorl.training.device import resolve_device

    reporter = reporter or NullReporter()
    manifest = read_bundle(bundle)
    torch_device = resolve_device(options.device)
    model = load_bundle(manifest, str(torch_device))
    loaded = load_domains(list(domains), model.config.class_names)
    protocol = options.protocol(loaded[0].name)
    check_source([s.label for s in loaded[0].samples], protocol)  # before any token is computed
    train, recorded = _train_config(manifest.metadata)
    trusted = tuple(manifest.metadata.get("ssim_targets", {}).get("segmenter_trusted_on", []))
    methods, trained = [], {}
    cae_framings = options.cae_framings if options.cae_framings is not None else (train.framing.input,)
    bundle_tta = parse_tta(manifest.metadata)
    for framing in options.framings:
        modes = options.tta if options.tta is not None else tuple(dict.fromkeys(
            (NO_TTA, bundle_tta if framing == train.framing.input else NO_TTA)))
        views = list(dict.fromkeys(v for mode in modes for v in tta_views(mode)))
        settings = InputSettings(dataclasses.replace(train.framing, input=framing), train.cae.ssim_masks, trusted)
        view_sets = {v: _tokens(model, loaded, Path(cache_dir), dataclasses.replace(settings, view=v),
                                manifest.metadata, torch_device, options, reporter) for v in views}
        tokens = view_sets["plain"]
        features: list[tuple[str, Any]] = []
        for variant in options.cae_variants if framing in cae_framings else ():
            own = framing == train.framing.input and is_variant(train.cae, variant)
            schedule = train.cae if own else variant_schedule(train.cae, variant)
            cae = model.cae if own else variant_cae(model, tokens, schedule, torch_device, cache_dir, train.seed,
                                                    settings.key(""), reporter)
            trained[method_name(variant, framing)] = "the bundle's CAE" if own else dataclasses.asdict(schedule)
            features.append((variant, functools.partial(_cls, cae)))
        for feature, read in [*features, (POOLED_METHOD, _pooled)]:
            per_view = {v: token_set_arrays(sets, read) for v, sets in view_sets.items()}
            for mode in modes:
                methods += feature_methods(feature, framing, view_arrays(per_view, tta_views(mode)),
                                           options.adapt_methods, mode)
    result = evaluate(methods, protocol, reporter)
    for domain in loaded:  # what the scores do not cover, said rather than dropped
        if domain.ignored_classes:
            result.notes.append(f"{domain.name}: classes the bundle does not know were left out: "
                                f"{', '.join(domain.ignored_classes)}.")
        if domain.skipped:
            result.notes.append(f"{domain.name}: {len(domain.skipped)} files skipped, first {domain.skipped[0][0]}: "
                                f"{domain.skipped[0][1]}")
    if options.cae_variants and not set(cae_framings) & set(options.framings):
        result.notes.append(f"no CAE rows: they are scored on {', '.join(cae_framings)} input, which is not among the "
                            "framings; choose their input with --cae-framings.")
    for setting, rows in result.to_dict()["settings"].items():
        result.comparisons[setting] = (compare_rows(rows["rows"], "feature", POOLED_METHOD)
                                       + compare_rows(rows["rows"], "framing", "whole")
                                       + compare_rows(rows["rows"], "adaptation", NO_ADAPTATION)
                                   + compare_rows(rows["rows"], "tta", NO_TTA))
    result.info = {"bundle": str(bundle), "encoder": model.config.encoder, "classes": list(model.config.class_names),
                   "bundle_framing": dataclasses.asdict(train.framing), "domains": [d.describe() for d in loaded],
                   "cae": trained}
    source = f"the bundle's CAE schedule ({train.schedule})" if recorded else \
        "the CPU schedule (the bundle records no training config)"
    if any(how != "the bundle's CAE" for how in trained.values()):
        result.notes.append(f"CAEs the bundle does not hold are trained on the same tokens with {source}, "
                            "changed only as each variant says.")
    return result


def _cls(cae: CAE, token_set: TokenSet) -> np.ndarray:
    return cae_features(cae, token_set.tokens)


def _pooled(token_set: TokenSet) -> np.ndarray:
    return pooled_tokens(token_set.tokens)


def _tokens(model: DoRLModel, loaded: list[Any], cache_dir: Path, settings: InputSettings,
            metadata: Mapping[str, Any], device: torch.device, options: EvaluationOptions,
            reporter: Reporter) -> list[TokenSet]:
    """The domains' tokens for one framing and view: the training run's cache when it holds exactly these
    (same weights, settings and images), else `cache_dir/<framing>[.<view>]` (read or computed there; the
    training run's pseudo masks, which depend on the pixels only, are reused for it)."""
    from dorl.artifacts import sha256_file
    from dorl.training.token_cache import cached_tokens, load_token_set

    recorded = metadata.get("token_cache", {})
    folder = Path(recorded["folder"]) if recorded.get("folder") else None
    target = cache_dir / (settings.framing.input if settings.view == "plain"
                          else f"{settings.framing.input}.{settings.view}")
    if folder is not None and folder.is_dir() and settings.view == "plain":  # training caches the plain view
        fingerprint = model_fingerprint(model)
        found = []
        for domain in loaded:
            path = folder / f"{domain.name}.safetensors"
            keys = [sha256_file(s.path) for s in domain.samples]
            hit = (load_token_set(path, fingerprint, keys, settings.key(domain.name), [s.label for s in domain.samples])
                   if path.is_file() else None)
            if hit is None:
                break
            found.append(hit)
        if len(found) == len(loaded):
            reporter.note(f"tokens ({settings.framing.input}): read from the training run's cache {folder}")
            return found
    if folder is not None and folder.is_dir():
        _copy_pseudo_masks(folder, target, [d.name for d in loaded])
    return cached_tokens(model, loaded, target, device, options.batch_size, reporter, settings)


def _copy_pseudo_masks(source: Path, target: Path, domains: Sequence[str]) -> None:
    """Copy `<domain>.pseudo.npz` from `source` where `target` has none (the reader checks their image keys)."""
    import shutil

    for name in domains:
        found, wanted = source / f"{name}.pseudo.npz", target / f"{name}.pseudo.npz"
        if found.is_file() and not wanted.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, wanted)


def _train_config(metadata: Mapping[str, Any]) -> tuple[TrainConfig, bool]:
    """The bundle's training config and True; the CPU schedule and False for a bundle that records none.

    A bundle that records no framing was trained on whole images."""
    recorded = metadata.get("train_config")
    if not recorded:
        return dataclasses.replace(cpu_schedule(), framing=FramingConfig("whole")), False
    return train_config_from_dict(recorded), True  # which reads a record without framing as whole
