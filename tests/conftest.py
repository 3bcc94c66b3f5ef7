"""Fixtures shared by every test package: real cell images and the pretrained weights, all from
what the package bundles (`dorl/assets`), so that a fresh clone runs every test.

The hooks of tests/support/skip_policy.py keep the suite honest: tests that need the project's
shared folder are deselected (and named) without it, and with `DORL_FAIL_ON_SKIP=1` a test
skipped for anything but a missing GPU or TensorRT fails the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED, build_test_data
from skip_policy import (  # noqa: F401  (pytest finds the hooks by name here)
    pytest_collection_modifyitems,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

from dorl.paths import DECODER_WEIGHTS, TINYVIT_WEIGHTS, find_weights, wbc_data_dir


@pytest.fixture(scope="session")
def wbc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labs of real cells built from the bundled sample: pbc, bccd and `masked` (see sample_data)."""
    return build_test_data(tmp_path_factory.mktemp("labs"))


@pytest.fixture(scope="session")
def shared_wbc_dir() -> Path:
    """The shared real cell images (`shared/data/wbc`): only for tests marked `shared_data`."""
    path = wbc_data_dir()
    assert path is not None, "tests marked shared_data run only where the shared folder is present"
    return path


@pytest.fixture(scope="session")
def cell_paths(wbc_dir: Path) -> list[Path]:
    """Six real cells: two per lab (pbc, bccd, masked), of different classes."""
    picks = []
    for domain, classes in (("pbc", ("neutrophil", "lymphocyte")), ("bccd", ("eosinophil", "neutrophil")),
                            (MASKED, ("monocyte", "neutrophil"))):
        for cls in classes:
            picks.append(min((wbc_dir / domain / cls).iterdir()))
    return picks


@pytest.fixture(scope="session")
def cell_batch(cell_paths: list[Path]) -> np.ndarray:
    """The six cells as uint8 [6,224,224,3], resized the way training and the runtime do."""
    from dorl.contract import load_cells

    return load_cells(cell_paths, 224)


# -- a TinyViT bundle and its exports, made once per session ------------------------------------------
EXPORT_CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
TRAIN_PER_CLASS = 8  # pbc cells per class the linear head is fitted on
HELD_OUT = 24  # labelled cells for the FP16 check and the INT8 gate
CALIBRATION = 24


def _labs(wbc_dir: Path) -> dict[str, Path]:
    return {name: wbc_dir / name for name in ("pbc", "bccd", MASKED)}


def pool_cae(model) -> None:  # type: ignore[no-untyped-def]
    """Zero the CAE's query projections so its CLS token attends to every token equally.

    An untrained CAE's CLS token barely depends on the cell (its spread across cells is a third
    of its size), so any head fitted on it magnifies noise, and INT8 flips its decisions on
    a tenth of the cells. A trained CAE's CLS summarises the cell; attending uniformly (a mean
    of the token values, as the pooled-token baseline of the evaluation) is the closest untrained stand-in.
    """
    import torch

    with torch.no_grad():
        for block in model.cae.blocks:
            dim = block.attn.proj.in_features
            block.attn.qkv.weight[:dim] = 0.0
            block.attn.qkv.bias[:dim] = 0.0


