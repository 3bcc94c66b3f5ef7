"""LoRA with peft on the encoder's fused qkv projections, and merging into plain weights.

peft adapts whole `nn.Linear` modules, but SAM and TinyViT fuse q, k and v into one
`qkv` Linear, and DoRL adapts only q and v (rank 4, no scaling). So each fused `qkv` is
first split into three Linears (`SplitQKV`: `qkv.q`, `qkv.k`, `qkv.v`) with identical
output; peft then targets any subset of them (and any other Linear by name). After
`merge_lora`, the parts are fused back into one Linear, so a merged encoder has the
original architecture and state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from dorl.config import LoraConfig


def qkv_row_indices(dim: int, num_heads: int, layout: str) -> dict[str, torch.Tensor]:
    """Rows of a fused qkv weight [3*dim, in] that belong to q, k and v.

    Args:
        dim: output width of each of q, k, v.
        num_heads: attention heads.
        layout: "qkv_major" ([all q | all k | all v], SAM) or "per_head" ([q_h,k_h,v_h] per head, TinyViT).
    """
    if layout == "qkv_major":
        return {p: torch.arange(i * dim, (i + 1) * dim) for i, p in enumerate("qkv")}
    if layout == "per_head":
        head_dim = dim // num_heads
        base = torch.arange(num_heads) * 3 * head_dim
        offs = torch.arange(head_dim)
        return {p: (base[:, None] + i * head_dim + offs[None, :]).reshape(-1) for i, p in enumerate("qkv")}
    raise ValueError(f"unknown qkv layout {layout!r}")


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears (q, k, v) giving the same output."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    order: torch.Tensor
    inverse: torch.Tensor

    def __init__(self, fused: nn.Linear, num_heads: int, layout: str) -> None:
        super().__init__()
        dim = fused.out_features // 3
        rows = qkv_row_indices(dim, num_heads, layout)
        has_bias = fused.bias is not None
        for part, idx in rows.items():
            linear = nn.Linear(fused.in_features, dim, bias=has_bias)
            linear.to(device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(fused.weight[idx])
                if has_bias:
                    linear.bias.copy_(fused.bias[idx])
            linear.weight.requires_grad_(fused.weight.requires_grad)
            setattr(self, part, linear)
        order = torch.cat([rows["q"], rows["k"], rows["v"]])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.identity = bool(torch.equal(order, torch.arange(order.numel())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)
        return y if self.identity else y[..., self.inverse]

    def fuse(self) -> nn.Linear:
        """One Linear equal to this module (the parts must be plain Linears, i.e. merged)."""
        parts = [getattr(self, p) for p in "qkv"]
        if not all(type(p) is nn.Linear for p in parts):
            raise RuntimeError("merge the LoRA adapters (merge_lora) before fusing qkv")
        weight = torch.cat([p.weight for p in parts])[self.inverse]
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
        fused.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(weight)
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([p.bias for p in parts])[self.inverse])
        return fused


def _attention_modules(encoder: nn.Module) -> list[nn.Module]:
    return [m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), (nn.Linear, SplitQKV))]


def split_qkv(encoder: nn.Module) -> None:
    """Replace every fused `qkv` Linear of `encoder` by a SplitQKV, in place."""
    layout = str(getattr(encoder, "qkv_layout"))  # noqa: B009  (a str; nn.Module types attributes as Tensor | Module)
    for attn in _attention_modules(encoder):
        if isinstance(attn.qkv, nn.Linear):
            attn.qkv = SplitQKV(attn.qkv, num_heads=int(getattr(attn, "num_heads")), layout=layout)  # noqa: B009


def fuse_qkv(encoder: nn.Module) -> None:
    """Inverse of split_qkv, in place (after merging)."""
    for attn in _attention_modules(encoder):
        if isinstance(attn.qkv, SplitQKV):
            attn.qkv = attn.qkv.fuse()


def apply_lora(encoder: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap `encoder` with peft LoRA adapters as `config` says; everything else is frozen.

    Args:
        encoder: a SamEncoder or TinyViT (anything with `qkv_layout` and `attn.qkv` Linears).
        config: rank, alpha, qkv parts and extra module names.

    Returns:
        The peft-wrapped encoder (a `peft.PeftModel`); call `merge_lora` on it to get plain weights.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    split_qkv(encoder)
    targets = [f"qkv.{p}" for p in config.parts] + list(config.extra_modules)
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
    )
    return get_peft_model(encoder, peft_config)


def is_lora(encoder: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(encoder, PeftModel)


def merge_lora(encoder: nn.Module) -> nn.Module:
    """Merge LoRA adapters into plain weights and fuse qkv back; returns the plain encoder."""
    if is_lora(encoder):
        encoder = encoder.merge_and_unload()  # type: ignore[operator]
    fuse_qkv(encoder)
    for p in encoder.parameters():
        p.requires_grad_(True)
    return encoder
