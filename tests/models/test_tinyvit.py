"""TinyViT-5M (MobileSAM layout): shapes, strict loading, and parity with the reference ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch", reason="the TinyViT encoder needs torch (pip install 'dorl[train]')")

import torch

from dorl.checkpoints import load_tinyvit_weights
from dorl.errors import ArtifactError
from dorl.models.tinyvit import TinyViT, attention_bias_index, tinyvit_5m
from dorl.paths import ASSETS_DIR, TINYVIT_WEIGHTS, find_weights, shared_dir

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
PBC_CELLS = ("neutrophil/BNE_174448.jpg", "neutrophil/BNE_381862.jpg")  # of the bundled sample


@pytest.fixture(scope="module")
def weights_path(tinyvit_weights: Path) -> Path:
    return tinyvit_weights


@pytest.fixture(scope="module")
def pbc_images() -> list[np.ndarray]:
    return [np.asarray(Image.open(ASSETS_DIR / "sample" / "pbc" / name).convert("RGB")) for name in PBC_CELLS]


@pytest.fixture(scope="module")
def encoder_1024(weights_path: Path) -> TinyViT:
    model = tinyvit_5m(1024).eval()
    load_tinyvit_weights(model, weights_path)
    return model


def sam_preprocess(image: np.ndarray, size: int = 1024) -> np.ndarray:
    """SAM's preprocessing: longest side to `size`, normalise, zero-pad bottom/right; [1,3,S,S]."""
    h, w = image.shape[:2]
    s = size / max(h, w)
    new_h, new_w = int(s * h + 0.5), int(s * w + 0.5)
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32
    )
    out = np.zeros((size, size, 3), dtype=np.float32)
    out[:new_h, :new_w] = (resized - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def _file_state(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(weights_path))


def test_default_weights_found_through_env(weights_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DORL_WEIGHTS_DIR", str(weights_path.parent))
    assert find_weights(TINYVIT_WEIGHTS) == weights_path


def test_loads_every_tensor_of_the_file(weights_path: Path) -> None:
    model = tinyvit_5m(224)
    assert load_tinyvit_weights(model, weights_path) == 271
    assert sum(p.numel() for p in model.parameters()) == 5_743_892
    bn_stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert bn_stats == 9_856
    # Spot-check a value copied from the file (BN is stored as identity: running_var = 1 - 1e-5).
    assert torch.allclose(
        model.state_dict()["layers.1.blocks.0.local_conv.bn.running_var"], torch.tensor(1 - 1e-5)
    )


def test_accepts_a_state_dict_without_prefix(weights_path: Path) -> None:
    state = {k.removeprefix("image_encoder."): v for k, v in _file_state(weights_path).items()}
    model = tinyvit_5m(224)
    assert load_tinyvit_weights(model, state) == 271
    assert torch.equal(model.state_dict()["neck.0.weight"], state["neck.0.weight"])


def test_missing_key_raises(weights_path: Path) -> None:
    state = _file_state(weights_path)
    del state["image_encoder.layers.3.blocks.1.attn.qkv.weight"]
    with pytest.raises(ArtifactError, match="1 keys missing"):
        load_tinyvit_weights(tinyvit_5m(224), state)


def test_unexpected_key_raises(weights_path: Path) -> None:
    state = _file_state(weights_path)
    state["image_encoder.head.weight"] = torch.zeros(1000, 320)
    with pytest.raises(ArtifactError, match="1 unexpected"):
        load_tinyvit_weights(tinyvit_5m(224), state)


def test_shape_mismatch_raises(weights_path: Path) -> None:
    state = _file_state(weights_path)
    state["image_encoder.layers.2.blocks.0.attn.attention_biases"] = torch.zeros(5, 49)
    with pytest.raises(ArtifactError, match="shape does not match"):
        load_tinyvit_weights(tinyvit_5m(224), state)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_tinyvit_weights(tinyvit_5m(224), tmp_path / "nope.safetensors")


def test_attention_bias_index_closed_form() -> None:
    for ws in (7, 14):
        r, c = torch.arange(ws * ws) // ws, torch.arange(ws * ws) % ws
        closed = (r[:, None] - r[None]).abs() * ws + (c[:, None] - c[None]).abs()
        assert torch.equal(attention_bias_index(ws), closed)


def test_attention_exposes_qkv_layout() -> None:
    model = tinyvit_5m(224)
    attns = [m for n, m in model.named_modules() if n.endswith(".attn")]
    assert len(attns) == 10
    for attn in attns:
        assert isinstance(attn.qkv, torch.nn.Linear)
        assert attn.head_dim == 32 and attn.qkv_layout == "per_head"
        assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert "layers.1.blocks.0.attn.attention_bias_idxs" not in model.state_dict()


def test_shapes_at_224_on_real_cells(weights_path: Path, pbc_images: list[np.ndarray]) -> None:
    model = tinyvit_5m(224)
    load_tinyvit_weights(model, weights_path)
    model.eval()  # eval() after loading and before: no cached bias may differ (MobileSAM's pitfall)
    cells = [
        np.asarray(Image.fromarray(im).resize((224, 224), Image.Resampling.BILINEAR), np.float32)
        for im in pbc_images
    ]
    x = torch.from_numpy(((np.stack(cells) - PIXEL_MEAN) / PIXEL_STD).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        tokens, neck = model(x)
    assert (model.embed_dim, model.out_chans, model.grid) == (320, 256, 14)
    assert tokens.shape == (2, 320, 14, 14) and neck.shape == (2, 256, 14, 14)
    assert torch.isfinite(tokens).all() and torch.isfinite(neck).all()
    # The two cells differ, so their embeddings must too (a dead encoder would give equal ones).
    assert (tokens[0] - tokens[1]).abs().max() > 0.1


def test_no_stale_attention_bias_when_eval_precedes_loading(weights_path: Path) -> None:
    early, late = tinyvit_5m(224).eval(), tinyvit_5m(224)
    load_tinyvit_weights(early, weights_path)
    load_tinyvit_weights(late, weights_path)
    late.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(early(x)[1], late(x)[1])


@pytest.mark.shared_data
def test_parity_with_reference_onnx_at_1024(pbc_images: list[np.ndarray], encoder_1024: TinyViT) -> None:
    import onnxruntime as ort

    shared = shared_dir()
    assert shared is not None
    onnx_path = shared / "weights" / "reference_tinyvit_encoder.onnx"  # 28 MB: not bundled
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    for image in pbc_images:
        x = sam_preprocess(image)
        (expected,) = session.run(["output"], {"input": x})
        with torch.no_grad():
            tokens, neck = encoder_1024(torch.from_numpy(x))
        assert tokens.shape == (1, 320, 64, 64)
        diff = float(np.abs(neck.numpy() - expected).max())
        print(f"neck max abs diff vs ONNX: {diff:.3g} (embedding max {np.abs(expected).max():.3g})")
        assert diff < 1e-4
