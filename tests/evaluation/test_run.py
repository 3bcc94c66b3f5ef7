"""The evaluation driver's rows on small synthetic token maps: the baseline CAE's cache and every row."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dorl.config import ModelConfig
from dorl.evaluation.run import (
    DORL_METHOD,
    NO_MMD_METHOD,
    POOLED_METHOD,
    STANDARDISED_METHOD,
    baseline_cae,
    bundle_methods,
)
from dorl.models.registry import build_model
from dorl.training.config import CaeTrainConfig
from dorl.training.progress import RecordingReporter
from dorl.training.token_cache import TokenSet

TINY = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


def token_sets(seed: int) -> list[TokenSet]:
    """Two small synthetic domains of token maps (96-d, 14x14) with SSIM targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, labels, shift in (("src", ["a", "b"] * 3, 0.0), ("tgt", ["a", "b"] * 2, 2.0)):
        tokens = (torch.randn(len(labels), 96, 14, 14, generator=g) + shift).half()
        targets = torch.randint(0, 256, (len(labels), 3, 128, 128), generator=g, dtype=torch.uint8)
        out.append(TokenSet(name, [f"{name}{i}" for i in range(len(labels))], labels, tokens, targets))
    return out


def test_baseline_cae_is_cached_per_encoder_and_rows_are_built(model, tmp_path: Path) -> None:
    sets = token_sets(0)
    schedule = CaeTrainConfig(epochs=1, batch_size=16, warmup_iters=1)  # one step: the test is about caching
    first = baseline_cae(model, sets, schedule, torch.device("cpu"), tmp_path, seed=3)
    assert len(list(tmp_path.glob("cae_without_mmd_*.safetensors"))) == 1
    reporter = RecordingReporter()
    again = baseline_cae(model, sets, schedule, torch.device("cpu"), tmp_path, seed=3, reporter=reporter)
    assert reporter.notes and "read from" in reporter.notes[0] and "cae" not in reporter.tasks()
    for (k, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    untrained = dataclasses.replace(schedule, epochs=0)
    baseline_cae(model, sets, untrained, torch.device("cpu"), tmp_path, seed=3)
    other = build_model(TINY)  # other encoder weights: other tokens, so a cached CAE must not be reused
    baseline_cae(other, sets, untrained, torch.device("cpu"), tmp_path, seed=3)
    assert len(list(tmp_path.glob("cae_without_mmd_*.safetensors"))) == 3

    methods = bundle_methods(model, sets, first)
    assert [m.name for m in methods] == [DORL_METHOD, "DoRL + site adaptation (mean)", NO_MMD_METHOD, POOLED_METHOD,
                                        STANDARDISED_METHOD]
    x, y = methods[0].domains["tgt"]
    assert x.shape == (4, 96) and list(y) == ["a", "b"] * 2
    np.testing.assert_allclose(methods[3].domains["src"][0], sets[0].tokens.float().mean(dim=(2, 3)).numpy(), atol=1e-5)
    standardised = methods[4].arrays()["tgt"][0]
    np.testing.assert_allclose(standardised.mean(axis=0), 0.0, atol=1e-5)
    assert len(bundle_methods(model, sets, None, pooled_baselines=False)) == 2  # DoRL, and DoRL adapted
    names = [m.name for m in bundle_methods(model, sets, None, False, ("mean", "coral"))]
    assert names == [DORL_METHOD, "DoRL + site adaptation (mean)", "DoRL + site adaptation (coral)"]
