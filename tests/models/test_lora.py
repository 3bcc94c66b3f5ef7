import pytest
import torch

from dorl.config import LoraConfig
from dorl.errors import ConfigError
from dorl.models.lora import SplitQKV, apply_lora, merge_lora, qkv_row_indices
from dorl.models.sam_encoder import sam_vit


def _randomise_lora(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize("layout", ["qkv_major", "per_head"])
def test_split_qkv_is_exact_and_fuses_back(layout):
    torch.manual_seed(0)
    fused = torch.nn.Linear(32, 96)
    split = SplitQKV(fused, num_heads=4, layout=layout)
    x = torch.randn(3, 5, 32)
    assert torch.allclose(split(x), fused(x), atol=1e-6)
    assert torch.equal(split.fuse().weight, fused.weight)


def test_per_head_rows_pick_q_of_each_head():
    rows = qkv_row_indices(dim=4, num_heads=2, layout="per_head")
    assert rows["q"].tolist() == [0, 1, 6, 7] and rows["v"].tolist() == [4, 5, 10, 11]


def test_zero_initialised_adapter_leaves_output_unchanged():
    enc = sam_vit("sam_vit_test").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = enc(x)[0]
        adapted = apply_lora(enc, LoraConfig()).eval()
        after = adapted(x)[0]
    assert torch.equal(before, after)


def test_dorl_adapter_is_rank4_on_q_and_v_with_scaling_1():
    adapted = apply_lora(sam_vit("sam_vit_test"), LoraConfig())
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split("qkv.")[1][0] for n in trainable} == {"q", "v"}
    lora_a = next(p for n, p in adapted.named_parameters() if "lora_A" in n)
    assert lora_a.shape[0] == 4
    layer = adapted.base_model.model.blocks[0].attn.qkv.q
    assert layer.scaling["default"] == 1.0
    # 4 blocks × (q, v) × (A: 4×96 + B: 96×4)
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == 4 * 2 * (4 * 96 + 96 * 4)


@pytest.mark.parametrize("config", [LoraConfig(), LoraConfig(rank=8, alpha=16, parts=("q", "k", "v"),
                                                              extra_modules=("proj",))])
def test_merged_equals_adapted(config):
    enc = sam_vit("sam_vit_test").eval()
    x = torch.randn(2, 3, 224, 224)
    adapted = apply_lora(enc, config).eval()
    _randomise_lora(adapted)
    with torch.no_grad():
        reference = adapted(x)[0]
        merged = merge_lora(adapted).eval()
        out = merged(x)[0]
    assert (out - reference).abs().max().item() < 1e-5
    assert type(merged.blocks[0].attn.qkv) is torch.nn.Linear  # original architecture, original keys
    assert "blocks.0.attn.qkv.weight" in merged.state_dict()


def test_bad_lora_config_is_refused():
    with pytest.raises(ConfigError, match="not among"):
        LoraConfig(parts=("x",))
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig(rank=0)
