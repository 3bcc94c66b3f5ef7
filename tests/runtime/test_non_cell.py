"""`fit_non_cells`: the tiny artifact taught, from real platelet images, to answer "no cell" for them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from headed_artifact import PLATELETS, SAMPLE, tiny_features, with_head

from dorl.artifacts import read_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import Analyzer
from dorl.runtime.cell_check import NonCellDiscriminant
from dorl.runtime.head import load_head
from dorl.runtime.non_cell import fit_non_cells
from dorl.runtime.site_profile import artifact_id
from dorl.safe_write import OutputError

CELLS = sorted((SAMPLE / "pbc").rglob("*.jpg"))  # 80 real white cells of the platelets' lab
FIT, HELD = sorted(PLATELETS.glob("*.jpg"))[:10], sorted(PLATELETS.glob("*.jpg"))[10:]
# The tiny graph's 8 features of the mean colour part platelets from cells far less than a trained
# encoder does (scores 1.1-2.2 where the TinyViT's reach 2.3 and more): a looser quantile.
QUANTILE = 0.9


@pytest.fixture(scope="module")
def headed(tiny_artifact, tmp_path_factory) -> Path:
    return with_head(tiny_artifact, tmp_path_factory.mktemp("headed") / "tiny", CELLS)


@pytest.fixture(scope="module")
def taught(headed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("taught") / "tiny-non-cells"
    fit_non_cells(headed, FIT, out, quantile=QUANTILE)
    return out


def test_the_derived_artifact_records_the_fit_and_keeps_the_rest(headed, taught, tiny_artifact) -> None:
    before, after = read_manifest(headed), read_manifest(taught)  # verified: hashes, digest, class names
    assert after["non_cell"]["images"] == 10 and after["non_cell"]["skipped"] == 0
    assert after["non_cell"]["quantile"] == QUANTILE and after["non_cell"]["threshold"] == pytest.approx(1.2816, abs=1e-4)
    assert after["non_cell"]["derived_from"] == before["files"]["model.onnx"]["sha256"]
    assert after["class_names"] == before["class_names"] and artifact_id(after) == artifact_id(before)
    (head_before, source_before), (head_after, source_after) = load_head(before), load_head(after)
    for key in ("mean", "std", "cov"):
        np.testing.assert_array_equal(source_before[key], source_after[key])
    np.testing.assert_array_equal(head_before.weights["fc.weight"], head_after.weights["fc.weight"])
    discriminant = NonCellDiscriminant.from_source(source_after)
    assert discriminant is not None and NonCellDiscriminant.from_source(source_before) is None
    # the recorded direction is the one fitted on the platelets' features from the graph itself
    features = tiny_features(tiny_artifact, FIT)
    assert np.mean(discriminant(features) > discriminant.threshold) >= 0.8


def test_the_taught_artifact_answers_no_cell_for_platelets_and_labels_cells(headed, taught) -> None:
    with Analyzer(headed) as plain, Analyzer(taught) as analyzer:
        before = plain.analyze(FIT + HELD)
        platelets = analyzer.analyze(FIT + HELD)
        cells = analyzer.analyze(CELLS)
    assert sum(r.status == "no_cell" for r in before) <= 2  # by distance alone they pass as cells
    refused = [r for r in platelets if r.status == "no_cell"]
    assert len(refused) >= 9 and all(r.label is None for r in refused)
    assert all(r.non_cell_score is not None and r.non_cell_score > 1.28 for r in refused
               if any("towards the images without a white cell" in why for why in r.no_cell))
    assert any("towards the images without a white cell (e.g. platelets)" in why for r in refused for why in r.no_cell)
    assert sum(r.status == "no_cell" for r in cells) <= 2  # the source lab's own cells keep their labels
    assert all(r.non_cell_score is not None for r in cells)


def test_refusals_come_before_any_image_is_read(headed, tiny_artifact, tmp_path) -> None:
    with pytest.raises(ConfigError, match="at least 10 images that hold no white cell"):
        fit_non_cells(headed, FIT[:5], tmp_path / "few")
    with pytest.raises(ArtifactError, match="carries no host-side head"):
        fit_non_cells(tiny_artifact.folder, FIT, tmp_path / "headless")
    with pytest.raises(OutputError, match="lies inside the input"):
        fit_non_cells(headed, FIT, headed / "inside")
    with pytest.raises(OutputError, match="lies inside the input"):
        fit_non_cells(headed, FIT, PLATELETS / "out", inputs=[PLATELETS])
    with pytest.raises(ConfigError, match="quantile must be between 0.5 and 1"):
        fit_non_cells(headed, FIT, tmp_path / "q", quantile=1.0)
    assert not any(p.name.startswith(("few", "headless", "q")) for p in tmp_path.iterdir())


def test_an_existing_artifact_is_replaced_only_with_overwrite(headed, tmp_path) -> None:
    out = tmp_path / "derived"
    fit_non_cells(headed, FIT, out)
    first = (out / "head.safetensors").read_bytes()
    with pytest.raises(OutputError, match="already holds a onnx"):
        fit_non_cells(headed, FIT, out)
    assert (out / "head.safetensors").read_bytes() == first
    fit_non_cells(headed, FIT + HELD, out, overwrite=True)
    assert read_manifest(out)["non_cell"]["images"] == 12


def test_a_malformed_recorded_discriminant_is_refused_with_a_sentence(taught, tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    from dorl.artifacts import write_manifest

    broken = Path(shutil.copytree(taught, tmp_path / "broken"))
    tensors = load_file(str(broken / "head.safetensors"))
    tensors["source.noncell_weight"] = np.ones(3, np.float32)
    save_file(tensors, str(broken / "head.safetensors"))
    manifest = read_manifest(broken, verify=False)
    fields = {k: v for k, v in manifest.items() if k not in ("files", "folder", "format_version", "kind", "created")}
    write_manifest(broken, "onnx", list(manifest["files"]), **fields)
    with pytest.raises(ArtifactError, match="non-cell discriminant recorded in .* cannot be used .*3 weights for 8"):
        Analyzer(broken)
