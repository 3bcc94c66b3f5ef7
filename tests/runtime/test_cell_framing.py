"""The cell-centric analyzer: pass 1 on the whole image, the cell cut out on the host, pass 2 on
the crop; flags for an empty mask and for a cell at the border (the committed tiny artifact, whose
mask fires where the image is darker than mid-grey, so crops are known in advance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from framed_artifact import SEGMENTER, with_framing
from tiny_artifact import TinyArtifact, tiny_weights

from dorl.data.framing import FramingConfig, crop_cell
from dorl.data.images import load_rgb, resize_square
from dorl.errors import ArtifactError
from dorl.manifests import read_artifact
from dorl.paths import ASSETS_DIR
from dorl.runtime import postprocess
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.cell_framing import BORDER_NOTE, EMPTY_CROP
from dorl.runtime.records import cell_record


@pytest.fixture
def framed(tiny_artifact: TinyArtifact, tmp_path: Path) -> TinyArtifact:
    return tiny_weights(with_framing(tiny_artifact.folder, tmp_path / "cell", SEGMENTER))


def disc_image(height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    """A pale field (230) holding one dark disc (60): the tiny graph's idea of a stained cell."""
    rows, cols = np.mgrid[:height, :width]
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
    image = np.full((height, width, 3), 230, np.uint8)
    image[inside] = 60
    return image


def two_pass_reference(art: TinyArtifact, rgb: np.ndarray, framing: FramingConfig) -> tuple[Any, dict[str, Any]]:
    """The crop and pass 2's outputs, computed in numpy the way the analyzer is meant to."""
    whole = art.reference(resize_square(rgb, 224)[None])
    mask = postprocess.low_res_mask(whole["mask_logits"][0].astype(np.float32))
    crop = crop_cell(rgb, mask, 224, framing.margin)
    return crop, art.reference(crop.image[None])


def test_the_manifest_records_the_framing(framed: TinyArtifact, tiny_artifact: TinyArtifact) -> None:
    assert read_artifact(framed.folder).framing == FramingConfig("cell", "segmenter", 0.1)
    assert read_artifact(tiny_artifact.folder).framing is None


def test_two_passes_classify_the_cut_out_cell(framed: TinyArtifact, tiny_artifact: TinyArtifact) -> None:
    images = [disc_image(300, 400, (120, 250), 40), disc_image(360, 363, (180, 180), 90)]
    images += [load_rgb(p) for p in sorted((ASSETS_DIR / "sample" / "pbc").rglob("*.jpg"))[:4]]
    with Analyzer(framed.folder, batch_size=4, check_cells=False) as cells, \
            Analyzer(tiny_artifact.folder, batch_size=4, check_cells=False) as whole:
        results, plain = cells.analyze(images), whole.analyze(images)
    for rgb, result, unframed in zip(images, results, plain):
        crop, expected = two_pass_reference(framed, rgb, FramingConfig(**SEGMENTER))
        assert result.crop_box == crop.box and result.touches_border is False and result.label is not None
        probs = np.array([result.probs[n] for n in framed.class_names])
        np.testing.assert_allclose(probs, expected["probs"][0], atol=3e-4)  # float32 graph vs float64 numpy
        np.testing.assert_allclose(result.feature, expected["feature"][0], atol=1e-4)
        assert result.mask is not None and result.mask.shape == rgb.shape[:2]  # the whole image's mask
        assert unframed.crop_box is None and unframed.touches_border is None
    crop_mean = np.array([results[0].probs[n] for n in framed.class_names])
    whole_mean = np.array([plain[0].probs[n] for n in framed.class_names])
    assert np.abs(crop_mean - whole_mean).max() > 1e-3  # the second pass saw the crop, not the field
    top, bottom, left, right = results[0].crop_box
    disc_top, disc_bottom, disc_left, disc_right = 80, 160, 210, 290
    assert top < disc_top and disc_bottom < bottom and left < disc_left and disc_right < right  # the disc, not the field
    assert bottom - top < 120  # the disc (80 px) and its margin, not the 300 px field


