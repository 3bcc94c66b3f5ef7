"""The evaluation driver on small synthetic token maps: the CAE variants' cache and the rows' names and tags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dorl.config import ModelConfig
from dorl.errors import ConfigError
from dorl.evaluation.run import (
    CLS_ALIGNED_METHOD,
    DORL_METHOD,
    NO_MMD_METHOD,
    POOLED_METHOD,
    EvaluationOptions,
    feature_methods,
    is_variant,
    method_name,
    token_set_arrays,
    variant_cae,
    variant_schedule,
    view_arrays,
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


def test_variant_cae_is_cached_per_encoder_inputs_and_schedule(model, tmp_path: Path) -> None:
    sets = token_sets(0)
    schedule = CaeTrainConfig(epochs=1, batch_size=16, warmup_iters=1)  # one step: the test is about caching
    first = variant_cae(model, sets, schedule, torch.device("cpu"), tmp_path, seed=3, inputs="whole")
    assert len(list(tmp_path.glob("cae_*.safetensors"))) == 1
    reporter = RecordingReporter()
    again = variant_cae(model, sets, schedule, torch.device("cpu"), tmp_path, seed=3, inputs="whole",
                        reporter=reporter)
    assert reporter.notes and "read from" in reporter.notes[0] and "cae" not in reporter.tasks()
    for (k, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    untrained = dataclasses.replace(schedule, epochs=0)
    variant_cae(model, sets, untrained, torch.device("cpu"), tmp_path, seed=3, inputs="whole")
    variant_cae(model, sets, untrained, torch.device("cpu"), tmp_path, seed=3, inputs="cell")  # other crops
    other = build_model(TINY)  # other encoder weights: other tokens, so a cached CAE must not be reused
    variant_cae(other, sets, untrained, torch.device("cpu"), tmp_path, seed=3, inputs="whole")
    assert len(list(tmp_path.glob("cae_*.safetensors"))) == 4


def test_variant_schedules_and_which_the_bundle_holds() -> None:
    dorl = CaeTrainConfig(mmd_weight=0.5)
    assert variant_schedule(dorl, NO_MMD_METHOD).mmd_weight == 0.0
    cls = variant_schedule(dorl, CLS_ALIGNED_METHOD)
    assert (cls.alignment, cls.mmd_weight) == ("cls_mean", 0.5)
    plain = CaeTrainConfig(mmd_weight=0.0)
    assert variant_schedule(plain, DORL_METHOD).mmd_weight == 1.0  # an aligning variant always aligns
    assert is_variant(dorl, DORL_METHOD) and not is_variant(dorl, NO_MMD_METHOD)
    assert is_variant(plain, NO_MMD_METHOD) and not is_variant(plain, DORL_METHOD)
    assert is_variant(cls, CLS_ALIGNED_METHOD) and not is_variant(cls, DORL_METHOD)


def test_feature_methods_name_and_tag_every_row(model) -> None:
    sets = token_sets(1)
    arrays = token_set_arrays(sets, lambda t: t.tokens.float().mean(dim=(2, 3)).numpy())
    methods = feature_methods(POOLED_METHOD, "cell", arrays, ("mean", "coral"))
    assert [m.name for m in methods] == ["pooled tokens · cell", "pooled tokens · cell + adapt (mean)",
                                        "pooled tokens · cell + adapt (coral)"]
    assert [m.tags["adaptation"] for m in methods] == ["none", "mean", "coral"]
    assert all(m.tags["feature"] == POOLED_METHOD and m.tags["framing"] == "cell" and m.tags["tta"] == "none"
               for m in methods)
    plain, adapted = methods[0].arrays(), methods[1].arrays()
    np.testing.assert_allclose(plain["src"][0], adapted["src"][0])  # the source is never moved
    np.testing.assert_allclose(adapted["tgt"][0].mean(0), plain["src"][0].mean(0), atol=1e-4)
    assert method_name(DORL_METHOD, "whole") == "DoRL (CAE CLS) · whole"


def test_flip_rows_stack_the_views_plain_first_and_are_named_and_tagged(model) -> None:
    pooled = lambda t: t.tokens.float().mean(dim=(2, 3)).numpy()
    per_view = {v: token_set_arrays(token_sets(seed), pooled) for seed, v in enumerate(("plain", "flip_h", "flip_v"))}
    stacked = view_arrays(per_view, ("plain", "flip_h", "flip_v"))
    for domain, (x, y) in stacked.items():
        assert x.shape == (len(y), 3, 96)
        for i, v in enumerate(("plain", "flip_h", "flip_v")):
            np.testing.assert_array_equal(x[:, i], per_view[v][domain][0])
        np.testing.assert_array_equal(y, per_view["plain"][domain][1])
    alone = view_arrays(per_view, ("plain",))
    assert alone["src"][0].shape == (6, 96)
    methods = feature_methods(DORL_METHOD, "cell", stacked, ("mean",), tta="flips")
    assert [m.name for m in methods] == ["DoRL (CAE CLS) · cell + TTA flips",
                                        "DoRL (CAE CLS) · cell + TTA flips + adapt (mean)"]
    assert all(m.tags["tta"] == "flips" for m in methods)
    assert methods[1].arrays()["tgt"][0].shape == (4, 3, 96)  # adaptation keeps the views


def test_options_refuse_unknown_framings_and_variants() -> None:
    with pytest.raises(ConfigError, match="unknown framing"):
        EvaluationOptions(framings=("crop",))
    with pytest.raises(ConfigError, match="unknown CAE variant"):
        EvaluationOptions(cae_variants=("MAE",))
    with pytest.raises(ConfigError, match="unknown test-time augmentation.*none, flips"):
        EvaluationOptions(tta=("none", "rotations"))
    assert EvaluationOptions().protocol("pbc").seeds == (1234, 1235, 1236)


def test_training_runs_pseudo_masks_are_copied_where_the_evaluation_has_none(tmp_path: Path) -> None:
    from dorl.evaluation.run import _copy_pseudo_masks
    from dorl.training.token_cache import domain_pseudo_masks

    train, evaluation = tmp_path / "tokens", tmp_path / "eval" / "whole"
    train.mkdir()
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 3:6] = True
    np.savez(train / "src.pseudo.npz", keys=np.array(["k0", "k1"]), size=np.array(8),
             bits=np.packbits(masks.reshape(2, -1), axis=1))
    (evaluation).mkdir(parents=True)
    (evaluation / "tgt.pseudo.npz").write_bytes(b"kept")
    (train / "tgt.pseudo.npz").write_bytes(b"not copied over an existing file")
    _copy_pseudo_masks(train, evaluation, ["src", "tgt", "other"])
    assert (evaluation / "tgt.pseudo.npz").read_bytes() == b"kept"
    assert not (evaluation / "other.pseudo.npz").exists()

    class Domain:  # what domain_pseudo_masks reads of a domain when its cache matches
        name, samples = "src", ()

    read = domain_pseudo_masks(Domain(), ["k0", "k1"], 8, evaluation)  # type: ignore[arg-type]
    np.testing.assert_array_equal(read, masks)
