"""Feature extraction on real cells with a tiny model: documented shapes and values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sample_data import MASKED

from dorl.config import ModelConfig
from dorl.contract import load_cells
from dorl.models.registry import build_model
from dorl.training.features import cae_features, encode_cells, extract_features, pooled_tokens
from dorl.training.progress import RecordingReporter

TINY = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


@pytest.fixture(scope="module")
def ten_cells(wbc_dir: Path) -> list[Path]:
    """Ten real cells of the three labs (different sizes and formats)."""
    paths = []
    for domain, count in (("pbc", 4), ("bccd", 3), (MASKED, 3)):
        paths += sorted((wbc_dir / domain / "neutrophil").iterdir())[:count]
    return paths


def test_shapes_batches_and_progress(model, ten_cells: list[Path]) -> None:
    reporter = RecordingReporter()
    features = extract_features(model, ten_cells, batch_size=4, keep_tokens=True, reporter=reporter, task="cells")
    assert len(features) == 10
    assert [(e[0], e[2]) for e in reporter.events] == [
        ("start", 10), ("advance", {"steps": 4}), ("advance", {"steps": 4}), ("advance", {"steps": 2}), ("finish", None)]
    assert features.cls.shape == (10, 96) and features.cls.dtype == np.float32
    assert features.pooled.shape == (10, 96) and features.tokens.shape == (10, 96, 14, 14)
    assert features.tokens.dtype == np.float16 and np.isfinite(features.cls).all()
    np.testing.assert_allclose(features.pooled, pooled_tokens(features.tokens, batch_size=3), atol=2e-3)
    np.testing.assert_allclose(pooled_tokens(torch.from_numpy(features.tokens)), pooled_tokens(features.tokens))
    assert np.linalg.matrix_rank(features.pooled) > 5  # different cells give different features
    without = extract_features(model, ten_cells[:3], batch_size=2)
    assert without.tokens is None
    np.testing.assert_allclose(without.cls, features.cls[:3], rtol=1e-4, atol=1e-4)  # batching does not matter


def test_features_equal_the_model_forward_and_cached_tokens(model, ten_cells: list[Path]) -> None:
    cells = load_cells(ten_cells[:3], 224)
    assert cells.shape == (3, 224, 224, 3) and cells.dtype == np.uint8
    tokens, _, cls = encode_cells(model, cells)
    with torch.no_grad():
        forward = model(torch.from_numpy(cells).permute(0, 3, 1, 2).float())
    torch.testing.assert_close(cls, forward["feature"])
    from_cache = cae_features(model.cae, tokens.numpy().astype(np.float16), batch_size=2)
    np.testing.assert_allclose(from_cache, cls.numpy(), atol=5e-2)  # float16 tokens: small rounding only
    assert from_cache.shape == (3, 96)


def test_no_paths_give_empty_arrays(model) -> None:
    empty = extract_features(model, [], keep_tokens=True)
    assert empty.cls.shape == (0, 96) and empty.pooled.shape == (0, 96) and empty.tokens.shape == (0, 96, 14, 14)
