import pytest

from dorl.config import LoraConfig, ModelConfig, from_dict, to_dict
from dorl.errors import ConfigError


def test_defaults_are_dorls():
    config = ModelConfig()
    assert config.image_size == 224 and config.grid == 14 and config.num_mask_channels == 2
    assert (config.cae_depth, config.cae_decoder_depth, config.cae_mask_ratio, config.projector_dim) == (12, 4, 0.75, 50)
    assert config.lora == LoraConfig(rank=4, parts=("q", "v")) and config.lora.lora_alpha == 4.0


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


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        from_dict(ModelConfig, {"encoder": "tinyvit_5m", "colour": "red"})
