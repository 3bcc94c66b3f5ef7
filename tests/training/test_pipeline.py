import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sample_data import MASKED

from dorl.bundle import load_bundle, load_feature_stats, read_bundle_manifest
from dorl.config import ModelConfig
from dorl.data.domains import Domain
from dorl.data.images import decode_image, resize_square
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.cell_check import MIN_STAIN_KEY, QUANTILE, stain_area, stain_floor
from dorl.training.config import CaeTrainConfig, SegTrainConfig, TrainConfig
from dorl.training.pipeline import source_stain_floor, train, trusted_domains
from dorl.training.progress import RecordingReporter
from dorl.training.token_cache import model_fingerprint

TINY = TrainConfig(
    model=ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1),
    seg=SegTrainConfig(epochs=1, batch_size=4, warmup_epochs=0, max_train_images=4, max_holdout_images=3),
    cae=CaeTrainConfig(epochs=1, batch_size=4, warmup_iters=0, ssim_fraction=0.25),
)


@pytest.fixture(scope="module")
def domains(tiny_domains: list[Domain]) -> list[Domain]:
    """pbc: 6 cells of 3 classes (anchor); the lab with masks: 3 cells."""
    pbc, masked = tiny_domains[0], tiny_domains[2]
    return [dataclasses.replace(pbc, samples=pbc.samples[:6]), dataclasses.replace(masked, samples=masked.samples[:3])]


@pytest.fixture(scope="module")
def trained(domains: list[Domain], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RecordingReporter]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    reporter = RecordingReporter()
    result = train(domains, out, TINY, reporter=reporter, device="cpu")
    assert result.ran == ["seg", "cae", "head"] and result.reused == [] and result.bundle == out / "bundle"
    return out, reporter


