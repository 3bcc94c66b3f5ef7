"""Test-time augmentation in the analyzer: the classifying pass on every flip, probabilities averaged.

The tiny graph's feature is the image's mean colour, which no flip changes, so these tests run the
tiny ONNX graph with its feature (and so logits and probabilities) recomputed from the image's
top-left quadrant: a graph whose answer depends on the orientation, as a real encoder's does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.contract import TTA_MODES, VIEWS, tta_views, view
from dorl.data.framing import FramingConfig
from dorl.data.images import load_rgb, resize_square
from dorl.errors import ConfigError
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.base import BaseRunner
from dorl.runtime.cell_framing import frame_batch
from dorl.runtime.onnxrt import OnnxRuntimeRunner
from dorl.runtime.options import AnalyzerOptions
from dorl.runtime.postprocess import softmax

pytest.importorskip("onnxruntime", reason="the analyzer runs the tiny artifact with onnxruntime")


@pytest.fixture(scope="module")
def adapted_artifact(tiny_artifact, wbc_root, tmp_path_factory) -> Path:
    """A copy of the tiny artifact with head.safetensors and pbc feature statistics."""
    from headed_artifact import with_head

    folder = tmp_path_factory.mktemp("tta") / "tiny"
    return with_head(tiny_artifact, folder, sorted((wbc_root / "pbc" / "neutrophil").glob("*.jpg"))[:40])


def quadrant_outputs(tiny, images: np.ndarray) -> dict[str, np.ndarray]:
    """feature, logits, probs of the tiny head on how the top-left quadrant's mean colour differs from the
    image's (times 8, so that the orientation moves the answer), in numpy."""
    q, x = images.shape[1] // 2, images.astype(np.float64) / 255.0
    colour = 8.0 * (x[:, :q, :q].mean(axis=(1, 2)) - x.mean(axis=(1, 2)))
    feature = np.tanh(colour @ tiny.w_feature + tiny.b_feature)
    logits = feature @ tiny.w_head + tiny.b_head
    return {"feature": feature.astype(np.float32), "logits": logits.astype(np.float32),
            "probs": softmax(logits).astype(np.float32)}


class QuadrantRunner(BaseRunner):
    """The tiny ONNX graph (masks from the whole image), its feature from the top-left quadrant; keeps every feed."""

    def __init__(self, tiny) -> None:
        self.inner, self.tiny = OnnxRuntimeRunner(tiny.folder), tiny
        super().__init__(list(self.inner.input_specs.values()), list(self.inner.output_specs.values()), "quadrant")
        self.feeds: list[np.ndarray] = []

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = next(iter(feed.values()))
        self.feeds.append(images.copy())
        return {**self.inner.infer(feed), **quadrant_outputs(self.tiny, images)}

    def deactivate_impl(self) -> None:
        self.inner.deactivate()


def pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([resize_square(load_rgb(p), 224) for p in paths])


def probs_of(results, names) -> np.ndarray:
    return np.array([[r.probs[c] for c in names] for r in results])


def test_views_are_the_input_and_its_three_flips() -> None:
    cells = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    assert tta_views("none") == ("plain",) and tta_views("flips") == VIEWS
    np.testing.assert_array_equal(view(cells, "plain"), cells)
    np.testing.assert_array_equal(view(cells, "flip_h"), cells[:, :, ::-1])
    np.testing.assert_array_equal(view(cells, "flip_v"), cells[:, ::-1])
    np.testing.assert_array_equal(view(cells, "flip_hv"), np.rot90(cells, 2, axes=(1, 2)))
    assert view(cells, "flip_hv").flags.c_contiguous
    with pytest.raises(ValueError, match="unknown view 'rot90'"):
        view(cells, "rot90")
    with pytest.raises(ValueError, match="choose among none, flips"):
        tta_views("rotations")


def test_flips_average_the_four_views_in_calls_within_the_max_batch(tiny_artifact, cell_images) -> None:
    runner = QuadrantRunner(tiny_artifact)
    images = cell_images[:3]
    with Analyzer(runner, class_names=tiny_artifact.class_names, batch_size=8, max_batch=2, tta="flips",
                  check_cells=False) as analyzer:
        results = analyzer.analyze(images)
    # two batches (2 + 1 images), each: the plain pass, then one call per flip of the same input
    assert [len(f) for f in runner.feeds] == [2, 2, 2, 2, 1, 1, 1, 1]
    for first, flipped in zip(runner.feeds[0:4], VIEWS):
        np.testing.assert_array_equal(first, view(runner.feeds[0], flipped))
    data = pixels(images)
    expected = np.mean([quadrant_outputs(tiny_artifact, view(data, v))["probs"] for v in VIEWS], axis=0)
    got = probs_of(results, tiny_artifact.class_names)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = quadrant_outputs(tiny_artifact, data)
    assert np.abs(got - plain["probs"]).max() > 0.01  # the orientation matters to this graph
    assert [r.label for r in results] == [tiny_artifact.class_names[i] for i in expected.argmax(axis=1)]
    for result, feature in zip(results, plain["feature"]):  # the record's feature is the plain view's
        np.testing.assert_allclose(result.feature, feature, atol=1e-5)


