"""The analyzer on the tiny artifact and real cells: values, per-cell errors, batching, non-finite outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dorl.artifacts import write_manifest
from dorl.data.images import load_rgb, resize_square
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import MAX_BATCH, Analyzer, CellResult
from dorl.runtime.base import BaseRunner
from dorl.runtime.onnxrt import OnnxRuntimeRunner
from dorl.runtime.postprocess import cell_mask

pytest.importorskip("onnxruntime", reason="the analyzer tests run the tiny artifact with onnxruntime")


class PoisonRunner(BaseRunner):
    """Runs the real artifact, then writes NaN into one output of one batch row."""

    def __init__(self, inner: OnnxRuntimeRunner, output: str, row: int) -> None:
        super().__init__(list(inner.input_specs.values()), list(inner.output_specs.values()), name="poison")
        self.inner, self.output, self.row = inner, output, row

    def activate_impl(self) -> None:
        self.inner.activate()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.inner.infer(feed)
        outputs[self.output].reshape(outputs[self.output].shape[0], -1)[self.row, 0] = np.nan
        return outputs

    def deactivate_impl(self) -> None:
        self.inner.deactivate()


def test_results_match_the_graph_computed_in_numpy(tiny_artifact, cell_images: list[Path]) -> None:
    with Analyzer(tiny_artifact.folder, threads=1, check_cells=False) as analyzer:
        results = analyzer.analyze(cell_images)
    rgbs = [load_rgb(p) for p in cell_images]
    expected = tiny_artifact.reference(np.stack([resize_square(rgb, 224) for rgb in rgbs]))
    assert [r.source for r in results] == [str(p) for p in cell_images]
    for i, (result, rgb) in enumerate(zip(results, rgbs)):
        assert result.ok and isinstance(result, CellResult) and result.status in ("ok", "uncertain")
        assert list(result.probs) == tiny_artifact.class_names
        np.testing.assert_allclose(list(result.probs.values()), expected["probs"][i], atol=1e-4)
        assert result.label == tiny_artifact.class_names[int(np.argmax(expected["probs"][i]))]
        assert result.uncertain == (expected["probs"][i].max() < 0.5)
        np.testing.assert_allclose(result.feature, expected["feature"][i], atol=1e-4)
        assert result.mask is not None and result.mask.shape == rgb.shape[:2] and result.mask.dtype == bool
        assert result.mask_lowres is not None and result.mask_lowres.shape == (56, 56) and result.size_hw == rgb.shape[:2]
        reference_mask = cell_mask(expected["mask_logits"][i], rgb.shape[:2])
        assert np.mean(result.mask != reference_mask) < 1e-3  # float32 vs float64 at the 0.5 boundary


def test_mask_finds_the_dark_cell_in_a_synthetic_image(tiny_artifact) -> None:
    image = np.full((120, 160, 3), 230, np.uint8)  # pale background
    image[20:80, 40:100] = (90, 40, 120)  # a dark purple "cell"
    image[100:110, 140:150] = (90, 40, 120)  # a smaller dark speck, dropped by the largest component
    with Analyzer(tiny_artifact.folder) as analyzer:
        (result,) = analyzer.analyze([image])
    expected = np.zeros((120, 160), bool)
    expected[20:80, 40:100] = True
    assert result.mask is not None and result.mask.shape == (120, 160)
    assert np.mean(result.mask != expected) < 0.01 and not result.mask[105, 145]


def test_bad_images_fail_alone(tiny_artifact, cell_images: list[Path], tmp_path: Path) -> None:
    data = cell_images[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image")
    with Analyzer(tiny_artifact.folder) as analyzer:
        results = analyzer.analyze([cell_images[0], tmp_path / "cut.jpg", tmp_path / "notes.jpg"])
    assert len(results) == 3 and [r.ok for r in results] == [True, False, False]
    assert "truncated or corrupt" in results[1].error and "not an image" in results[2].error
    for failed in results[1:]:
        assert failed.label is None and failed.probs == {} and failed.mask is None and failed.feature is None
        assert failed.confidence is None
    assert results[0].label is not None and results[0].source == str(cell_images[0])


class CountingRunner(OnnxRuntimeRunner):
    """The real runner, recording the batch size of every call."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.calls: list[int] = []

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(len(next(iter(feed.values()))))
        return super().infer_impl(feed)


