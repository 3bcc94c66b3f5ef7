import torch

from dorl.config import ModelConfig
from dorl.pretrained import build_pretrained


def test_tinyvit_model_with_shared_weights_segments_real_cells(tinyvit_weights, decoder_weights, cell_batch):
    config = ModelConfig(cae_depth=1, cae_decoder_depth=1)
    model, loaded = build_pretrained(config)
    assert loaded["encoder"] == str(tinyvit_weights)
    assert "re-initialised" in loaded["decoder"]  # 2 mask tokens instead of SAM's 4
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(cell_batch[:2]).permute(0, 3, 1, 2).float())
    assert out["feature"].shape == (2, 320) and out["mask_logits"].shape == (2, 2, 56, 56)
    assert torch.isfinite(out["mask_logits"]).all()
