from pathlib import Path

import pytest
import torch
from sample_data import MASKED

from dorl.artifacts import sha256_file
from dorl.config import ModelConfig
from dorl.data.domains import Domain
from dorl.data.framing import FramingConfig, crop_cell
from dorl.data.images import load_rgb, resize_square
from dorl.data.pseudo_masks import pseudo_mask
from dorl.models.registry import build_model
from dorl.training.progress import RecordingReporter
from dorl.training.token_cache import InputSettings, cached_tokens, model_fingerprint

TINY = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)
CPU = torch.device("cpu")


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


def test_tokens_and_targets_of_every_cell(model, tiny_domains: list[Domain], tmp_path: Path) -> None:
    domains = tiny_domains[1:]
    reporter = RecordingReporter()
    sets = cached_tokens(model, domains, tmp_path, CPU, batch_size=4, reporter=reporter)
    # the masked lab's cells all have expert masks, so its targets need no pseudo masks
    assert [s.domain for s in sets] == ["bccd", MASKED]
    assert reporter.tasks() == ["pseudo masks bccd", "tokens bccd", f"tokens {MASKED}"]
    assert sets[0].info["target_masks"] == {"pseudo": len(domains[0])}
    assert sets[1].info["target_masks"] == {"expert": len(domains[1])}
    for token_set, domain in zip(sets, domains):
        n = len(domain)
        assert len(token_set) == n and token_set.labels == list(domain.labels)
        assert token_set.tokens.shape == (n, 96, 14, 14) and token_set.tokens.dtype == torch.float16
        assert token_set.targets.shape == (n, 3, 128, 128) and token_set.targets.dtype == torch.uint8
        assert token_set.keys[0] == sha256_file(domain.samples[0].path)
        assert (tmp_path / f"{domain.name}.safetensors").is_file()
    with torch.no_grad():
        from dorl.training.datasets import load_images

        first = torch.from_numpy(load_images(domains[0].samples[:1], 224)).permute(0, 3, 1, 2).float()
        tokens, _ = model.encode(first)
    torch.testing.assert_close(sets[0].tokens[:1].float(), tokens, atol=2e-2, rtol=1e-2)


def test_cache_is_reused_only_for_the_same_weights_and_files(model, tiny_domains: list[Domain], tmp_path: Path) -> None:
    masked = tiny_domains[2]
    first = cached_tokens(model, [masked], tmp_path, CPU)[0]
    reporter = RecordingReporter()
    again = cached_tokens(model, [masked], tmp_path, CPU, reporter=reporter)[0]
    assert reporter.notes and "read from" in reporter.notes[0] and reporter.tasks() == []
    assert torch.equal(again.tokens, first.tokens) and torch.equal(again.targets, first.targets)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.mask_decoder.mask_decoder.mask_tokens.weight.add_(1.0)
    assert model_fingerprint(model) != before
    reporter = RecordingReporter()
    cached_tokens(model, [masked], tmp_path, CPU, reporter=reporter)
    assert reporter.tasks() == [f"tokens {MASKED}"]  # computed again


def test_a_damaged_cache_file_is_computed_again(model, tiny_domains: list[Domain], tmp_path: Path) -> None:
    masked = tiny_domains[2]
    cached_tokens(model, [masked], tmp_path, CPU)
    path = tmp_path / f"{MASKED}.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    reporter = RecordingReporter()
    fresh = cached_tokens(model, [masked], tmp_path, CPU, reporter=reporter)[0]
    assert reporter.tasks() == [f"tokens {MASKED}"] and len(fresh) == len(masked)


def test_cell_framing_encodes_the_crop_and_reuses_the_pseudo_masks(model, tiny_domains: list[Domain],
                                                                   tmp_path: Path) -> None:
    pbc = tiny_domains[0]
    whole = cached_tokens(model, [pbc], tmp_path, CPU)[0]
    reporter = RecordingReporter()
    settings = InputSettings(FramingConfig(input="cell"))
    cell = cached_tokens(model, [pbc], tmp_path, CPU, reporter=reporter, settings=settings)[0]
    assert reporter.tasks() == ["tokens pbc"]  # other settings: tokens again, pseudo masks from the cache
    assert cell.info["empty_crop_masks"] == 0
    torch.testing.assert_close(cell.targets, whole.targets, atol=0, rtol=0)  # targets do not depend on framing
    image = load_rgb(pbc.samples[0].path)
    crop = crop_cell(image, pseudo_mask(resize_square(image, 224)), 224).image
    with torch.no_grad():
        tokens, _ = model.encode(torch.from_numpy(crop[None]).permute(0, 3, 1, 2).float())
    torch.testing.assert_close(cell.tokens[:1].float(), tokens, atol=2e-2, rtol=1e-2)
    assert not torch.allclose(cell.tokens.float(), whole.tokens.float(), atol=1e-1)
    reporter = RecordingReporter()
    cached_tokens(model, [pbc], tmp_path, CPU, reporter=reporter, settings=settings)
    assert reporter.tasks() == []  # same settings: read back


def test_a_flipped_view_is_encoded_flipped_and_cached_apart(model, tiny_domains: list[Domain], tmp_path: Path) -> None:
    pbc = tiny_domains[0]
    framing = FramingConfig(input="cell")
    plain = InputSettings(framing)
    assert "view" not in plain.key("pbc")  # caches written before views existed still match
    flipped = InputSettings(framing, view="flip_h")
    assert plain.key("pbc") != flipped.key("pbc")
    reporter = RecordingReporter()
    token_set = cached_tokens(model, [pbc], tmp_path / "h", CPU, reporter=reporter, settings=flipped)[0]
    assert reporter.tasks() == ["pseudo masks pbc", "tokens pbc (flip_h)"]
    image = load_rgb(pbc.samples[0].path)
    crop = crop_cell(image, pseudo_mask(resize_square(image, 224)), 224).image
    with torch.no_grad():
        tokens, _ = model.encode(torch.from_numpy(crop[None, :, ::-1].copy()).permute(0, 3, 1, 2).float())
    torch.testing.assert_close(token_set.tokens[:1].float(), tokens, atol=2e-2, rtol=1e-2)
    reporter = RecordingReporter()
    cached_tokens(model, [pbc], tmp_path / "h", CPU, reporter=reporter, settings=plain)
    assert reporter.tasks() == ["tokens pbc"]  # the flipped file does not stand for the plain view
    with pytest.raises(ValueError, match="view must be one of"):
        InputSettings(framing, view="rot90")


def test_a_cut_short_pseudo_mask_file_is_computed_again(tiny_domains: list[Domain], tmp_path: Path) -> None:
    import dataclasses

    from dorl.training.token_cache import domain_pseudo_masks

    domain = dataclasses.replace(tiny_domains[0], samples=tiny_domains[0].samples[:3])
    keys = [sha256_file(s.path) for s in domain.samples]
    first = domain_pseudo_masks(domain, keys, 64, tmp_path)
    path = tmp_path / f"{domain.name}.pseudo.npz"
    path.write_bytes(path.read_bytes()[:40])  # a run killed while writing, before atomic writes
    again = domain_pseudo_masks(domain, keys, 64, tmp_path)
    assert (again == first).all() and [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten whole