def test_a_cell_at_the_border_is_flagged_and_an_empty_mask_never_labelled(framed: TinyArtifact) -> None:
    corner = disc_image(300, 300, (0, 0), 70)
    blank = np.full((300, 300, 3), 230, np.uint8)
    with Analyzer(framed.folder, check_cells=False) as unchecked, Analyzer(framed.folder) as checked:
        edge, empty = unchecked.analyze([corner, blank])
        checked_empty = checked.analyze([blank])[0]
    assert edge.touches_border is True and BORDER_NOTE in edge.notes and edge.label is not None
    record = cell_record(edge)
    assert record["touches_border"] is True and record["crop_box"] == list(edge.crop_box)
    assert empty.status == "no_cell" and empty.no_cell == (EMPTY_CROP,) and empty.label is None
    assert empty.crop_box is None  # the whole field was never classified in the cell's place
    assert checked_empty.status == "no_cell" and "the mask is empty" in checked_empty.no_cell[0]


def test_the_pseudo_mask_framing_cuts_with_the_stain_mask(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    from dorl.data.pseudo_masks import pseudo_mask

    framing = {"input": "cell", "mask": "pseudo", "margin": 0.2}
    art = tiny_weights(with_framing(tiny_artifact.folder, tmp_path / "pseudo", framing))
    path = min((ASSETS_DIR / "sample" / "pbc").rglob("*.jpg"))
    rgb = load_rgb(path)
    with Analyzer(art.folder, check_cells=False) as analyzer:
        result = analyzer.analyze([path])[0]
    # the pseudo mask of the image resized to the input side, as training's token cache computes it
    crop = crop_cell(rgb, pseudo_mask(resize_square(rgb, 224)), 224, 0.2)
    assert result.crop_box == crop.box
    np.testing.assert_allclose([result.probs[n] for n in art.class_names], art.reference(crop.image[None])["probs"][0],
                               atol=3e-4)


def test_an_invalid_framing_is_refused(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    folder = with_framing(tiny_artifact.folder, tmp_path / "bad", {"input": "crop", "mask": "segmenter"})
    with pytest.raises(ArtifactError, match=f"the manifest in {folder} records an invalid framing"):
        Analyzer(folder)
    from dorl.manifests import parse_framing

    with pytest.raises(ArtifactError, match="^the model's metadata records an invalid framing .*: re-train or re-export"):
        parse_framing({"framing": {"input": "crop"}})  # a model's metadata names no folder


def test_predict_prints_the_crop(framed: TinyArtifact, tmp_path: Path) -> None:
    import typer
    from PIL import Image
    from typer.testing import CliRunner

    from dorl.commands.predict import predict

    Image.fromarray(disc_image(200, 260, (100, 130), 50)).save(tmp_path / "cell.png")
    Image.fromarray(disc_image(200, 260, (190, 10), 50)).save(tmp_path / "edge.png")
    app = typer.Typer()
    app.command()(predict)
    result = CliRunner().invoke(app, [str(framed.folder), str(tmp_path / "cell.png"), str(tmp_path / "edge.png"),
                                      "--json", "--no-cell-check"])
    assert result.exit_code == 0, result.output
    cell, edge = map(json.loads, result.stdout.splitlines())
    assert cell["touches_border"] is False and edge["touches_border"] is True
    top, bottom, left, right = cell["crop_box"]
    assert bottom - top == right - left and top < 50 and bottom > 150


def test_the_crop_box_is_in_the_image_pixels_when_decoded_reduced(framed: TinyArtifact, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "large.png"  # decoded at a reduced size: far larger than the 224 px input
    Image.fromarray(disc_image(2000, 1800, (1600, 1300), 150)).save(path)
    with Analyzer(framed.folder, check_cells=False) as analyzer:
        (result,) = analyzer.analyze([path])
    assert result.size_hw == (2000, 1800)
    top, bottom, left, right = result.crop_box
    assert top < 1450 and 1750 < bottom <= 2000 and left < 1150 and 1450 < right <= 1800  # around the disc
    assert bottom - top < 500  # the disc (300 px) and its margin
