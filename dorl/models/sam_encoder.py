"""SAM ViT image encoders (segment_anything's own classes) at a configurable input size.

DoRL runs SAM at 224×224: the absolute position embedding and the global-attention
relative-position tables of an official checkpoint (trained on a 64×64 token grid at 1024
input) are interpolated to the smaller grid on load (see `dorl.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling.image_encoder import ImageEncoderViT
from torch import nn


@dataclass(frozen=True)
class SamVitSpec:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


SAM_VIT_SPECS = {
    "sam_vit_b": SamVitSpec(768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": SamVitSpec(1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": SamVitSpec(1280, 32, 16, (7, 15, 23, 31)),
    # Same architecture, tiny: for tests and quick experiments.
    "sam_vit_test": SamVitSpec(96, 4, 4, (1, 3)),
}


class SamEncoder(ImageEncoderViT):
    """SAM's ImageEncoderViT returning the pre-neck token map and the neck output.

    State-dict keys are those of `Sam.image_encoder` in an official checkpoint.
    """

    qkv_layout = "qkv_major"  # fused qkv rows are [all q | all k | all v]

    def __init__(self, spec: SamVitSpec, img_size: int = 224, window_size: int = 14) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=16,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4.0,
            out_chans=256,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=window_size,
            global_attn_indexes=spec.global_attn_indexes,
        )
        self.spec = spec
        self.embed_dim = spec.embed_dim
        self.out_chans = 256
        self.grid = img_size // 16
        for block in self.blocks:
            block.attn.head_dim = spec.embed_dim // spec.num_heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x: normalised images [B,3,S,S]. Returns: (tokens [B,C,S/16,S/16], neck [B,256,S/16,S/16])."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        tokens = x.permute(0, 3, 1, 2)
        return tokens, self.neck(tokens)


def sam_vit(name: str, img_size: int = 224) -> SamEncoder:
    """Build a SAM ViT encoder by registry name (sam_vit_b/l/h/test) with random weights."""
    return SamEncoder(SAM_VIT_SPECS[name], img_size=img_size)
