"""`torchrun --nproc_per_node 2 -m dorl.cli train` (gloo, CPU) on the bundled sample, against one process.

Both runs train every stage (LoRA-SAM, token cache, CAE, head) on the package's two sample labs
with the same global batches and seed; the two-process bundle loads and carries what one process
writes, to float32 rounding (15 min on 2 cores at load 20).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from distributed_runs import free_port

from dorl.paths import ASSETS_DIR

pytestmark = pytest.mark.slow

SAMPLE = ASSETS_DIR / "sample"
TRAIN = ["train", "-d", f"pbc={SAMPLE / 'pbc'}", "-d", f"bccd={SAMPLE / 'bccd'}", "--encoder", "sam_vit_test",
         "--epochs-seg", "1", "--epochs-cae", "1", "--cpu-schedule", "--head", "logreg", "--device", "cpu"]


def _run(command: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([*command, *TRAIN, "-o", str(out)], env=env, capture_output=True, text=True, timeout=3600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("torchrun")
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port()), "-m", "dorl.cli"], folder / "two")
    _run([sys.executable, "-m", "dorl.cli"], folder / "one")
    return folder / "one" / "bundle", folder / "two" / "bundle", two


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["metadata"]


def test_two_processes_write_one_bundle_that_loads(runs: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    from dorl.bundle import load_bundle

    _, two, done = runs
    assert done.stdout.count(str(two)) == 1  # rank 0 alone reports
    meta = _metadata(two)
    assert meta["processes"] == 2 and meta["stages_run"] == ["seg", "cae", "head"]
    assert sorted(p.name for p in (two.parent / "tokens").glob("*.safetensors")) == ["bccd.safetensors",
                                                                                      "pbc.safetensors"]
    assert load_bundle(two).config.class_names == load_bundle(runs[0]).config.class_names


def test_losses_and_weights_equal_one_process(runs: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    from safetensors.numpy import load_file

    one, two, _ = runs
    a, b = _metadata(one), _metadata(two)
    assert b["seg"]["losses"] == pytest.approx(a["seg"]["losses"], rel=1e-5)
    assert b["cae"]["losses"] == {k: pytest.approx(v, rel=1e-4) for k, v in a["cae"]["losses"].items()}
    assert b["seg"]["holdout"] == {k: {m: pytest.approx(v, abs=1e-4) for m, v in s.items()}
                                   for k, s in a["seg"]["holdout"].items()}
    first, second = load_file(str(one / "weights.safetensors")), load_file(str(two / "weights.safetensors"))
    assert first.keys() == second.keys()
    for name, value in first.items():
        if name.startswith("head."):  # a logistic regression at 100 % training accuracy: its scale is loose
            continue
        np.testing.assert_allclose(second[name], value, rtol=0, atol=1e-2, err_msg=name)


def test_the_two_bundles_classify_the_sample_alike(runs: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    from dorl.bundle import load_bundle
    from dorl.export.parity import prepare_images, run_torch

    one, two, _ = runs
    cells = sorted(str(p) for p in (SAMPLE / "bccd").rglob("*.jpg"))[::3]
    images = prepare_images(cells, 224)
    first, second = run_torch(load_bundle(one), images), run_torch(load_bundle(two), images)
    agree = np.mean(first["probs"].argmax(1) == second["probs"].argmax(1))
    assert agree >= 0.95, f"top-1 agreement {agree:.2f} on {len(cells)} bccd cells"
    np.testing.assert_allclose(second["feature"], first["feature"], rtol=0, atol=0.05)
