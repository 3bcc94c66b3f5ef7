import pytest

from dorl.config import LoraConfig, ModelConfig, from_dict, to_dict
from dorl.errors import ConfigError


def test_the_model_is_built_as_its_config_says():
    torch = pytest.importorskip("torch")
    from dorl.models.lora import apply_lora
    from dorl.models.registry import build_model

    config = ModelConfig(encoder="sam_vit_test", image_size=96, class_names=("a", "b", "c"), cae_depth=2,
                         cae_decoder_depth=1, projector_dim=7, head="mlp", head_hidden=11, num_mask_channels=3)
    model = build_model(config).eval()
    assert len(model.cae.blocks) == 2 and len(model.cae.decoder_blocks) == 1 and model.cae.projector.out_features == 7
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 96, 96))
    assert out["logits"].shape == (2, 3) and out["mask_logits"].shape == (2, 3, 24, 24) and config.grid == 6
    assert model.head.fc1.out_features == 11
    adapted = apply_lora(model.encoder, LoraConfig(rank=3, alpha=6.0, parts=("v",)))
    layers = [name for name, m in adapted.named_modules() if hasattr(m, "lora_A") and hasattr(m, "r")]
    layer = adapted.get_submodule(layers[0])
    assert all(name.endswith("qkv.v") for name in layers) and layer.r["default"] == 3 and layer.scaling["default"] == 2.0


def test_round_trip_through_json_ready_dict():
    config = ModelConfig(encoder="sam_vit_b", class_names=("x", "y"), lora=LoraConfig(rank=8, parts=("q", "k", "v")))
    assert from_dict(ModelConfig, to_dict(config)) == config
    assert from_dict(ModelConfig, to_dict(ModelConfig(lora=None))).lora is None


@pytest.mark.parametrize("kwargs, message", [
    ({"encoder": "resnet"}, "unknown encoder"),
    ({"image_size": 100}, "multiple of 16"),
    ({"class_names": ("a",)}, "at least two"),
    ({"class_names": ("a", "a")}, "repeat"),
    ({"head": "forest"}, "unknown head"),
    ({"cae_mask_ratio": 1.0}, "cae_mask_ratio"),
    ({"pixel_std": (1.0, 0.0, 1.0)}, "positive"),
])
def test_invalid_values_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be at least 1"),
    ({"parts": ("q", "o")}, r"\['o'\] are not among"),
    ({"parts": (), "extra_modules": ()}, "at least one qkv part"),
    ({"dropout": 1.0}, "dropout"),
])
def test_invalid_lora_values_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**kwargs)


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        from_dict(ModelConfig, {"encoder": "tinyvit_5m", "colour": "red"})
    with pytest.raises(ConfigError, match="expected a mapping for ModelConfig"):
        from_dict(ModelConfig, ["tinyvit_5m"])  # type: ignore[arg-type]
