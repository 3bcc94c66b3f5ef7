"""`fit_non_cells`: the tiny artifact taught, from real cells and platelet images, to answer "no cell"."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from headed_artifact import PLATELETS, SAMPLE, tiny_features, with_head

from dorl.artifacts import read_manifest, write_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.cell_check import MIN_STAIN_KEY, NonCellDiscriminant
from dorl.runtime.cell_check import QUANTILE as DEFAULT_QUANTILE
from dorl.runtime.head import load_head
from dorl.runtime.non_cell import fit_non_cells
from dorl.runtime.site_profile import artifact_id
from dorl.safe_write import OutputError

CELLS = sorted((SAMPLE / "pbc").rglob("*.jpg"))  # 80 real white cells of the platelets' lab
BCCD = sorted((SAMPLE / "bccd").rglob("*.jpg"))  # 51 of another lab
FIT, HELD = sorted(PLATELETS.glob("*.jpg"))[:10], sorted(PLATELETS.glob("*.jpg"))[10:]
# The tiny graph's 8 features of the mean colour part platelets from cells far less than a trained
# encoder does (scores 1.1-2.2 where the TinyViT's reach 2.3 and more): a looser quantile.
QUANTILE = 0.9
REASON_STAIN, REASON_SIDE = "stained (purple) region covers", "towards the images without a white cell"


@pytest.fixture(scope="module")
def headed(tiny_artifact, tmp_path_factory) -> Path:
    return with_head(tiny_artifact, tmp_path_factory.mktemp("headed") / "tiny", CELLS)


@pytest.fixture(scope="module")
def floored(headed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("floored") / "tiny-stain"
    fit_non_cells(headed, out, cells=CELLS)
    return out


@pytest.fixture(scope="module")
def taught(headed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("taught") / "tiny-non-cells"
    fit_non_cells(headed, out, non_cells=FIT, quantile=QUANTILE)
    return out


def _fields(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("files", "folder", "format_version", "kind", "created")}


def test_the_stain_floor_refuses_platelets_and_keeps_both_labs_cells(headed, floored) -> None:
    before, after = read_manifest(headed), read_manifest(floored)
    floor = after["non_cell"]["stain_floor"]
    assert floor["cells"] == 80 and floor["unreadable"] == 0 and 0.025 < floor["min_share"] < 0.035
    assert "discriminant" not in after["non_cell"] and after["non_cell"]["quantile"] == DEFAULT_QUANTILE
    _, source = load_head(after)
    assert float(source[MIN_STAIN_KEY][0]) == pytest.approx(floor["min_share"], rel=1e-6)
    assert artifact_id(after) == artifact_id(before)  # site profiles of the original still apply
    with Analyzer(headed) as plain, Analyzer(floored) as analyzer:
        unfloored = plain.analyze(FIT + HELD)
        platelets, cells, bccd = analyzer.analyze(FIT + HELD), analyzer.analyze(CELLS), analyzer.analyze(BCCD)
    assert all(r.status != "no_cell" for r in unfloored) and all(r.stain_area is None for r in unfloored)
    assert all(r.status == "no_cell" and r.label is None for r in platelets)  # 12 of 12, none of them fitted on
    (why,) = platelets[0].no_cell
    assert REASON_STAIN in why and f"below the {floor['min_share']:.1%} of the source lab's smallest" in why
    assert sum(REASON_STAIN in " ".join(r.no_cell) for r in cells) == 1  # the 0.5 % quantile of 80: the smallest one
    # another lab's cells (refused by distance here, without a site profile) stay above the floor: tighter crops
    assert sum(REASON_STAIN in " ".join(r.no_cell) for r in bccd) <= 1
    assert all(r.stain_area is not None and 0 < r.stain_area < 1 for r in cells)


def test_the_discriminant_records_the_fit_and_keeps_the_rest(headed, taught, tiny_artifact) -> None:
    before, after = read_manifest(headed), read_manifest(taught)  # verified: hashes, digest, class names
    disc = after["non_cell"]["discriminant"]
    assert disc["images"] == 10 and disc["skipped"] == 0 and disc["threshold"] == pytest.approx(1.2816, abs=1e-4)
    assert after["non_cell"]["derived_from"] == before["files"]["model.onnx"]["sha256"]
    assert after["class_names"] == before["class_names"] and "stain_floor" not in after["non_cell"]
    (head_before, source_before), (head_after, source_after) = load_head(before), load_head(after)
    for key in ("mean", "std", "cov"):
        np.testing.assert_array_equal(source_before[key], source_after[key])
    np.testing.assert_array_equal(head_before.weights["fc.weight"], head_after.weights["fc.weight"])
    discriminant = NonCellDiscriminant.from_source(source_after)
    assert discriminant is not None and NonCellDiscriminant.from_source(source_before) is None
    # the recorded direction is the one fitted on the platelets' features from the graph itself
    assert np.mean(discriminant(tiny_features(tiny_artifact, FIT)) > discriminant.threshold) >= 0.8
    with Analyzer(taught) as analyzer:
        platelets, cells = analyzer.analyze(FIT + HELD), analyzer.analyze(CELLS)
    refused = [r for r in platelets if r.status == "no_cell"]
    assert len(refused) >= 9 and all(r.label is None and REASON_SIDE in " ".join(r.no_cell) for r in refused)
    assert all(r.non_cell_score is not None and r.non_cell_score > 1.28 for r in refused)
    assert sum(r.status == "no_cell" for r in cells) <= 2  # the source lab's own cells keep their labels


def test_refusals_come_before_any_image_is_read(headed, tiny_artifact, tmp_path) -> None:
    with pytest.raises(ConfigError, match="give the source lab's white cells"):
        fit_non_cells(headed, tmp_path / "none")
    with pytest.raises(ConfigError, match="5 non-cell images given; at least 10 images that hold no white cell"):
        fit_non_cells(headed, tmp_path / "few", non_cells=FIT[:5])
    with pytest.raises(ConfigError, match="3 source cells given; at least 10 white cells"):
        fit_non_cells(headed, tmp_path / "few", cells=CELLS[:3])
    with pytest.raises(ArtifactError, match="carries no host-side head"):
        fit_non_cells(tiny_artifact.folder, tmp_path / "headless", non_cells=FIT)
    with pytest.raises(OutputError, match="lies inside the input"):
        fit_non_cells(headed, headed / "inside", non_cells=FIT)
    with pytest.raises(OutputError, match="lies inside the input"):
        fit_non_cells(headed, PLATELETS / "out", non_cells=FIT, inputs=[PLATELETS])
    with pytest.raises(ConfigError, match="quantile must be at least 0.5 and below 1"):
        fit_non_cells(headed, tmp_path / "q", non_cells=FIT, quantile=1.0)
    grey = [np.full((224, 224, 3), 200, np.uint8)] * 12  # no stained region at all: not stained white cells
    with pytest.raises(ConfigError, match="stain floor cannot be set from these cells .*no stained"):
        fit_non_cells(headed, tmp_path / "grey", cells=grey)
    assert not any(tmp_path.iterdir())


def test_an_existing_artifact_is_replaced_only_with_overwrite(headed, tmp_path) -> None:
    out = tmp_path / "derived"
    fit_non_cells(headed, out, non_cells=FIT)
    first = (out / "head.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already holds a dorl onnx artifact"):
        fit_non_cells(headed, out, non_cells=FIT)
    assert (out / "head.safetensors").read_bytes() == first
    fit_non_cells(headed, out, non_cells=FIT + HELD, cells=CELLS, overwrite=True)
    fitted = read_manifest(out)["non_cell"]
    assert fitted["discriminant"]["images"] == 12 and fitted["stain_floor"]["cells"] == 80


@pytest.mark.parametrize(("key", "value", "match"), [
    ("source.noncell_weight", np.ones(3, np.float32), "\"no cell\" check recorded in .* non-cell discriminant has 3 weights for 8"),
    (f"source.{MIN_STAIN_KEY}", np.array([1.5], np.float32), "\"no cell\" check recorded in .* stain floor 1.5"),
])
def test_a_malformed_recorded_check_is_refused_with_a_sentence(taught, tmp_path, key, value, match) -> None:
    from safetensors.numpy import load_file, save_file

    broken = Path(shutil.copytree(taught, tmp_path / "broken"))
    tensors = load_file(str(broken / "head.safetensors"))
    tensors[key] = value
    save_file(tensors, str(broken / "head.safetensors"))
    manifest = read_manifest(broken, verify=False)
    write_manifest(broken, "onnx", list(manifest["files"]), **_fields(manifest))
    with pytest.raises(ArtifactError, match=match):
        Analyzer(broken)