def test_without_tta_one_call_per_batch_as_before(tiny_artifact, cell_images) -> None:
    runner = QuadrantRunner(tiny_artifact)
    with Analyzer.from_runner(runner, tiny_artifact.class_names) as analyzer:
        results = analyzer.analyze(cell_images[:3])
    assert len(runner.feeds) == 1
    np.testing.assert_allclose(probs_of(results, tiny_artifact.class_names),
                               quadrant_outputs(tiny_artifact, pixels(cell_images[:3]))["probs"], atol=1e-5)


def test_a_cell_centric_analyzer_flips_the_crops_of_pass_two(tiny_artifact, cell_images) -> None:
    pytest.importorskip("scipy", reason="the pseudo-mask crop needs scipy")
    runner = QuadrantRunner(tiny_artifact)
    framing = FramingConfig("cell", "pseudo", 0.1)
    with Analyzer(runner, class_names=tiny_artifact.class_names, framing=framing, tta="flips",
                  check_cells=False) as analyzer:
        results = analyzer.analyze(cell_images[:2])
    crops, _, _ = frame_batch([load_rgb(p) for p in cell_images[:2]], None, framing, 224)
    assert len(runner.feeds) == 5  # pass 1 on the whole images, pass 2 on the crops and their three flips
    np.testing.assert_array_equal(runner.feeds[0], pixels(cell_images[:2]))
    for fed, name in zip(runner.feeds[1:], VIEWS):
        np.testing.assert_array_equal(fed, view(crops, name))
    expected = np.mean([quadrant_outputs(tiny_artifact, view(crops, v))["probs"] for v in VIEWS], axis=0)
    np.testing.assert_allclose(probs_of(results, tiny_artifact.class_names), expected, atol=1e-5)


def test_a_site_profile_maps_every_view_before_the_head(adapted_artifact, tiny_artifact, wbc_root, tmp_path,
                                                        monkeypatch) -> None:
    from dorl.runtime import analyzer as analyzer_module
    from dorl.runtime.adapt import adapt_site
    from dorl.runtime.site_profile import save_profile

    cells = sorted((wbc_root / "bccd").rglob("*.jpg"))[:30]
    profile = adapt_site(adapted_artifact, cells, "bccd", min_cells=20)
    save_profile(profile, tmp_path / "profile")
    monkeypatch.setattr(analyzer_module, "load_runner", lambda *a, **k: QuadrantRunner(tiny_artifact))
    with Analyzer(adapted_artifact, site=tmp_path / "profile", tta="flips") as analyzer:
        results = analyzer.analyze(cells[:4])
    data = pixels(cells[:4])
    expected = np.mean([softmax((quadrant_outputs(tiny_artifact, view(data, v))["feature"] @ profile.a.T + profile.b)
                                @ tiny_artifact.w_head + tiny_artifact.b_head) for v in VIEWS], axis=0)
    np.testing.assert_allclose(probs_of(results, tiny_artifact.class_names), expected, atol=1e-4)


def test_an_unknown_mode_is_refused_everywhere_with_the_choices(tiny_artifact) -> None:
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'rot'.*none, flips"):
        Analyzer(tiny_artifact.folder, tta="rot")
    with pytest.raises(ConfigError, match="unknown --tta 'rot'.*none, flips"):
        AnalyzerOptions(tiny_artifact.folder, tta="rot").check_values()
    from dorl.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="'rot' is not one of none, flips"):
        ServeConfig(tta="rot")
    assert set(TTA_MODES) == {"none", "flips"}


def test_predict_tta_flips_from_the_command_line(tiny_artifact, cell_images) -> None:
    import json

    from typer.testing import CliRunner

    from dorl.cli import app

    args = ["predict", str(tiny_artifact.folder), *map(str, cell_images[:2]), "--json", "--no-cell-check"]
    plain = CliRunner().invoke(app, args)
    flipped = CliRunner().invoke(app, [*args, "--tta", "flips"])
    assert plain.exit_code == flipped.exit_code == 0, flipped.output
    # the tiny graph reads the mean colour, which no flip changes: the same probabilities, four passes
    for a, b in zip(plain.stdout.splitlines(), flipped.stdout.splitlines()):
        pa, pb = json.loads(a)["probs"], json.loads(b)["probs"]
        assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-5 for k in pa)
    refused = CliRunner().invoke(app, [*args, "--tta", "rot"])
    assert refused.exit_code == 1 and "unknown --tta 'rot'" in refused.output


def test_the_artifact_records_the_default_and_an_explicit_mode_wins(tiny_artifact, tmp_path) -> None:
    import shutil

    from manifests import edit_manifest

    from dorl.errors import ArtifactError

    with Analyzer(tiny_artifact.folder) as analyzer:
        assert analyzer.tta == "none"  # an artifact that records none: made before dorl recorded it
    folder = Path(shutil.copytree(tiny_artifact.folder, tmp_path / "flips"))
    edit_manifest(folder, lambda m: m.update(tta="flips"))
    assert Analyzer(folder).tta == "flips"
    assert Analyzer(folder, tta="none").tta == "none"
    assert AnalyzerOptions(folder).open(8).tta == "flips" and AnalyzerOptions(folder, tta="none").open(8).tta == "none"
    edit_manifest(folder, lambda m: m.update(tta="rot90"))
    with pytest.raises(ArtifactError, match="records an unknown test-time augmentation 'rot90'.*re-export"):
        Analyzer(folder)
