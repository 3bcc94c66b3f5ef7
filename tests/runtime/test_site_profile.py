"""Site profiles (issue 7) on the tiny artifact with a host-side head and real cells."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from headed_artifact import SAMPLE, tiny_features, with_head
from manifests import edit_manifest

from dorl.artifacts import read_manifest, write_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.adapt import adapt_site
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.postprocess import softmax
from dorl.runtime.site_profile import RunningStats, SiteProfileError, describe, load_profile, save_profile


@pytest.fixture(scope="module")
def adapted_artifact(tiny_artifact, wbc_root, tmp_path_factory) -> Path:
    """A copy of the tiny artifact with head.safetensors and pbc feature statistics."""
    folder = tmp_path_factory.mktemp("site") / "tiny"
    return with_head(tiny_artifact, folder, sorted((wbc_root / "pbc" / "neutrophil").glob("*.jpg"))[:40])


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
    features = tiny_features(tiny_artifact, cells[:4])
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


def test_noise_is_refused_as_a_site(adapted_artifact, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(25):  # saturated noise: not blood cells
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"noise{i}.png")
    with pytest.raises(SiteProfileError, match=r"moves a feature by \d+ standard deviations, above 50"):
        adapt_site(adapted_artifact, tmp_path, "noise", min_cells=20)


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
                                      str(tmp_path / "site"), "--no-cell-check"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[0])
    assert record["label"] is not None and record["site"] == "bccd"


def test_the_command_line_defaults_are_the_library_default() -> None:
    import inspect

    from dorl.commands.adapt import adapt
    from dorl.commands.evaluate import evaluate
    from dorl.runtime.site_profile import DEFAULT_METHOD

    # typer needs literal defaults (the CLI does not import numpy at start-up): keep them in step
    assert inspect.signature(adapt).parameters["method"].default == DEFAULT_METHOD
    assert inspect.signature(evaluate).parameters["adapt_methods"].default == DEFAULT_METHOD


# -- guard rails, made from the attacks seen in the field ----------------------------------------------


@pytest.fixture(scope="module")
def sample_artifact(tiny_artifact, tmp_path_factory) -> Path:
    """The tiny artifact with a host-side head and the bundled pbc sample's feature statistics."""
    folder = tmp_path_factory.mktemp("guard") / "tiny"
    return with_head(tiny_artifact, folder, sorted((SAMPLE / "pbc").rglob("*.jpg")))


