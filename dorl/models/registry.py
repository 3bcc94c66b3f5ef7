"""Builders of encoders and whole models, by registry name (random weights; loading is in
`dorl.checkpoints`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dorl.config import ModelConfig
from dorl.errors import ConfigError
from dorl.models.dorl_model import DoRLModel


def _tinyvit(image_size: int) -> nn.Module:
    from dorl.models.tinyvit import tinyvit_5m

    return tinyvit_5m(img_size=image_size)


def _sam(name: str) -> Callable[[int], nn.Module]:
    def build(image_size: int) -> nn.Module:
        from dorl.models.sam_encoder import sam_vit

        return sam_vit(name, img_size=image_size)

    return build


ENCODER_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "tinyvit_5m": _tinyvit,
    "sam_vit_b": _sam("sam_vit_b"),
    "sam_vit_l": _sam("sam_vit_l"),
    "sam_vit_h": _sam("sam_vit_h"),
    "sam_vit_test": _sam("sam_vit_test"),
}


def build_encoder(name: str, image_size: int = 224) -> nn.Module:
    """An image encoder returning (pre-neck tokens, neck), with random weights."""
    if name not in ENCODER_BUILDERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_BUILDERS)}.")
    return ENCODER_BUILDERS[name](image_size)


def build_model(config: ModelConfig) -> DoRLModel:
    """The whole DoRL model for `config`, random weights, LoRA not yet applied."""
    return DoRLModel(config, build_encoder(config.encoder, config.image_size))
