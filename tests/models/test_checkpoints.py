import pytest
import torch
import torch.nn.functional as F

from dorl.checkpoints import load_sam_encoder, read_torch_checkpoint
from dorl.errors import ArtifactError
from dorl.models.sam_encoder import sam_vit


@pytest.fixture(scope="module")
def official_like_checkpoint(tmp_path_factory):
    """A checkpoint laid out like sam_vit_*.pth (1024 input, 64×64 grid), random weights."""
    torch.manual_seed(0)
    enc = sam_vit("sam_vit_test", img_size=1024)
    for block in enc.blocks:  # give the tables values so interpolation is visible
        torch.nn.init.normal_(block.attn.rel_pos_h)
        torch.nn.init.normal_(block.attn.rel_pos_w)
    torch.nn.init.normal_(enc.pos_embed)
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_test.pth"
    torch.save(state, path)
    return path, enc


def test_loads_at_224_with_interpolated_tables(official_like_checkpoint):
    path, source = official_like_checkpoint
    enc = sam_vit("sam_vit_test", img_size=224)
    load_sam_encoder(enc, path)
    expected = F.interpolate(source.pos_embed.permute(0, 3, 1, 2), size=(14, 14), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(enc.pos_embed, expected)
    assert source.blocks[1].attn.rel_pos_h.shape == (127, 24)  # global block in the checkpoint
    assert enc.blocks[1].attn.rel_pos_h.shape == (27, 24)
    assert torch.equal(enc.blocks[0].attn.rel_pos_h, source.blocks[0].attn.rel_pos_h)  # window table kept
    assert torch.equal(enc.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_loads_at_1024_unchanged(official_like_checkpoint):
    path, source = official_like_checkpoint
    enc = sam_vit("sam_vit_test", img_size=1024)
    load_sam_encoder(enc, path)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), source.state_dict().values()))


def test_clear_errors(tmp_path, official_like_checkpoint):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_torch_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ArtifactError, match="not a readable PyTorch checkpoint"):
        read_torch_checkpoint(junk)
    with pytest.raises(ArtifactError, match="another SAM size"):
        load_sam_encoder(sam_vit("sam_vit_b"), official_like_checkpoint[0])


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": Evil()}, path)
    with pytest.raises(ArtifactError):
        read_torch_checkpoint(path)
