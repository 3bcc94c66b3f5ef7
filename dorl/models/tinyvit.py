"""TinyViT-5M image encoder in the MobileSAM layout (parameter names match `image_encoder.*`).

The architecture and key names follow `shared/weights/README.md` (MobileSAM's
`tiny_vit_sam.py`, built as in `build_sam_vit_t`), without the unused classifier head. The
token grid is `img_size // 16` on each side: /4 patch embedding, two stride-2 merges, then a
stride-1 merge into the 320-d stage.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class Conv2d_BN(nn.Module):
    """Conv2d without bias followed by BatchNorm2d, stored as `c` and `bn`."""

    def __init__(self, in_ch: int, out_ch: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, ks, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """Two 3x3 stride-2 convolutions: [B,3,S,S] -> [B,dim,S/4,S/4]."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, depthwise 3x3, 1x1 project) on NCHW maps."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2d_BN(dim, hidden)
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2d_BN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv2(self.act(self.conv1(x))))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2, or 1 into MobileSAM's wide stages), 1x1 conv; NCHW."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        # MobileSAM keeps the 1/16 grid by not downsampling into its 320/448/576-d stages.
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def attention_bias_index(window_size: int) -> torch.Tensor:
    """Index of the learned bias for each (query, key) pair of a window, as in TinyViT.

    Args:
        window_size: side of the square window.

    Returns:
        Long tensor [ws*ws, ws*ws]; entry (i, j) numbers the offset (|dr|, |dc|) between
        positions i and j in order of first appearance (row-major).
    """
    points = list(itertools.product(range(window_size), range(window_size)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return torch.tensor(idxs, dtype=torch.long).view(len(points), len(points))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over one window, with learned relative biases."""

    qkv_layout = "per_head"  # qkv output rows grouped per head as [q_h, k_h, v_h]
    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        n_offsets = window_size * window_size
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("attention_bias_idxs", attention_bias_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        # Indexed on every call (never cached) so biases loaded after eval() are always used.
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """LayerNorm -> fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local conv, MLP; tokens as [B,H,W,C]."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float):
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.local_conv = Conv2d_BN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Zero padding without an attention mask, as MobileSAM does: padded tokens are attended to.
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then a patch merge; NCHW in and out."""

    def __init__(self, dim: int, out_dim: int, depth: int, expand_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """A transformer stage, optionally followed by a patch merge; NCHW in and out."""

    def __init__(
        self, dim: int, out_dim: int | None, depth: int, num_heads: int, window_size: int, mlp_ratio: float
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (SAM's neck norm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm exports as one LayerNormalization node, which the FP16 graph can pin to FP32.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck.

    `forward` takes a SAM-normalised image batch [B,3,S,S] (S a multiple of 16) and returns
    `(tokens, neck)`: the pre-neck token map [B,320,S/16,S/16] and the neck [B,256,S/16,S/16].
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ):
        super().__init__()
        self.img_size = img_size
        self.grid = img_size // 16
        self.embed_dim = embed_dims[-1]
        self.out_chans = out_chans
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        stages: list[nn.Module] = [ConvLayer(embed_dims[0], embed_dims[1], depths[0], mbconv_expand_ratio)]
        for i in range(1, len(embed_dims)):
            out_dim = embed_dims[i + 1] if i + 1 < len(embed_dims) else None
            stages.append(
                BasicLayer(embed_dims[i], out_dim, depths[i], num_heads[i], window_sizes[i], mlp_ratio)
            )
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(self.embed_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x, self.neck(x)


def tinyvit_5m(img_size: int = 224) -> TinyViT:
    """TinyViT-5M as configured by MobileSAM's `build_sam_vit_t` (weights not loaded).

    Args:
        img_size: square input side, a multiple of 16 (224 for DoRL, 1024 for SAM).

    Returns:
        A randomly initialised `TinyViT`.
    """
    return TinyViT(img_size=img_size)
