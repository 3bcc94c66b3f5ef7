"""SAM's prompt encoder + mask decoder, run without prompts as DoRL does.

The modules are segment_anything's own (so an official checkpoint's or the shared
pretrained decoder's keys load unchanged); only the forward differs: no prompts, so the
sparse embedding is empty and the dense one is `no_mask_embed`, and every mask token is
returned (`num_mask_channels` = background + cell classes) instead of SAM's best-of-3.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn


class CellMaskDecoder(nn.Module):
    """Image embedding [B,256,g,g] → mask logits [B,num_mask_channels,4g,4g]."""

    def __init__(self, grid: int, image_size: int, num_mask_channels: int = 2, embed_dim: int = 256) -> None:
        super().__init__()
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=num_mask_channels - 1,
            transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.num_mask_channels = num_mask_channels

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        dec = self.mask_decoder
        b, c, h, w = image_embeddings.shape
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = tokens.unsqueeze(0).expand(b, -1, -1)
        src = image_embeddings + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        hs, src = dec.transformer(src, pos, tokens)
        mask_tokens = hs[:, 1 : 1 + dec.num_mask_tokens, :]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        _, uc, uh, uw = upscaled.shape
        return (hyper @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
