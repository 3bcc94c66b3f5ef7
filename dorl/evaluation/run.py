"""`dorl evaluate`'s driver: a bundle's tokens once, the baseline CAE, every row of the table.

Every row (DoRL's CAE CLS, DoRL with site adaptation, the CAE trained without the
mean-matching term, the pooled encoder tokens plain and per-domain standardised) is scored on
the very same token maps, computed once per domain and cached (`dorl.training.token_cache`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dorl.errors import ConfigError
from dorl.evaluation.domain_maps import align_to_source, standardise_per_domain
from dorl.evaluation.protocol import HEADS, Evaluation, Method, Protocol, evaluate
from dorl.models.cae import CAE
from dorl.models.dorl_model import DoRLModel
from dorl.runtime.site_profile import DEFAULT_METHOD, METHODS
from dorl.training.config import CaeTrainConfig, TrainConfig, cpu_schedule, train_config_from_dict
from dorl.training.features import cae_features, pooled_tokens
from dorl.training.progress import NullReporter, Reporter
from dorl.training.token_cache import TokenSet, model_fingerprint

DORL_METHOD = "DoRL (CAE CLS)"
NO_MMD_METHOD = "CAE without mean-matching"
POOLED_METHOD = "pooled encoder tokens"
STANDARDISED_METHOD = "pooled tokens, each domain standardised"
# What `dorl adapt` + the analyzer do: each target site's features mapped onto the source's
# statistics (estimated from its own unlabelled cells) before the source-fitted head.
ADAPTED_METHOD = "DoRL + site adaptation"


def token_set_arrays(token_sets: Sequence[TokenSet],
                     features: Callable[[TokenSet], np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """domain -> (features of its cells, their labels), in the token sets' order."""
    return {t.domain: (features(t), np.asarray(t.labels)) for t in token_sets}


def baseline_cae(model: DoRLModel, token_sets: Sequence[TokenSet], config: CaeTrainConfig, device: torch.device,
                 cache_dir: str | Path | None = None, seed: int = 1234, reporter: Reporter | None = None) -> CAE:
    """The "CAE without mean-matching" baseline: a fresh CAE of the model's shape, trained on the same
    tokens with the same schedule but `mmd_weight` 0; read from `cache_dir` when trained there before.

    Args:
        model: the evaluated model (its CAE's shape; its encoder made the tokens).
        token_sets: every domain's cached tokens and SSIM targets, anchor first.
        config: the bundle's CAE schedule (its `mmd_weight` is replaced by 0).
        device: where to train.
        cache_dir: where the trained baseline is kept (keyed by the encoder's weights, the images, the
            schedule, the CAE's shape and the seed); None: not kept.
        seed: initialisation and sampling seed.
        reporter: progress and notes.
    """
    from safetensors.torch import load_file, save_file

    from dorl.training.cae import train_cae

    reporter = reporter or NullReporter()
    config = dataclasses.replace(config, mmd_weight=0.0)
    c = model.config
    key = json.dumps({"encoder": model_fingerprint(model), "tokens": [[t.domain, *t.keys] for t in token_sets],
                      "schedule": dataclasses.asdict(config),
                      "shape": [model.feature_dim, c.grid, c.cae_depth, c.cae_decoder_depth, c.cae_heads,
                                c.cae_mask_ratio, c.projector_dim], "seed": seed}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()
    torch.manual_seed(seed)
    cae = CAE(model.feature_dim, c.grid, depth=c.cae_depth, decoder_depth=c.cae_decoder_depth, num_heads=c.cae_heads,
              mask_ratio=c.cae_mask_ratio, projector_dim=c.projector_dim)
    path = Path(cache_dir) / f"cae_without_mmd_{digest[:16]}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        cae.load_state_dict(load_file(str(path)))
        reporter.note(f"CAE without mean-matching: read from {path}")
        return cae.eval()
    train_cae(cae, token_sets, config, device, reporter, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in cae.state_dict().items()}, str(path))
    return cae.eval()


def adapted_name(method: str) -> str:
    """The row of DoRL features adapted to each target site with `method` (see dorl.runtime.site_profile)."""
    return f"{ADAPTED_METHOD} ({method})"