def test_misuse_is_refused_or_contained(tiny_artifact, cell_images: list[Path]) -> None:
    with Analyzer(tiny_artifact.folder) as analyzer:
        results = analyzer.analyze([cell_images[0], "frame\0.jpg", cell_images[1]])
        assert [r.ok for r in results] == [True, False, True] and "NUL character" in results[1].error
        for one in (str(cell_images[0]), cell_images[0], cell_images[0].read_bytes(), load_rgb(cell_images[0]), None):
            with pytest.raises(ConfigError, match="not one image: pass \\[image\\]"):
                analyzer.analyze(one)  # type: ignore[arg-type]
        stacked = np.stack([resize_square(load_rgb(p), 224) for p in cell_images[:2]])
        assert len(analyzer.analyze(stacked)) == 2  # an N x H x W x C array is a batch
    for size in (1.5, "8", None, True):
        with pytest.raises(ConfigError, match="batch_size must be a whole number"):
            Analyzer(tiny_artifact.folder, batch_size=size)  # type: ignore[arg-type]
    runner = CountingRunner(tiny_artifact.folder)
    with Analyzer.from_runner(runner, tiny_artifact.class_names, batch_size=np.int64(3)) as analyzer:
        many = analyzer.analyze_batch([cell_images[0]] * 8)
    assert len(many) == 8 and max(runner.calls) == 3  # split into calls of at most batch_size


def test_batching_keeps_order_and_values(tiny_artifact, cell_images: list[Path]) -> None:
    sources = [cell_images[0], b"", *cell_images[1:], cell_images[0].read_bytes()]
    with Analyzer(tiny_artifact.folder, batch_size=8) as analyzer:
        together = analyzer.analyze(sources)
    with Analyzer(tiny_artifact.folder, batch_size=3) as analyzer:
        chunked = list(analyzer.iter_analyze(iter(sources)))
    assert len(together) == len(chunked) == len(sources)
    assert [r.ok for r in chunked] == [True, False] + [True] * (len(sources) - 2)
    assert chunked[-1].source.endswith("bytes>")
    for a, b in zip(together, chunked):
        assert a.source == b.source and a.label == b.label
        if a.ok:
            np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-4)
    np.testing.assert_allclose(list(chunked[0].probs.values()), list(chunked[-1].probs.values()), atol=1e-4)


def test_threshold_sets_uncertainty(tiny_artifact, cell_images: list[Path]) -> None:
    with Analyzer(tiny_artifact.folder, threshold=1.0) as analyzer:
        assert all(r.uncertain and r.label is not None for r in analyzer.analyze(cell_images[:2]))
    with Analyzer(tiny_artifact.folder, threshold=0.0) as analyzer:
        assert not any(r.uncertain for r in analyzer.analyze(cell_images[:2]))


def dark_cell(height: int = 64, width: int = 64) -> np.ndarray:
    """A pale frame with a dark purple square in the middle: a cell to the tiny graph's mask."""
    image = np.full((height, width, 3), 225, np.uint8)
    image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (90, 40, 120)
    return image


@pytest.mark.parametrize("output", ["logits", "feature", "mask_logits"])
def test_non_finite_outputs_never_get_a_label(tiny_artifact, output: str) -> None:
    runner = PoisonRunner(OnnxRuntimeRunner(tiny_artifact.folder), output, row=1)
    image = dark_cell()
    with Analyzer.from_runner(runner, tiny_artifact.class_names) as analyzer:
        good, poisoned, other = analyzer.analyze([image, image, image])
    assert poisoned.status == "failed" and poisoned.label is None and poisoned.uncertain
    assert "not finite" in poisoned.error and poisoned.mask is None
    assert good.status in ("ok", "uncertain") and good.label is not None and other.label == good.label
    assert good.mask is not None


def test_from_runner_checks_the_contract(tiny_artifact) -> None:
    runner = OnnxRuntimeRunner(tiny_artifact.folder)
    with pytest.raises(ArtifactError, match="outputs 5 classes but names 2"):
        Analyzer.from_runner(runner, ["a", "b"])
    with pytest.raises(ConfigError, match="batch_size must be a whole number of at least 1"):
        Analyzer.from_runner(runner, tiny_artifact.class_names, batch_size=0)
    with pytest.raises(ConfigError, match="threshold must be within"):
        Analyzer.from_runner(runner, tiny_artifact.class_names, threshold=1.5)
    analyzer = Analyzer.from_runner(runner, tiny_artifact.class_names)
    assert analyzer.image_size == 224 and analyzer.input_name == "images"
    with analyzer:
        assert runner.is_active
    assert not runner.is_active
    # an engine's optimisation profile caps the batch; so does the memory cap, whatever is asked
    assert Analyzer.from_runner(runner, tiny_artifact.class_names, batch_size=8, max_batch=2).batch_size == 2
    assert Analyzer.from_runner(runner, tiny_artifact.class_names, batch_size=10_000).batch_size == MAX_BATCH
    with pytest.raises(ConfigError, match="needs the class names"):
        Analyzer(runner)


def test_artifact_that_is_not_runnable(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "cell.png")
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        Analyzer(tmp_path)
    write_manifest(tmp_path, "bundle", ["cell.png"])
    with pytest.raises(ArtifactError, match="'bundle' artifact, which cannot be run"):
        Analyzer(tmp_path)
