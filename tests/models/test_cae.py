import torch

from dorl.models.cae import CAE


def test_shapes_of_training_pass_and_feature():
    torch.manual_seed(0)
    cae = CAE(dim=64, grid=14, depth=2, decoder_depth=1, projector_dim=50)
    tokens = torch.randn(3, 64, 14, 14)
    out = cae(tokens)
    assert out["feature"].shape == (3, 64)
    assert out["z"].shape == (3, 50)
    assert out["tokens"].shape == (3, 64, 14, 14)
    assert out["image"].shape == (3, 3, 128, 128)
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert cae.feature(tokens).shape == (3, 64)


def test_feature_is_deterministic_and_masking_is_random():
    torch.manual_seed(0)
    cae = CAE(dim=64, grid=14, depth=2, decoder_depth=1).eval()
    tokens = torch.randn(2, 64, 14, 14)
    assert torch.equal(cae.feature(tokens), cae.feature(tokens))
    a, ids_a = cae.encode(tokens.flatten(2).transpose(1, 2), mask_ratio=0.75)
    _b, ids_b = cae.encode(tokens.flatten(2).transpose(1, 2), mask_ratio=0.75)
    assert a.shape == (2, 1 + 49, 64)  # CLS + 25 % of 196 tokens
    assert not torch.equal(ids_a, ids_b)


def test_default_depths_are_the_papers():
    cae = CAE(dim=768, grid=14)
    assert len(cae.blocks) == 12 and len(cae.decoder_blocks) == 4
    assert cae.blocks[0].attn.num_heads == 12 and cae.mask_ratio == 0.75


def test_z_is_a_projection_of_the_pooled_decoded_tokens():
    """As in DoRL's MAE.py: z = Linear(GAP(decoder output)), not a pooling of the encoder's tokens."""
    torch.manual_seed(0)
    cae = CAE(dim=64, grid=14, depth=1, decoder_depth=1, projector_dim=50).eval()
    out = cae(torch.randn(2, 64, 14, 14))
    torch.testing.assert_close(out["z"], cae.projector(out["tokens"].mean(dim=(2, 3))))


def test_image_decoder_channels_follow_the_token_width():
    from dorl.models.cae import image_decoder_channels

    assert image_decoder_channels(768) == (512, 256, 128, 64)  # DoRL's, for SAM ViT-B
    assert image_decoder_channels(320) == (216, 104, 56, 24)  # TinyViT-5M
    assert image_decoder_channels(96) == (64, 32, 16, 16)
    cae = CAE(dim=320, grid=14, depth=1, decoder_depth=1)
    assert cae.image_decoder.layers[0].out_channels == 216