def fit_confident_head(model, wbc_dir: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """Fit the linear head (logistic regression, scaler folded in) on real pbc cells; returns their paths."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from dorl.export.parity import prepare_images, run_torch
    from dorl.models.heads import fold_scaler

    paths, labels = [], []
    for index, name in enumerate(EXPORT_CLASSES):
        files = sorted((wbc_dir / "pbc" / name).iterdir())[:TRAIN_PER_CLASS]
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    features = run_torch(model.eval(), prepare_images(paths, 224))["feature"]
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(features), labels)
    fc = model.head.fc
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(classifier.coef_).float())
        fc.bias.copy_(torch.from_numpy(classifier.intercept_).float())
    fold_scaler(fc, torch.from_numpy(scaler.mean_).float(), torch.from_numpy(scaler.scale_).float())
    return paths


@pytest.fixture(scope="session")
def tinyvit_bundle(tmp_path_factory: pytest.TempPathFactory, wbc_dir: Path, tinyvit_weights: Path,
                   decoder_weights: Path) -> tuple[Path, list[str]]:
    """The pretrained TinyViT model (CAE depth 1) with a fitted head, saved as a bundle; and its training cells."""
    import torch

    from dorl.bundle import save_bundle
    from dorl.config import ModelConfig
    from dorl.pretrained import build_pretrained

    torch.manual_seed(0)
    model, _ = build_pretrained(ModelConfig(cae_depth=1, cae_decoder_depth=1))
    pool_cae(model)
    train = fit_confident_head(model, wbc_dir)
    folder = tmp_path_factory.mktemp("bundle") / "tinyvit"
    save_bundle(model, folder)
    return folder, train


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory: pytest.TempPathFactory, wbc_dir: Path) -> Path:
    from dorl.calibration.calibration_set import write_calibration_set

    folder = tmp_path_factory.mktemp("calibration") / "set"
    write_calibration_set(_labs(wbc_dir), folder, size=CALIBRATION, seed=0)
    return folder


@pytest.fixture(scope="session")
def held_out_cells(wbc_dir: Path, calibration_dir: Path, tinyvit_bundle: tuple[Path, list[str]]) -> list[str]:
    """Labelled cells of the five classes, outside the calibration set and the head's training cells."""
    from dorl.artifacts import sha256_file
    from dorl.calibration.calibration_set import draw_cells, read_calibration_set

    seen = {c.sha256 for c in read_calibration_set(calibration_dir).cells}
    seen |= {sha256_file(p) for p in tinyvit_bundle[1]}
    cells = draw_cells(_labs(wbc_dir), size=4 * HELD_OUT, seed=7, exclude=frozenset(seen))
    picked = [c.path for c in cells if c.label in EXPORT_CLASSES]
    rng = np.random.default_rng(0)
    return [picked[i] for i in sorted(rng.choice(len(picked), HELD_OUT, replace=False))]


@pytest.fixture(scope="session")
def tinyvit_fp32(tmp_path_factory: pytest.TempPathFactory, tinyvit_bundle: tuple[Path, list[str]],
                 held_out_cells: list[str]) -> Path:
    """The verified FP32 artifact of the TinyViT bundle (exported once per session)."""
    from dorl.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(tinyvit_bundle[0], folder, precision="fp32", images=held_out_cells[:12])
    return folder


@pytest.fixture(scope="session")
def tinyvit_fp16(tmp_path_factory: pytest.TempPathFactory, tinyvit_bundle: tuple[Path, list[str]],
                 tinyvit_fp32: Path, held_out_cells: list[str]) -> Path:
    """The FP16 artifact derived from the FP32 one (exported once per session)."""
    from dorl.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("onnx") / "fp16"
    export_onnx(tinyvit_bundle[0], folder, precision="fp16", images=held_out_cells, fp32_artifact=tinyvit_fp32)
    return folder


@pytest.fixture(scope="session")
def tinyvit_int8(tmp_path_factory: pytest.TempPathFactory, tinyvit_bundle: tuple[Path, list[str]],
                 tinyvit_fp32: Path, calibration_dir: Path, held_out_cells: list[str]) -> Path:
    """The default INT8 export of the FP32 artifact (automatic float selection, every variant), gated on
    the held-out cells: the Q/DQ folder, its `-fp16` and `-cpu` siblings beside it (exported once per session)."""
    from dorl.export.int8 import Int8Settings
    from dorl.export.int8_gate import GateThresholds
    from dorl.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "int8"
    settings = Int8Settings(gate=GateThresholds(min_cells=len(held_out_cells)))
    export_onnx(tinyvit_bundle[0], out, "int8", images=held_out_cells, calibration=calibration_dir,
                fp32_artifact=tinyvit_fp32, int8=settings)
    return out


def _bundled_weights(name: str) -> Path:
    path = find_weights(name)
    assert path is not None, f"{name} is bundled in dorl/assets/weights: the checkout is incomplete"
    return path


@pytest.fixture(scope="session")
def tinyvit_weights() -> Path:
    return _bundled_weights(TINYVIT_WEIGHTS)


@pytest.fixture(scope="session")
def decoder_weights() -> Path:
    return _bundled_weights(DECODER_WEIGHTS)
