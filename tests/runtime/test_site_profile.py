"""Site profiles (issue 7) on the tiny artifact with a host-side head and real cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dorl.artifacts import read_manifest, write_manifest
from dorl.data.images import load_rgb, resize_square
from dorl.errors import ArtifactError
from dorl.runtime.adapt import adapt_site
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.head import HEAD_FILE, softmax
from dorl.runtime.site_profile import RunningStats, SiteProfileError, load_profile, save_profile


def _features(tiny, paths):
    return tiny.reference(np.stack([resize_square(load_rgb(p), 224) for p in paths]))["feature"]


@pytest.fixture(scope="module")
def adapted_artifact(tiny_artifact, wbc_root, tmp_path_factory) -> Path:
    """A copy of the tiny artifact with head.safetensors and pbc feature statistics."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("site") / "tiny"
    shutil.copytree(tiny_artifact.folder, folder)
    source = _features(tiny_artifact, sorted((wbc_root / "pbc" / "neutrophil").glob("*.jpg"))[:40])
    save_file({"head.fc.weight": np.ascontiguousarray(tiny_artifact.w_head.T), "head.fc.bias": tiny_artifact.b_head,
               "source.mean": source.mean(0).astype(np.float32), "source.std": source.std(0, ddof=1).astype(np.float32),
               "source.cov": np.cov(source, rowvar=False).astype(np.float32)}, str(folder / HEAD_FILE))
    manifest = read_manifest(folder)
    fields = {k: v for k, v in manifest.items() if k not in ("files", "folder", "format_version", "kind", "created")}
    write_manifest(folder, "onnx", ["model.onnx", HEAD_FILE], **{**fields, "head": {"kind": "linear"}})
    return folder


def test_running_stats_match_numpy_in_any_chunking():
    x = np.random.default_rng(0).normal(3, 2, (101, 5))
    stats = RunningStats(5)
    for chunk in np.array_split(x, 7):
        stats.update(chunk)
    assert stats.n == 101
    assert np.allclose(stats.mean, x.mean(0)) and np.allclose(stats.cov, np.cov(x, rowvar=False))


@pytest.mark.parametrize("method", ["standardise", "coral", "mean"])
def test_adapted_site_features_take_the_source_statistics(adapted_artifact, wbc_root, method):
    cells = sorted((wbc_root / "bccd").rglob("*.jpg"))[:50]
    profile = adapt_site(adapted_artifact, cells, "bccd", method=method, min_cells=20)
    assert profile.stats.n == 50 and profile.method == method
    head_source = read_manifest(adapted_artifact)
    from dorl.runtime.head import load_head

    _, source = load_head(head_source)
    mapped = profile.apply(profile.stats.mean[None, :].astype(np.float32))[0]
    assert np.allclose(mapped, source["mean"], atol=1e-4)  # the site mean lands on the source mean


def test_analyzer_applies_the_profile_before_the_head(adapted_artifact, tiny_artifact, wbc_root, tmp_path):
    cells = sorted((wbc_root / "bccd").rglob("*.jpg"))[:30]
    profile = adapt_site(adapted_artifact, cells, "bccd", min_cells=20)
    save_profile(profile, tmp_path / "profile")
    with Analyzer(adapted_artifact, site=tmp_path / "profile") as analyzer:
        results = analyzer.analyze(cells[:4])
    features = _features(tiny_artifact, cells[:4])
    expected = softmax((features @ profile.a.T + profile.b) @ tiny_artifact.w_head + tiny_artifact.b_head)
    got = np.array([[r.probs[c] for c in tiny_artifact.class_names] for r in results])
    assert np.allclose(got, expected, atol=1e-4)


def test_guard_rails(adapted_artifact, tiny_artifact, wbc_root, tmp_path):
    cells = sorted((wbc_root / "bccd").rglob("*.jpg"))
    with pytest.raises(SiteProfileError, match="at least 50"):
        adapt_site(adapted_artifact, cells[:10], "bccd")
    profile = adapt_site(adapted_artifact, cells[:25], "bccd", min_cells=20)
    save_profile(profile, tmp_path / "p")
    grown = adapt_site(adapted_artifact, cells[25:50], "bccd", min_cells=20, update=tmp_path / "p")
    assert grown.stats.n == 50  # running statistics: the profile grows as cells arrive
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    with pytest.raises(ArtifactError, match="made for another model"):
        load_profile(tmp_path / "p", artifact_sha256="f" * 64)
    assert manifest["n_cells"] == 25 and manifest["site"] == "bccd"
    with pytest.raises(ArtifactError, match="no host-side head"):
        adapt_site(tiny_artifact.folder, cells[:25], "bccd", min_cells=20)


def test_wildly_off_cells_are_warned_about(adapted_artifact, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(25):  # saturated noise: not blood cells
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"noise{i}.png")
    warnings: list[str] = []
    adapt_site(adapted_artifact, tmp_path, "noise", min_cells=20, warn=warnings.append)
    assert any("standard deviations" in w for w in warnings)


def test_cli_adapt_then_predict_with_site(adapted_artifact, wbc_root, tmp_path):
    import typer
    from typer.testing import CliRunner

    from dorl.commands.adapt import adapt
    from dorl.commands.predict import predict

    app = typer.Typer()
    app.command("adapt")(adapt)
    app.command("predict")(predict)
    folder = wbc_root / "bccd"
    result = CliRunner().invoke(app, ["adapt", str(adapted_artifact), "--cells", str(folder), "-o",
                                      str(tmp_path / "site"), "--min-cells", "20"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "manifest.json").is_file()
    image = min(folder.rglob("*.jpg"))
    result = CliRunner().invoke(app, ["predict", str(adapted_artifact), str(image), "--json", "--site",
                                      str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[0])["label"] is not None


def test_the_command_line_defaults_are_the_library_default() -> None:
    import inspect

    from dorl.commands.adapt import adapt
    from dorl.commands.evaluate import evaluate
    from dorl.runtime.site_profile import DEFAULT_METHOD

    # typer needs literal defaults (the CLI does not import numpy at start-up): keep them in step
    assert inspect.signature(adapt).parameters["method"].default == DEFAULT_METHOD
    assert inspect.signature(evaluate).parameters["adapt_methods"].default == DEFAULT_METHOD
