"""Calibration sets: stratified by domain × class, reproducible, saved with sha256, checked on read."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sample_data import MASKED

from dorl.artifacts import read_manifest
from dorl.calibration.calibration_set import (
    CELLS_FILE,
    allocate,
    draw_cells,
    read_calibration_set,
    write_calibration_set,
)
from dorl.errors import ArtifactError, ConfigError


def _domains(wbc_dir: Path) -> dict[str, Path]:
    return {name: wbc_dir / name for name in ("pbc", "bccd", MASKED)}


def test_allocation_gives_equal_shares_and_passes_on_what_small_strata_cannot_fill() -> None:
    rng = np.random.default_rng(0)
    alloc = allocate({("a", "x"): 1, ("a", "y"): 10, ("b", "x"): 10}, 12, rng)
    assert alloc[("a", "x")] == 1 and sorted([alloc[("a", "y")], alloc[("b", "x")]]) == [5, 6]
    assert allocate({("a", "x"): 3, ("b", "x"): 2}, 100, rng) == {("a", "x"): 3, ("b", "x"): 2}


def test_draw_is_stratified_across_domains_and_classes(wbc_dir: Path) -> None:
    cells = draw_cells(_domains(wbc_dir), size=60, seed=0)
    assert len(cells) == 60 and len({c.path for c in cells}) == 60
    counts = Counter((c.domain, c.label) for c in cells)
    assert {d for d, _ in counts} == {"pbc", "bccd", MASKED}
    assert all(label != "masks" for _, label in counts)  # masks/ is not a class
    scarce = {("bccd", "basophil"), (MASKED, "basophil")}
    assert all(counts[k] == 3 for k in scarce)  # the only ones there are
    assert max(counts.values()) - min(n for k, n in counts.items() if k not in scarce) <= 1
    assert all(Path(c.path).parent.name == c.label for c in cells)


def test_same_seed_same_list_other_seed_other_list(wbc_dir: Path) -> None:
    first = draw_cells(_domains(wbc_dir), size=40, seed=3)
    assert draw_cells(_domains(wbc_dir), size=40, seed=3) == first
    assert draw_cells(_domains(wbc_dir), size=40, seed=4) != first


def test_excluded_cells_are_never_drawn(wbc_dir: Path) -> None:
    domains = {MASKED: wbc_dir / MASKED}
    every = draw_cells(domains, size=1000, seed=0)
    held = frozenset(c.sha256 for c in every[:50])
    rest = draw_cells(domains, size=1000, seed=0, exclude=held)
    assert len(rest) == len(every) - 50 and not held & {c.sha256 for c in rest}


def test_written_set_reads_back_and_is_reproducible(wbc_dir: Path, tmp_path: Path) -> None:
    manifest = write_calibration_set(_domains(wbc_dir), tmp_path / "a", size=30, seed=5)
    write_calibration_set(_domains(wbc_dir), tmp_path / "b", size=30, seed=5)
    assert (tmp_path / "a" / CELLS_FILE).read_bytes() == (tmp_path / "b" / CELLS_FILE).read_bytes()
    assert manifest["kind"] == "calibration-set" and manifest["size"] == 30 and manifest["seed"] == 5
    assert sum(n for classes in manifest["counts"].values() for n in classes.values()) == 30
    read_manifest(tmp_path / "a", "calibration-set")
    calibration = read_calibration_set(tmp_path / "a")
    assert len(calibration.cells) == 30
    assert calibration.describe()["cells_sha256"] == manifest["files"][CELLS_FILE]["sha256"]


def test_changed_image_is_refused(wbc_dir: Path, tmp_path: Path) -> None:
    domain = tmp_path / "lab" / "neutrophil"
    domain.mkdir(parents=True)
    for path in sorted((wbc_dir / MASKED / "neutrophil").iterdir())[:3]:
        shutil.copy(path, domain / path.name)
    write_calibration_set({"lab": tmp_path / "lab"}, tmp_path / "set", size=3)
    cell = json.loads((tmp_path / "set" / CELLS_FILE).read_text())[0]["path"]
    Path(cell).write_bytes(Path(cell).read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="missing or changed"):
        read_calibration_set(tmp_path / "set")


def test_empty_calibration_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="missing or empty.*dorl calibrate"):
        read_calibration_set(tmp_path / "empty")
    with pytest.raises(ArtifactError, match="missing or empty"):
        read_calibration_set(tmp_path / "absent")


def test_domains_without_images_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "lab" / "neutrophil").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images in class sub-folders"):
        draw_cells({"lab": tmp_path / "lab"})
    with pytest.raises(ConfigError, match="is not a folder"):
        draw_cells({"lab": tmp_path / "nowhere"})
    with pytest.raises(ConfigError, match="no domains"):
        draw_cells({})


def test_a_file_that_is_not_an_image_is_refused_when_drawn(wbc_dir: Path, tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    shutil.copytree(wbc_dir / "bccd", lab)
    (lab / "neutrophil" / "zz_notes.jpg").write_text("not an image")
    with pytest.raises(ConfigError, match="zz_notes.jpg .*file. A calibration set lists only images: remove or fix"):
        write_calibration_set({"lab": lab}, tmp_path / "cal", size=10_000)
    assert not (tmp_path / "cal").exists()


def test_a_set_smaller_than_asked_is_said(wbc_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dorl.cli import app

    lab = tmp_path / "lab" / "neutrophil"
    lab.mkdir(parents=True)
    shutil.copy(min((wbc_dir / "bccd" / "neutrophil").glob("*.jpg")), lab)
    result = CliRunner().invoke(app, ["calibrate", "-d", f"lab={tmp_path / 'lab'}", "-o", str(tmp_path / "cal"),
                                      "--size", "64"])
    assert result.exit_code == 0 and "wrote a calibration set of 1 cells" in result.output
    assert "the domains hold only 1 cells, fewer than the 64 asked for" in result.output
