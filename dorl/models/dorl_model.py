"""The whole DoRL model in one module: cell images → logits, probs, feature, mask_logits."""

from __future__ import annotations

import torch
from torch import nn

from dorl.config import ModelConfig
from dorl.models.cae import CAE
from dorl.models.heads import build_head
from dorl.models.mask_decoder import CellMaskDecoder


class DoRLModel(nn.Module):
    """Encoder (LoRA-SAM or TinyViT) → mask decoder and CAE → classifier head.

    `forward` takes float RGB images [B,3,S,S] on the 0–255 scale and normalises them with
    the configured pixel mean/std (computed on the training set), so every caller — training,
    the export wrapper — shares one normalisation.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: ModelConfig, encoder: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        dim = int(getattr(encoder, "embed_dim"))  # noqa: B009  (an int; nn.Module types attributes as Tensor | Module)
        self.mask_decoder = CellMaskDecoder(config.grid, config.image_size, config.num_mask_channels)
        self.cae = CAE(
            dim,
            config.grid,
            depth=config.cae_depth,
            decoder_depth=config.cae_decoder_depth,
            num_heads=config.cae_heads,
            mask_ratio=config.cae_mask_ratio,
            projector_dim=config.projector_dim,
        )
        self.head = build_head(config.head, dim, config.num_classes, config.head_hidden)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return int(self.cae.dim)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (0–255) → (pre-neck tokens [B,C,g,g], neck [B,256,g,g])."""
        return self.encoder(self.normalise(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: images: float [B,3,S,S], RGB, 0–255.

        Returns: `logits` [B,K], `probs` [B,K], `feature` [B,C] (CAE CLS), `mask_logits` [B,M,S/4,S/4].
        """
        tokens, neck = self.encode(images)
        feature = self.cae.feature(tokens)
        logits = self.head(feature)
        return {
            "logits": logits,
            "probs": logits.softmax(dim=-1),
            "feature": feature,
            "mask_logits": self.mask_decoder(neck),
        }
