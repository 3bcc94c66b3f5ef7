import dataclasses

import pytest
import torch

from dorl.config import ModelConfig
from dorl.data.domains import Domain
from dorl.errors import ConfigError, TrainingError
from dorl.models.cae import CAE
from dorl.models.registry import build_model
from dorl.training.cae import (
    alignment_loss,
    cae_losses,
    cae_outputs,
    coral,
    mean_matching,
    pooled,
    standardised,
    train_cae,
)
from dorl.training.config import CaeTrainConfig
from dorl.training.token_cache import TokenSet, cached_tokens

TINY = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def token_sets(tiny_domains: list[Domain], tmp_path_factory: pytest.TempPathFactory) -> list[TokenSet]:
    """Real cells of pbc (anchor) and the lab with masks through the tiny encoder, 4 of each."""
    torch.manual_seed(0)
    model = build_model(TINY)
    domains = [dataclasses.replace(d, samples=d.samples[::2][:4]) for d in (tiny_domains[0], tiny_domains[2])]
    return cached_tokens(model, domains, tmp_path_factory.mktemp("tokens"), CPU)


def test_mean_matching_compares_each_domain_mean_with_the_anchors() -> None:
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [4.0, 1.0], [0.0, 1.0]])
    ids = torch.tensor([0, 0, 1, 2, 2])
    # anchor mean (1,1); domain 1 mean (1,1): 0; domain 2 mean (2,1): MSE = 0.5
    assert mean_matching(z, ids).item() == pytest.approx(0.5)
    assert mean_matching(z, torch.tensor([1, 1, 1, 2, 2])).item() == 0.0  # no anchor row
    assert mean_matching(z, torch.zeros(5, dtype=torch.long)).item() == 0.0


def test_standardised_features_have_unit_batch_std_and_no_gradient_through_it() -> None:
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]], requires_grad=True)
    y = standardised(x)
    torch.testing.assert_close(y.std(dim=0), torch.ones(2))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.5, 0.05]] * 3))  # 1 / std, the std held constant


def test_coral_compares_each_domain_covariance_with_the_anchors() -> None:
    anchor = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # covariance [[2, 2], [2, 2]]
    other = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # covariance [[0, 0], [0, 2]]
    x, ids = torch.cat([anchor, other]), torch.tensor([0, 0, 1, 1])
    # ||C_a - C_d||^2_F = 4 + 4 + 4 + 0 = 12; / (4 * 2^2) = 0.75
    assert coral(x, ids).item() == pytest.approx(0.75)
    assert coral(x, torch.tensor([0, 1, 1, 1])).item() == 0.0  # one anchor row: no covariance
    assert coral(torch.cat([anchor, anchor]), ids).item() == 0.0


def test_cls_alignment_acts_on_the_unmasked_cls_feature() -> None:
    torch.manual_seed(0)
    cae = CAE(32, 14, depth=1, decoder_depth=1).eval()
    tokens, ids = torch.randn(6, 32, 14, 14), torch.tensor([0, 0, 0, 1, 1, 2])
    tokens[3:] += 1.0  # other domains shifted
    cls = standardised(cae.feature(tokens))
    expected = mean_matching(cls, ids)
    z = torch.zeros(6, 50)
    assert alignment_loss(cae, tokens, z, ids, "cls_mean").item() == pytest.approx(expected.item(), rel=1e-5)
    assert alignment_loss(cae, tokens, z, ids, "cls_coral").item() == pytest.approx(
        (expected + coral(cls, ids)).item(), rel=1e-5)
    assert alignment_loss(cae, tokens, z, ids, "z").item() == 0.0  # z constant: nothing to match
    loss = alignment_loss(cae, tokens, z, ids, "cls_mean")
    loss.backward()
    assert cae.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and cae.projector.weight.grad is None


