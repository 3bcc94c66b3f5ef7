
import pytest
import torch
from manifests import edit_manifest

from dorl.bundle import load_bundle, save_bundle
from dorl.config import ModelConfig
from dorl.contract import WEIGHTS_FILE
from dorl.errors import ArtifactError
from dorl.models.lora import apply_lora
from dorl.models.registry import build_model
from dorl.runtime.cell_check import MIN_STAIN_KEY, CellCheck

CONFIG = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1, class_names=("a", "b", "c"))


@pytest.fixture()
def lora_model():
    torch.manual_seed(0)
    model = build_model(CONFIG)
    model.encoder = apply_lora(model.encoder, CONFIG.lora)
    for name, p in model.encoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_round_trip_merges_lora_and_keeps_outputs(tmp_path, lora_model):
    images = torch.rand(2, 3, 224, 224) * 255
    with torch.no_grad():
        expected = lora_model(images)
    manifest = save_bundle(lora_model, tmp_path / "b", metadata={"note": "test"})
    assert manifest["lora_merged"] is True and manifest["class_names"] == ["a", "b", "c"]
    assert manifest["normalisation"]["pixel_std"] == list(CONFIG.pixel_std)
    assert len(manifest["files"][WEIGHTS_FILE]["sha256"]) == 64 and "torch" in manifest["versions"]
    loaded = load_bundle(tmp_path / "b")
    assert not any("lora" in k for k in loaded.state_dict())
    with torch.no_grad():
        got = loaded(images)
    for name in expected:
        assert (got[name] - expected[name]).abs().max().item() < 1e-4, name
    assert loaded.config == CONFIG


def test_changed_missing_truncated_and_foreign_files_are_refused(tmp_path, lora_model):
    folder = tmp_path / "b"
    save_bundle(lora_model, folder)
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(ArtifactError, match="truncated"):
        load_bundle(folder)
    weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ArtifactError, match="sha256"):
        load_bundle(folder)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_bundle(folder)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_manifest_of_another_kind_is_refused(tmp_path, lora_model):
    folder = tmp_path / "b"
    save_bundle(lora_model, folder)
    edit_manifest(folder, lambda manifest: manifest.update(kind="onnx"))
    with pytest.raises(ArtifactError, match="'onnx' artifact"):
        load_bundle(folder)


def test_source_feature_statistics_travel_with_the_bundle(tmp_path, lora_model):
    from dorl.bundle import load_feature_stats

    features = torch.randn(40, 96) * 2 + 1
    save_bundle(lora_model, tmp_path / "b", source_features=features)
    stats = load_feature_stats(tmp_path / "b")
    assert torch.allclose(stats["mean"], features.mean(0), atol=1e-5)
    assert torch.allclose(stats["std"], features.std(0), atol=1e-5)
    assert torch.allclose(stats["cov"], torch.cov(features.T), atol=1e-4)
    assert MIN_STAIN_KEY not in stats  # no floor given: the analyzer has no stain check
    save_bundle(lora_model, tmp_path / "floored", source_features=features, stain_floor=0.031)
    floored = load_feature_stats(tmp_path / "floored")
    assert float(floored[MIN_STAIN_KEY][0]) == pytest.approx(0.031)
    assert CellCheck.of_source({k: v.numpy() for k, v in floored.items()}).min_stain == pytest.approx(0.031)
    save_bundle(lora_model, tmp_path / "plain")
    assert load_feature_stats(tmp_path / "plain") is None