def bundle_methods(model: DoRLModel, token_sets: Sequence[TokenSet], baseline: CAE | None = None,
                   pooled_baselines: bool = True, adapt_methods: Sequence[str] = (DEFAULT_METHOD,)) -> list[Method]:
    """The table's rows for one model: DoRL's CAE CLS, then the baselines on the same encoder.

    Args:
        model: the evaluated model.
        token_sets: every domain's cached tokens, source first.
        baseline: the CAE trained without mean-matching (None: no such row).
        pooled_baselines: add the pooled-token rows (plain, and each domain standardised by its own statistics).
        adapt_methods: one "DoRL + site adaptation (METHOD)" row per site-adaptation map.

    Returns:
        The methods for `dorl.evaluation.protocol.evaluate`; the adapted and standardised rows
        compute each domain's statistics from the cells of the class setting being scored (the
        adapted row maps each target onto the source as `dorl adapt` + the runtime do).
    """
    dorl = token_set_arrays(token_sets, lambda t: cae_features(model.cae, t.tokens))
    methods = [Method(DORL_METHOD, dorl)]
    methods += [Method(adapted_name(m), dorl, functools.partial(align_to_source, method=m)) for m in adapt_methods]
    if baseline is not None:
        methods.append(Method(NO_MMD_METHOD, token_set_arrays(token_sets, lambda t: cae_features(baseline, t.tokens))))
    if pooled_baselines:
        pooled = token_set_arrays(token_sets, lambda t: pooled_tokens(t.tokens))
        methods += [Method(POOLED_METHOD, pooled), Method(STANDARDISED_METHOD, pooled, standardise_per_domain)]
    return methods


@dataclass(frozen=True)
class EvaluationOptions:
    """What `dorl evaluate` runs beside the bundle and the domains; validated on construction."""

    heads: tuple[str, ...] = HEADS  # fit per fold: svm, logreg, mlp
    folds: int = 5  # stratified folds on the source domain
    seed: int = 1234  # the folds' split and the heads' seed
    cae_baseline: bool = True  # train (or reuse) the CAE without mean-matching, with the bundle's CAE schedule
    pooled_baselines: bool = True  # the pooled-token rows, plain and per-domain standardised
    adapt_methods: tuple[str, ...] = (DEFAULT_METHOD,)  # one "DoRL + site adaptation (METHOD)" row each
    device: str = "auto"  # auto, cpu or cuda for the encoder and the baseline CAE
    batch_size: int = 32  # images per encoder pass

    def __post_init__(self) -> None:
        unknown = [m for m in self.adapt_methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown site-adaptation method {unknown[0]!r}: choose among {', '.join(METHODS)}.")
        if self.batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {self.batch_size}.")

    def protocol(self, source: str) -> Protocol:
        """The protocol for `source` (which checks the heads and folds)."""
        return Protocol(source, tuple(self.heads), self.folds, self.seed)


def evaluate_bundle(bundle: str | Path, domains: Sequence[str | tuple[str, str | Path]], cache_dir: str | Path,
                    options: EvaluationOptions = EvaluationOptions(), reporter: Reporter | None = None) -> Evaluation:
    """The whole evaluation of a bundle: tokens once, the baseline CAE, every row, both settings.

    Args:
        bundle: a bundle folder written by `dorl train`.
        domains: "NAME=PATH" strings or (name, path) pairs; the first is the source domain.
        cache_dir: token cache and trained baseline CAE (reused when the model and images match).
        options: heads, folds, seed, the baseline rows, device and batch size.
        reporter: progress and notes.

    Raises:
        DorlError: a missing or corrupt bundle, a malformed or empty domain, or bad protocol settings.
    """
    from dorl.bundle import load_bundle
    from dorl.data.domains import load_domains
    from dorl.manifests import read_bundle
    from dorl.training.device import resolve_device
    from dorl.training.token_cache import cached_tokens

    reporter = reporter or NullReporter()
    manifest = read_bundle(bundle)
    loaded = load_domains(list(domains))
    protocol = options.protocol(loaded[0].name)
    torch_device = resolve_device(options.device)
    model = load_bundle(manifest, str(torch_device))
    tokens = cached_tokens(model, loaded, cache_dir, torch_device, options.batch_size, reporter)
    train, recorded = _train_config(manifest.metadata)
    baseline = None
    if options.cae_baseline:
        baseline = baseline_cae(model, tokens, train.cae, torch_device, cache_dir, train.seed, reporter)
    methods = bundle_methods(model, tokens, baseline, options.pooled_baselines, options.adapt_methods)
    result = evaluate(methods, protocol, reporter)
    result.info = {"bundle": str(bundle), "encoder": model.config.encoder, "domains": [d.describe() for d in loaded]}
    if options.cae_baseline:
        result.info["cae_baseline_schedule"] = dataclasses.asdict(dataclasses.replace(train.cae, mmd_weight=0.0))
        source = f"the bundle's CAE schedule ({train.schedule})" if recorded else \
            "the CPU schedule (the bundle records no training config)"
        result.notes.append(f"CAE without mean-matching: trained on the same tokens with {source}, mmd_weight 0.")
    return result


def _train_config(metadata: Mapping[str, Any]) -> tuple[TrainConfig, bool]:
    """The bundle's training config and True; the CPU schedule and False for a bundle that records none."""
    recorded = metadata.get("train_config")
    return (train_config_from_dict(recorded), True) if recorded else (cpu_schedule(), False)
