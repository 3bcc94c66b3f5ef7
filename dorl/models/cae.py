"""The cross-domain autoencoder (CAE): an MAE over the encoder's pre-neck tokens.

As in DoRL's code (`MAE.py`): learned position embedding, random masking (0.75 in training),
a CLS token, ViT blocks + LayerNorm (the encoder); a feature decoder of ViT blocks back to the
token map; an image decoder of transposed convolutions to a 3×128×128 image (compared by SSIM
with the masked, cropped cell); a projector to z for the mean-matching term, z =
Linear(GAP(decoded token map)). The classification feature is the encoder's CLS token with
masking off. The width is the encoder's (768 for SAM ViT-B, 320 for TinyViT-5M).

Where this module differs from `MAE.py` (none of it changes what is trained or read out):
- the feature decoder starts with a Linear (`decoder_embed`) and ends with LayerNorm + Linear
  (`decoder_pred`), as in the MAE paper's code; `MAE.py` feeds the encoder's output straight into
  its blocks and takes their output as the decoded tokens;
- the CLS token gets a position embedding (`MAE.py`: the encoder's CLS has none);
- the image decoder is 14→16→32→64→128 (kernels 3, 4, 4, 4) with BatchNorm, a 3×3 output
  convolution and a sigmoid, so the image is in [0, 1] as SSIM assumes; `MAE.py`'s is
  14→28→56→57→62→128 (kernels 4, 4, 4, 8, 8), no normalisation, no output activation; its
  channels (512/256/128/64 in `MAE.py`, for 768-wide tokens) scale with the token width;
- other grids than 14×14 are supported (the image is resized to 128×128).
"""

from __future__ import annotations

import torch
from torch import nn

from dorl.models.vit import Block

IMAGE_OUT = 128


REFERENCE_DIM = 768  # SAM ViT-B's width, for which DoRL's image decoder has 512/256/128/64 channels
REFERENCE_CHANNELS = (512, 256, 128, 64)


def image_decoder_channels(dim: int) -> tuple[int, ...]:
    """The image decoder's channels for a token width: DoRL's 512/256/128/64 at 768, scaled with the
    width (multiples of 8, at least 16), so a narrow encoder does not carry a decoder sized for ViT-B
    (at 320 wide: 216/104/56/24, a fifth of the compute; the decoder is most of a CAE step)."""
    return tuple(max(16, round(c * dim / REFERENCE_DIM / 8) * 8) for c in REFERENCE_CHANNELS)


class ImageDecoder(nn.Module):
    """Token map [B,C,14,14] → image [B,3,128,128] in [0,1] (dim → 4 upsampling stages → 3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()

        def up(cin: int, cout: int, k: int, s: int, p: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        c1, c2, c3, c4 = image_decoder_channels(dim)
        self.layers = nn.Sequential(
            *up(dim, c1, 3, 1, 0),  # 14 → 16
            *up(c1, c2, 4, 2, 1),  # → 32
            *up(c2, c3, 4, 2, 1),  # → 64
            *up(c3, c4, 4, 2, 1),  # → 128
            nn.Conv2d(c4, 3, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        if y.shape[-1] != IMAGE_OUT:  # grids other than 14 (inputs other than 224)
            y = nn.functional.interpolate(y, size=(IMAGE_OUT, IMAGE_OUT), mode="bilinear", align_corners=False)
        return y


class CAE(nn.Module):
    """MAE over `grid*grid` tokens of width `dim`."""

    def __init__(
        self,
        dim: int,
        grid: int,
        depth: int = 12,
        decoder_depth: int = 4,
        num_heads: int | None = None,
        mask_ratio: float = 0.75,
        projector_dim: int = 50,
    ) -> None:
        super().__init__()
        heads = num_heads or max(1, dim // 64)
        self.dim, self.grid, self.mask_ratio = dim, grid, mask_ratio
        n = grid * grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.decoder_blocks = nn.ModuleList(Block(dim, heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, dim)
        self.image_decoder = ImageDecoder(dim)
        self.projector = nn.Linear(dim, projector_dim)
        for p in (self.cls_token, self.pos_embed, self.mask_token, self.decoder_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def encode(self, tokens: torch.Tensor, mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: tokens [B,N,C]. Returns: latent [B,1+kept,C] (CLS first) and ids_restore (None unmasked)."""
        x = tokens + self.pos_embed[:, 1:, :]
        ids_restore = None
        if mask_ratio > 0:
            b, n, c = x.shape
            keep = max(1, round(n * (1 - mask_ratio)))
            noise = torch.rand(b, n, device=x.device)
            ids_shuffle = torch.argsort(noise, dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, c))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), ids_restore

    def feature(self, token_map: torch.Tensor) -> torch.Tensor:
        """The classification feature: CLS of the unmasked encoder. token_map [B,C,g,g] → [B,C]."""
        latent, _ = self.encode(token_map.flatten(2).transpose(1, 2))
        return latent[:, 0]

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor | None) -> torch.Tensor:
        """Latent → reconstructed token map [B,C,g,g]."""
        x = self.decoder_embed(latent)
        cls, rest = x[:, :1], x[:, 1:]
        if ids_restore is not None:
            b, n = ids_restore.shape
            masks = self.mask_token.expand(b, n - rest.shape[1], -1)
            rest = torch.cat([rest, masks], dim=1)
            rest = torch.gather(rest, 1, ids_restore[:, :, None].expand(-1, -1, rest.shape[2]))
        x = torch.cat([cls, rest], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        return x.transpose(1, 2).reshape(x.shape[0], self.dim, self.grid, self.grid)

    def forward(self, token_map: torch.Tensor, mask_ratio: float | None = None) -> dict[str, torch.Tensor]:
        """Training pass.

        Args:
            token_map: encoder tokens [B,C,g,g].
            mask_ratio: fraction of tokens masked; None uses the configured ratio.

        Returns:
            `feature` (CLS of the masked pass [B,C]), `z` (projector output [B,P]), `tokens`
            (reconstructed [B,C,g,g]), `image` (decoded [B,3,128,128]).
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, ids_restore = self.encode(token_map.flatten(2).transpose(1, 2), ratio)
        rec = self.decode(latent, ids_restore)
        return {"feature": latent[:, 0], "z": self.project(rec), "tokens": rec, "image": self.image_decoder(rec)}

    def project(self, decoded: torch.Tensor) -> torch.Tensor:
        """z = Linear(GAP(decoded token map)), as `MAE.py` computes it: [B,C,g,g] → [B,P]."""
        return self.projector(decoded.mean(dim=(2, 3)))
