"""Fixtures shared by every test package: real cell images and the pretrained weights, all from
what the package bundles (`dorl/assets`), so that a fresh clone runs every test.

Two hooks keep the suite honest:
- tests marked `shared_data` use the project's shared folder (`../shared` or `$DORL_SHARED_DIR`)
  for coverage the repository cannot carry (the jtsc expert masks, under GPL terms; the
  reference TinyViT ONNX encoder); where it is absent they are deselected, and the summary
  names them;
- with `DORL_FAIL_ON_SKIP=1` (set by `.ci/run`), a skipped test that is not marked `gpu` or
  `tensorrt` fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED, build_test_data

from dorl.paths import DECODER_WEIGHTS, TINYVIT_WEIGHTS, find_weights, shared_dir, wbc_data_dir

HARDWARE_MARKERS = ("gpu", "tensorrt")
_deselected: list[str] = []
_bad_skips: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shared_dir() is not None:
        return
    kept = [item for item in items if item.get_closest_marker("shared_data") is None]
    dropped = [item for item in items if item.get_closest_marker("shared_data") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        _deselected.extend(item.nodeid for item in dropped)
        items[:] = kept


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not any(marker in report.keywords for marker in HARDWARE_MARKERS):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if _deselected:
        terminalreporter.write_line(f"{len(_deselected)} tests need the project's shared folder (../shared: the jtsc "
                                    "expert masks, the reference TinyViT encoder) and were deselected here:")
        for nodeid in _deselected:
            terminalreporter.write_line(f"  {nodeid}")
    if _bad_skips and os.environ.get("DORL_FAIL_ON_SKIP") == "1":
        terminalreporter.write_line(f"{len(_bad_skips)} tests skipped for a reason other than a missing GPU or "
                                    "TensorRT (DORL_FAIL_ON_SKIP=1):", red=True)
        for line in _bad_skips:
            terminalreporter.write_line(f"  {line}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad_skips and os.environ.get("DORL_FAIL_ON_SKIP") == "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
