"""Frozen, validated configurations, written beside every artifact.

Defaults are DoRL's (Li et al. 2024, read from the paper's released code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dorl.errors import ConfigError

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
ENCODERS = ("tinyvit_5m", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_vit_test")
HEADS = ("linear", "mlp")
QKV_PARTS = ("q", "k", "v")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the encoder's fused qkv projections (and optionally other Linear layers)."""

    rank: int = field(default=4, metadata={"help": "LoRA rank r"})
    alpha: float | None = field(default=None, metadata={"help": "lora_alpha; None means alpha=rank (scaling 1, DoRL)"})
    parts: tuple[str, ...] = field(default=("q", "v"), metadata={"help": "parts of qkv to adapt"})
    extra_modules: tuple[str, ...] = field(default=(), metadata={"help": "other Linear names to adapt, e.g. proj"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})

    def __post_init__(self) -> None:
        _check(self.rank >= 1, f"LoRA rank must be at least 1, got {self.rank}.")
        _check(len(self.parts) + len(self.extra_modules) > 0, "LoRA needs at least one qkv part or extra module.")
        bad = [p for p in self.parts if p not in QKV_PARTS]
        _check(not bad, f"LoRA parts {bad} are not among {QKV_PARTS}.")
        _check(0.0 <= self.dropout < 1.0, f"LoRA dropout must be in [0, 1), got {self.dropout}.")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class ModelConfig:
    """The whole DoRL model: encoder, mask decoder, CAE and head."""

    encoder: str = field(default="tinyvit_5m", metadata={"help": f"one of {ENCODERS}"})
    image_size: int = field(default=224, metadata={"help": "square input size in pixels (multiple of 16)"})
    class_names: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    num_mask_channels: int = field(default=2, metadata={"help": "mask channels: background + cell classes"})
    cae_depth: int = field(default=12, metadata={"help": "CAE encoder ViT blocks"})
    cae_decoder_depth: int = field(default=4, metadata={"help": "CAE feature-decoder ViT blocks"})
    cae_heads: int | None = field(default=None, metadata={"help": "attention heads; None: dim // 64"})
    cae_mask_ratio: float = field(default=0.75, metadata={"help": "fraction of tokens masked in CAE training"})
    projector_dim: int = field(default=50, metadata={"help": "dimension of z used by the mean-matching loss"})
    head: str = field(default="linear", metadata={"help": f"classifier head, one of {HEADS}"})
    head_hidden: int = field(default=100, metadata={"help": "hidden units of the MLP head"})
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    lora: LoraConfig | None = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _check(self.encoder in ENCODERS, f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}.")
        _check(self.image_size >= 32 and self.image_size % 16 == 0,
               f"image_size must be a multiple of 16 and at least 32, got {self.image_size}.")
        _check(len(self.class_names) >= 2, "a classifier needs at least two class names.")
        _check(len(set(self.class_names)) == len(self.class_names), f"class names repeat: {self.class_names}.")
        _check(self.num_mask_channels >= 2, "num_mask_channels must be at least 2 (background and cell).")
        _check(self.cae_depth >= 1 and self.cae_decoder_depth >= 1, "CAE depths must be at least 1.")
        _check(0.0 <= self.cae_mask_ratio < 1.0, f"cae_mask_ratio must be in [0, 1), got {self.cae_mask_ratio}.")
        _check(self.head in HEADS, f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}.")
        _check(len(self.pixel_mean) == 3 and len(self.pixel_std) == 3, "pixel_mean and pixel_std need 3 values.")
        _check(all(s > 0 for s in self.pixel_std), "pixel_std values must be positive.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid(self) -> int:
        """Side of the encoder's token grid (every encoder here reduces by 16)."""
        return self.image_size // 16


T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-ready data (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass (nested ones included) from `to_dict` output."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}.")
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {sorted(unknown)}: the file was written by another dorl version.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "lora" and isinstance(value, dict):
            value = from_dict(LoraConfig, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
