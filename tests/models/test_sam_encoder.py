import torch

from dorl.models.sam_encoder import SAM_VIT_SPECS, sam_vit


def test_test_preset_shapes_at_224_and_256():
    enc = sam_vit("sam_vit_test").eval()
    with torch.no_grad():
        tokens, neck = enc(torch.randn(2, 3, 224, 224))
    assert tokens.shape == (2, 96, 14, 14) and neck.shape == (2, 256, 14, 14)
    enc = sam_vit("sam_vit_test", img_size=256).eval()
    with torch.no_grad():
        tokens, neck = enc(torch.randn(1, 3, 256, 256))
    assert tokens.shape == (1, 96, 16, 16) and neck.shape == (1, 256, 16, 16)


def test_forward_matches_segment_anything_neck():
    enc = sam_vit("sam_vit_test").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _, neck = enc(x)
        reference = super(type(enc), enc).forward(x)  # ImageEncoderViT.forward
    assert torch.equal(neck, reference)


def test_vit_b_spec_and_rel_pos_sizes():
    spec = SAM_VIT_SPECS["sam_vit_b"]
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.global_attn_indexes) == (768, 12, 12, (2, 5, 8, 11))
    enc = sam_vit("sam_vit_test")
    assert enc.blocks[1].attn.rel_pos_h.shape == (27, 24)  # global block at a 14×14 grid
    assert enc.blocks[0].attn.rel_pos_h.shape == (27, 24)  # window 14
    assert enc.pos_embed.shape == (1, 14, 14, 96)
