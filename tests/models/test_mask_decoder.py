import torch

from dorl.checkpoints import load_decoder
from dorl.models.mask_decoder import CellMaskDecoder


def test_no_prompt_decoder_shapes_and_batch_independence():
    torch.manual_seed(0)
    dec = CellMaskDecoder(grid=14, image_size=224, num_mask_channels=2).eval()
    emb = torch.randn(3, 256, 14, 14)
    with torch.no_grad():
        out = dec(emb)
        single = dec(emb[1:2])
    assert out.shape == (3, 2, 56, 56)
    assert torch.allclose(out[1:2], single, atol=1e-5)  # each cell decoded on its own


def test_equals_segment_anything_decoder_with_empty_prompts(decoder_weights):
    dec = CellMaskDecoder(grid=14, image_size=224, num_mask_channels=4).eval()
    report = load_decoder(dec, decoder_weights)
    assert report.reinitialised == []  # 4 mask tokens: every pretrained tensor fits
    emb = torch.randn(1, 256, 14, 14)
    with torch.no_grad():
        sparse, dense = dec.prompt_encoder(points=None, boxes=None, masks=None)
        masks, _ = dec.mask_decoder(emb, dec.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
        ours = dec(emb)
    assert torch.allclose(ours[:, 1:], masks, atol=1e-4)


def test_two_channel_decoder_reports_reinitialised_tensors(decoder_weights):
    dec = CellMaskDecoder(grid=14, image_size=224, num_mask_channels=2)
    report = load_decoder(dec, decoder_weights)
    assert "mask_decoder.mask_tokens.weight" in report.reinitialised
    assert "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight" in report.loaded
    assert "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight" in report.unused
    assert "re-initialised" in report.summary()
