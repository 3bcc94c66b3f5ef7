"""Pytest hooks that keep the suite honest on a fresh clone (imported by tests/conftest.py).

- Tests marked `shared_data` use the project's shared folder (`../shared` or `$DORL_SHARED_DIR`)
  for coverage the repository cannot carry (the jtsc expert masks, under GPL terms; the reference
  TinyViT ONNX encoder). Where it is absent they are deselected, not skipped, and the summary
  names them.
- With `DORL_FAIL_ON_SKIP=1` (set by `.ci/run`), a skipped test fails the run unless it is marked
  `gpu` or `tensorrt` or its reason is about TensorRT, a GPU or CUDA (e.g. a test of the message shown
  where TensorRT is absent skips where it is present): on a fresh clone every other test must run.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from dorl.paths import shared_dir

HARDWARE_MARKERS = ("gpu", "tensorrt")
HARDWARE_REASON = re.compile(r"tensorrt|\bgpu\b|\bcuda\b", re.IGNORECASE)
_deselected: list[str] = []
_bad_skips: list[str] = []


def _strict() -> bool:
    return os.environ.get("DORL_FAIL_ON_SKIP") == "1"


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
    if not report.skipped or any(marker in report.keywords for marker in HARDWARE_MARKERS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not HARDWARE_REASON.search(reason):
        _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _deselected:
        terminalreporter.write_line(f"{len(_deselected)} tests need the project's shared folder (../shared: the jtsc "
                                    "expert masks, the reference TinyViT encoder) and were deselected here:")
        for nodeid in _deselected:
            terminalreporter.write_line(f"  {nodeid}")
    if _bad_skips and _strict():
        terminalreporter.write_line(f"{len(_bad_skips)} tests skipped for a reason other than a missing GPU or "
                                    "TensorRT (DORL_FAIL_ON_SKIP=1):", red=True)
        for line in _bad_skips:
            terminalreporter.write_line(f"  {line}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _bad_skips and _strict() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