def test_outputs_with_the_whole_batch_equal_the_models_forward() -> None:
    torch.manual_seed(0)
    cae = CAE(32, 14, depth=1, decoder_depth=1).eval()
    tokens = torch.randn(4, 32, 14, 14)
    torch.manual_seed(1)
    full = cae_outputs(cae, tokens, 1.0)
    torch.manual_seed(1)
    part = cae_outputs(cae, tokens, 0.25)  # the same masking draw
    assert part["image"].shape == (1, 3, 128, 128) and full["image"].shape == (4, 3, 128, 128)
    for name in ("feature", "z", "tokens"):
        torch.testing.assert_close(part[name], full[name])
    torch.testing.assert_close(part["image"], full["image"][:1])


def test_losses_are_weighted_as_in_the_paper(token_sets: list[TokenSet]) -> None:
    torch.manual_seed(0)
    cae = CAE(96, 14, depth=1, decoder_depth=1)
    tokens, targets, ids = pooled(token_sets)
    parts = cae_losses(cae, tokens.float(), targets.float() / 255, torch.from_numpy(ids), CaeTrainConfig())
    expected = parts["ssim"] + 2 * (parts["mmd"] + 0.5 * parts["rec"])
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0 < parts["ssim"].item() < 2 and parts["mmd"].item() > 0 and parts["rec"].item() > 0


def test_training_on_real_tokens_lowers_every_loss(token_sets: list[TokenSet]) -> None:
    torch.manual_seed(0)
    cae = CAE(96, 14, depth=1, decoder_depth=1)
    few = [dataclasses.replace(t, keys=t.keys[:2], labels=t.labels[:2], tokens=t.tokens[:2], targets=t.targets[:2])
           for t in token_sets]
    config = CaeTrainConfig(epochs=8, batch_size=4, warmup_iters=0, lr=1e-3, ssim_fraction=0.5)
    history = train_cae(cae, few, config, CPU, seed=0)
    assert set(history) == {"loss", "ssim", "mmd", "rec"} and len(history["loss"]) == 8
    first, last = (sum(history["loss"][i:i + 2]) for i in (0, 6))
    assert last < 0.8 * first
    assert history["ssim"][-1] < history["ssim"][0] and history["rec"][-1] < history["rec"][0]
    assert not cae.training


def test_the_baseline_without_mean_matching_ignores_z(token_sets: list[TokenSet]) -> None:
    torch.manual_seed(0)
    cae = CAE(96, 14, depth=1, decoder_depth=1)
    before = cae.projector.weight.clone()
    config = CaeTrainConfig(epochs=1, batch_size=8, mmd_weight=0.0, weight_decay=0.0, ssim_fraction=0.25)
    train_cae(cae, token_sets, config, CPU)
    assert torch.equal(cae.projector.weight, before)  # z gets no gradient when L_mmd is off


def test_every_domain_needs_cells(token_sets: list[TokenSet]) -> None:
    empty = dataclasses.replace(token_sets[1], keys=[], labels=[], tokens=token_sets[1].tokens[:0],
                                targets=token_sets[1].targets[:0])
    with pytest.raises(ConfigError, match="every domain"):
        pooled([token_sets[0], empty])


def test_cae_training_on_a_corrupt_token_stops_at_its_first_step(token_sets: list[TokenSet]) -> None:
    torch.manual_seed(0)
    cae = CAE(96, 14, depth=1, decoder_depth=1)
    tokens = token_sets[1].tokens.clone()
    tokens[0, 0, 0] = float("nan")  # one value of one cell, as a damaged cache would hold
    sets = [token_sets[0], dataclasses.replace(token_sets[1], tokens=tokens)]
    before = [p.detach().clone() for p in cae.parameters()]
    config = CaeTrainConfig(epochs=2, batch_size=8, warmup_iters=0, lr=1e-3, ssim_fraction=0.5)
    with pytest.raises(TrainingError, match=r"the cae loss became nan at step 1 of 2"):
        train_cae(cae, sets, config, CPU, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, cae.parameters()))  # no step was taken with it