def copy_run(trained: tuple[Path, RecordingReporter], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return out


def test_the_bundle_loads_and_records_the_run(trained, cell_batch: np.ndarray) -> None:
    out, reporter = trained
    assert {"seg", "tokens pbc", f"tokens {MASKED}", "cae"} <= set(reporter.tasks())
    model = load_bundle(out / "bundle")
    token_cache = read_bundle_manifest(out / "bundle")["metadata"]["token_cache"]
    assert token_cache["fingerprint"] == model_fingerprint(model)  # the bundle's encoder made the cached tokens
    # the masked lab's cells all have expert masks: only pbc needs pseudo masks for its SSIM targets, but the
    # cell crop (the default framing) cuts every cell with its pseudo mask
    assert TINY.framing.cell
    assert {p.name for p in Path(token_cache["folder"]).iterdir()} == {"pbc.safetensors", f"{MASKED}.safetensors",
                                                                       "pbc.pseudo.npz", f"{MASKED}.pseudo.npz"}
    with torch.no_grad():
        result = model(torch.from_numpy(cell_batch[:2]).permute(0, 3, 1, 2).float())
    assert result["logits"].shape == (2, 5) and result["mask_logits"].shape == (2, 2, 56, 56)
    meta = read_bundle_manifest(out / "bundle")["metadata"]
    assert meta["class_names"] == list(TINY.model.class_names) and meta["anchor_domain"] == "pbc"
    assert [d["name"] for d in meta["domains"]] == ["pbc", MASKED]
    assert meta["seg"]["pseudo_mask_vs_expert"][MASKED]["n"] == 3
    assert {k.split("/")[1] for k in meta["seg"]["holdout"]} <= {"pseudo", "expert"}
    assert len(meta["seg"]["losses"]) == 1 and set(meta["cae"]["losses"]) == {"loss", "ssim", "mmd", "rec"}
    assert meta["head"]["kind"] == "logreg" and set(meta["seconds"]) == {"seg", "cae", "head"}
    assert meta["tta"] == "flips"  # the analyzer averages the crop and its flips unless told otherwise
    assert meta["train_config"]["schedule"] == "paper" and meta["stages_run"] == ["seg", "cae", "head"]
    assert meta["framing"]["input"] == TINY.framing.input and meta["ssim_targets"]["segmenter_min_iou"] == 0.85
    assert meta["inputs"]["pbc"]["target_masks"] == {"pseudo": 6} and meta["inputs"][MASKED]["target_masks"] == {
        "expert": 3}
    # 6 anchor cells are too few to set the stain floor: the bundle says so and records none
    assert meta["stain_floor"]["skipped"] == "6 cells; the floor needs at least 10"
    assert MIN_STAIN_KEY not in load_feature_stats(out / "bundle")
    pixel_mean = read_bundle_manifest(out / "bundle")["normalisation"]["pixel_mean"]
    assert pixel_mean != list(ModelConfig().pixel_mean)  # computed on the training cells


def test_resume_skips_finished_stages(trained, domains: list[Domain], tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    reporter = RecordingReporter()
    result = train(domains, out, TINY, reporter=reporter, device="cpu")
    assert result.ran == [] and result.reused == ["seg", "cae", "head"] and "seg" not in reporter.tasks()
    changed = dataclasses.replace(TINY, cae=dataclasses.replace(TINY.cae, lr=5e-4)).with_head("mlp")
    result = train(domains, out, changed, stages=("cae", "head"), device="cpu")
    assert result.ran == ["cae", "head"] and result.reused == ["seg"]  # the head was fit on the old CAE
    assert read_bundle_manifest(out / "bundle")["config"]["head"] == "mlp"


def test_a_changed_label_or_image_trains_again(trained, domains: list[Domain], tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    pbc = domains[0]
    relabelled = dataclasses.replace(pbc.samples[0], label=pbc.samples[-1].label)  # one cell moved to another class
    moved = [dataclasses.replace(pbc, samples=(relabelled, *pbc.samples[1:])), domains[1]]
    result = train(moved, out, TINY, device="cpu")
    assert result.ran == ["seg", "cae", "head"] and result.reused == []  # nothing learnt from the old labels is kept


def test_cached_tokens_take_the_files_current_labels(trained, domains: list[Domain]) -> None:
    from safetensors import safe_open

    from dorl.artifacts import sha256_file
    from dorl.training.token_cache import load_token_set

    out, _ = trained
    pbc = domains[0]
    path = out / "tokens" / f"{pbc.name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    keys = [sha256_file(s.path) for s in pbc.samples]
    labels = ["moved", *(s.label for s in pbc.samples[1:])]
    hit = load_token_set(path, meta["fingerprint"], keys, meta["settings"], labels)
    assert hit is not None and hit.labels == labels  # the tokens are reused, the label is the file's own now
    assert load_token_set(path, meta["fingerprint"], keys, meta["settings"]).labels[0] == pbc.samples[0].label


def test_a_corrupted_checkpoint_is_a_clear_error(trained, domains: list[Domain], tmp_path: Path) -> None:
    out = copy_run(trained, tmp_path)
    weights = out / "checkpoints" / "cae" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="cae checkpoint.*--no-resume"):
        train(domains, out, TINY, device="cpu")
    result = train(domains, out, TINY, stages=("cae", "head"), resume=False, device="cpu")
    assert result.ran == ["cae", "head"]


def test_stages_without_checkpoints_keep_pretrained_weights(domains: list[Domain], tmp_path: Path) -> None:
    reporter = RecordingReporter()
    config = dataclasses.replace(TINY, cae=dataclasses.replace(TINY.cae, epochs=0))
    result = train(domains, tmp_path, config, stages=("cae", "head"), reporter=reporter, device="cpu")
    assert result.ran == ["cae", "head"] and any("seg: not run" in n for n in reporter.notes)


def test_bad_requests_are_config_errors(domains: list[Domain], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stages"):
        train(domains, tmp_path, TINY, stages=("seg", "export"))
    with pytest.raises(ConfigError, match="does not have"):
        train(domains, tmp_path, dataclasses.replace(TINY, model=dataclasses.replace(
            TINY.model, class_names=("lymphocyte", "neutrophil"))))
    with pytest.raises(ConfigError, match="no domains"):
        train([], tmp_path, TINY)


def test_the_stain_floor_is_the_anchor_cells_own(tiny_domains: list[Domain]) -> None:
    pbc = tiny_domains[0]
    floor, record = source_stain_floor(pbc, 224)
    areas = [stain_area(resize_square(decode_image(s.path, reduce_for=224).rgb, 224)) for s in pbc.samples]  # as predict
    assert floor == pytest.approx(stain_floor(np.array(areas))) and 0.0 < floor <= sorted(areas)[1]
    assert record == {"domain": "pbc", "quantile": QUANTILE, "cells": len(areas), "unreadable": 0, "min_share": floor}
    assert sum(a < floor for a in areas) <= 1  # the floor lets 99.5 % of the anchor's cells through
    assert source_stain_floor(pbc, 48)[1]["skipped"] == "the input side 48 is below the stain map's 56"


def test_the_segmenter_is_trusted_where_its_held_out_iou_clears_the_threshold() -> None:
    holdout = {"pbc/pseudo": {"n": 10, "iou": 0.8}, "jtsc/expert": {"n": 4, "iou": 0.95},
               "mix/expert": {"n": 1, "iou": 1.0}, "mix/pseudo": {"n": 3, "iou": 0.8}}  # mix: (1 + 2.4) / 4 = 0.85
    assert trusted_domains({"holdout": holdout}, 0.85) == ("jtsc", "mix")
    assert trusted_domains({"holdout": holdout}, 0.5) == ("jtsc", "mix", "pbc")
    assert trusted_domains(None, 0.5) == ()
