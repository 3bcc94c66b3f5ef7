"""The suite's own rules, run on a small suite in a subprocess: shared-data tests are deselected and
named where the shared folder is absent; with DORL_FAIL_ON_SKIP=1 only gpu/tensorrt tests may skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dorl.paths import shared_dir

SUPPORT = Path(__file__).parent / "support"
SUITE = '''
import pytest

def test_runs():
    pass

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("no GPU here")

@pytest.mark.shared_data
def test_needs_the_shared_folder():
    pass

def test_of_the_message_without_tensorrt():
    pytest.skip("TensorRT is installed here: the message shown without it cannot be seen")
'''


def run_suite(tmp_path: Path, extra: str, strict: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE + extra)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])}
    env.pop("DORL_FAIL_ON_SKIP", None)
    if strict:
        env["DORL_FAIL_ON_SKIP"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "skip_policy", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("strict", [False, True])
def test_only_hardware_tests_may_skip(tmp_path: Path, strict: bool) -> None:
    other = '\ndef test_skips_for_data():\n    pytest.skip("the data is not beside this checkout")\n'
    done = run_suite(tmp_path, other, strict)
    assert ("1 tests skipped for a reason other than a missing GPU or TensorRT" in done.stdout) == strict
    assert (done.returncode == 1) == strict, done.stdout
    assert "test_skips_for_data: Skipped: the data is not beside this checkout" in done.stdout or not strict


def test_a_hardware_skip_passes_and_shared_data_tests_are_named(tmp_path: Path) -> None:
    done = run_suite(tmp_path, "", strict=True)
    assert done.returncode == 0, done.stdout
    if shared_dir() is None:
        assert "1 tests need the project's shared folder" in done.stdout
        assert "test_suite.py::test_needs_the_shared_folder" in done.stdout and "1 deselected" in done.stdout
    else:
        assert "2 passed, 2 skipped" in done.stdout