@pytest.fixture(scope="module")
def bccd_profile(sample_artifact, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bccd_profile") / "site"
    save_profile(adapt_site(sample_artifact, SAMPLE / "bccd", "bccd", min_cells=20), folder)
    return folder


def tamper(profile: Path, folder: Path, arrays: dict | None = None, fields: dict | None = None) -> Path:
    """A copy of `profile` with arrays or manifest fields replaced, its hashes rewritten (as an attacker would)."""
    shutil.copytree(profile, folder)
    with np.load(folder / "profile.npz") as data:
        content = {k: data[k] for k in data.files}
    content.update(arrays or {})
    for key in [k for k, v in content.items() if v is None]:
        del content[key]
    np.savez(folder / "profile.npz", **content)
    manifest = json.loads((folder / "manifest.json").read_text())
    kept = {k: v for k, v in manifest.items() if k not in ("files", "format_version", "kind", "created")}
    kept.update(fields or {})
    finite = {k: v for k, v in kept.items() if v is not None and not (isinstance(v, float) and not math.isfinite(v))}
    write_manifest(folder, "site-profile", ["profile.npz"], **finite)
    # write_manifest never records NaN/Infinity: such a field is put in by hand, as a forger would
    edit_manifest(folder, lambda m: m.update({k: v for k, v in kept.items() if v is not None and k not in finite}))
    return folder


def test_a_profile_file_that_is_not_an_archive_is_refused(bccd_profile, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bccd_profile, bad)
    (bad / "profile.npz").write_bytes(b"PK not a zip archive at all")
    kept = {k: v for k, v in json.loads((bad / "manifest.json").read_text()).items()
            if k not in ("files", "format_version", "kind", "created")}
    write_manifest(bad, "site-profile", ["profile.npz"], **kept)  # hashes that match: only the content is wrong
    with pytest.raises(SiteProfileError, match="cannot be read .*run `dorl adapt` again"):
        load_profile(bad)


def test_copies_of_one_image_never_make_a_profile(sample_artifact, tmp_path):
    from PIL import Image, PngImagePlugin

    cell = min((SAMPLE / "bccd" / "neutrophil").glob("*.jpg"))
    (tmp_path / "same").mkdir()
    for i in range(60):
        shutil.copy(cell, tmp_path / "same" / f"copy_{i:02d}.jpg")
    for method in ("mean", "standardise", "coral"):
        with pytest.raises(SiteProfileError, match="only 1 distinct usable cells"):
            adapt_site(sample_artifact, tmp_path / "same", "copies", method=method, min_cells=1)
    (tmp_path / "reencoded").mkdir()
    rgb = Image.open(cell).convert("RGB")
    for i in range(60):  # the same pixels, different bytes: the hashes differ, the features do not
        info = PngImagePlugin.PngInfo()
        info.add_text("copy", str(i))
        rgb.save(tmp_path / "reencoded" / f"copy_{i:02d}.png", pnginfo=info)
    for method in ("mean", "standardise"):
        with pytest.raises(SiteProfileError, match="barely differ from each other"):
            adapt_site(sample_artifact, tmp_path / "reencoded", "copies", method=method, min_cells=1)


def test_coral_needs_far_more_than_three_cells(sample_artifact):
    cells = sorted((SAMPLE / "bccd" / "neutrophil").glob("*.jpg"))[:3]
    with pytest.raises(SiteProfileError, match="only 3 distinct usable cells .*; the coral map needs at least 50"):
        adapt_site(sample_artifact, cells, "bccd", method="coral", min_cells=1)
    with pytest.raises(SiteProfileError, match="the mean map needs at least 20"):
        adapt_site(sample_artifact, cells, "bccd", method="mean", min_cells=1)
    with pytest.raises(SiteProfileError, match="unknown adaptation method 'median'"):
        adapt_site(sample_artifact, cells, "bccd", method="median")
    with pytest.raises(ConfigError, match="no/such does not exist: give the site's cell images"):
        adapt_site(sample_artifact, SAMPLE / "no" / "such", "bccd")


@pytest.mark.parametrize("arrays,fields,message", [
    ({"b": np.full(8, 1e30)}, None, "moves a feature by .*e\\+3. standard deviations"),
    ({"a": np.eye(8) * 1e8}, None, "scales features by 1e\\+08"),
    ({"a": np.full((8, 8), np.nan)}, None, "NaN or infinite"),
    ({"b": np.array([np.inf] * 8)}, None, "NaN or infinite"),
    ({"stats_mean": np.full(8, np.nan)}, None, "not finite"),
    ({"b": None}, None, "lacks or mis-shapes its arrays"),
    ({"a": np.eye(3)}, None, "mis-shapes"),
    (None, {"drift": "high"}, "no valid 'drift'"),
    (None, {"drift": float("nan")}, "'drift' = nan"),
    (None, {"site": None}, "no valid 'site'"),
    (None, {"n_cells": 7}, "do not match its manifest"),
    (None, {"method": "magic"}, "unknown method 'magic'"),
])
def test_profiles_that_cannot_be_trusted_are_refused(sample_artifact, bccd_profile, tmp_path, arrays, fields,
                                                     message):
    bad = tamper(bccd_profile, tmp_path / "bad", arrays, fields)
    with pytest.raises(SiteProfileError, match=message):
        load_profile(bad)
    with pytest.raises(SiteProfileError, match=message):
        Analyzer(sample_artifact, site=bad)
    with pytest.raises(SiteProfileError, match=message):
        adapt_site(sample_artifact, SAMPLE / "bccd", "bccd", update=bad, min_cells=20)


def test_update_counts_each_cell_once_and_says_so(sample_artifact, bccd_profile):
    warnings: list[str] = []
    again = adapt_site(sample_artifact, SAMPLE / "bccd", "bccd", update=bccd_profile, min_cells=20,
                       warn=warnings.append)
    original = load_profile(bccd_profile)
    assert again.stats.n == original.stats.n == 51 and len(again.seen) == 51
    assert any("51 cells were already counted" in w for w in warnings)
    assert json.loads(describe(again))["cells"] == 51
    with pytest.raises(SiteProfileError, match="of site 'bccd', not 'jtsc'"):
        adapt_site(sample_artifact, SAMPLE / "bccd", "jtsc", update=bccd_profile)


def test_the_wrong_lab_profile_is_warned_about_and_recorded(sample_artifact, bccd_profile):
    warnings: list[str] = []
    with Analyzer(sample_artifact, site=bccd_profile, warn=warnings.append) as analyzer:
        pbc = analyzer.analyze(sorted((SAMPLE / "pbc" / "neutrophil").glob("*.jpg")))
    assert len(warnings) == 1 and "looks like the wrong profile" in warnings[0] and "'bccd'" in warnings[0]
    assert {r.site for r in pbc} == {"bccd"}
    warnings.clear()
    with Analyzer(sample_artifact, site=bccd_profile, warn=warnings.append) as analyzer:
        analyzer.analyze(sorted((SAMPLE / "bccd").rglob("*.jpg")))
    assert warnings == []  # its own lab: no warning


def _cli():
    import typer

    from dorl.commands.adapt import adapt

    app = typer.Typer()
    app.command("adapt")(adapt)
    app.command("other")(lambda: None)
    return app


def test_adapt_never_writes_over_its_artifact_or_a_locked_folder(sample_artifact, tmp_path):
    import subprocess
    import sys
    import textwrap

    from typer.testing import CliRunner

    before = {p.name: p.read_bytes() for p in sample_artifact.iterdir()}
    result = CliRunner().invoke(_cli(), ["adapt", str(sample_artifact), "--cells", str(SAMPLE / "bccd"), "-o",
                                         str(sample_artifact), "--min-cells", "20", "--overwrite"])
    assert result.exit_code == 1 and "input" in result.stderr
    assert {p.name: p.read_bytes() for p in sample_artifact.iterdir()} == before
    target = tmp_path / "site"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from dorl.safe_write import output_lock
        with output_lock({str(target)!r}):
            print("locked", flush=True)
            sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        result = CliRunner().invoke(_cli(), ["adapt", str(sample_artifact), "--cells", str(SAMPLE / "bccd"), "-o",
                                             str(target), "--min-cells", "20"])
        assert result.exit_code == 1 and f"another dorl process (pid {holder.pid})" in result.stderr
    finally:
        holder.communicate(b"", timeout=60)
    assert not target.exists()


def test_update_in_place_killed_mid_write_leaves_the_old_profile(sample_artifact, bccd_profile, tmp_path):
    import subprocess
    import sys
    import textwrap

    profile = tmp_path / "site"
    shutil.copytree(bccd_profile, profile)
    before = {p.name: p.read_bytes() for p in profile.iterdir()}
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from dorl.runtime.site_profile import load_profile, save_profile

        def dying_savez(path, **arrays):
            with open(path, "wb") as f:
                f.write(b"PK half an archive")
            os.kill(os.getpid(), signal.SIGKILL)

        np.savez = dying_savez
        save_profile(load_profile({str(profile)!r}), {str(profile)!r}, overwrite=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr
    assert {p.name: p.read_bytes() for p in profile.iterdir()} == before
    assert load_profile(profile).stats.n == 51
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli(), ["adapt", str(sample_artifact), "--cells", str(SAMPLE / "bccd"), "--update",
                                         str(profile), "-o", str(profile), "--min-cells", "20"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cells"] == 51 and "already counted" in result.stderr


def test_cells_far_from_the_source_without_a_profile_are_warned_about(sample_artifact):
    warnings: list[str] = []
    with Analyzer(sample_artifact, warn=warnings.append) as analyzer:
        analyzer.analyze(sorted((SAMPLE / "bccd").rglob("*.jpg"))[:24])
    assert len(warnings) == 1 and "make a site profile for this lab with `dorl adapt`" in warnings[0]
    warnings.clear()
    with Analyzer(sample_artifact, warn=warnings.append) as analyzer:
        analyzer.analyze(sorted((SAMPLE / "pbc").rglob("*.jpg"))[:24])
    assert warnings == []  # the source lab itself


def test_updating_another_sites_profile_says_how_to_go_on(sample_artifact, bccd_profile):
    with pytest.raises(SiteProfileError, match="is of site 'bccd', not 'jtsc': update it with cells of 'bccd' "
                                               r"\(--site bccd\), or write a new profile for 'jtsc' without --update"):
        adapt_site(sample_artifact, SAMPLE / "bccd", "jtsc", update=bccd_profile)


def test_a_profile_is_made_from_files_only(sample_artifact):
    from dorl.data.images import load_rgb

    cells = sorted((SAMPLE / "bccd").rglob("*.jpg"))
    with pytest.raises(ConfigError, match="image files or folders .*not from ndarray data: save the site's images"):
        adapt_site(sample_artifact, [load_rgb(cells[0])], "bccd", min_cells=1)
    profile = adapt_site(sample_artifact, (p for p in cells), "bccd")  # a generator is read once
    assert profile.stats.n == len(cells)
