"""Fixtures of the data tests: the real labs of the bundled sample, the shared jtsc expert masks, and small
domain trees on disk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_data import MASKED

from dorl.data.domains import Domain, load_domain


@pytest.fixture(scope="session")
def pbc_domain(wbc_dir: Path) -> Domain:
    """The bundled pbc sample (Acevedo-20): 80 images, 16 in each of 5 classes, no masks."""
    return load_domain("pbc", wbc_dir / "pbc")


@pytest.fixture(scope="session")
def masked_domain(wbc_dir: Path) -> Domain:
    """The made lab with masks (tests/support/sample_data.py): 51 images, 51 masks."""
    return load_domain(MASKED, wbc_dir / MASKED)


@pytest.fixture(scope="session")
def bccd_root(wbc_dir: Path) -> Path:
    return wbc_dir / "bccd"


@pytest.fixture(scope="session")
def jtsc_domain(shared_wbc_dir: Path) -> Domain:
    """The shared jtsc images (Jiangxi Tecom): 100 images with expert masks (tests marked shared_data)."""
    return load_domain("jtsc", shared_wbc_dir / "jtsc")


def _write_image(path: Path, size: tuple[int, int] = (40, 36), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a small noisy image (any PIL mode) to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    if mode == "I;16":
        data = rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16)
        Image.fromarray(data).save(path, format=fmt)
    else:
        data = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(data).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture()
def write_image():  # type: ignore[no-untyped-def]
    """`write_image(path, size=(40, 36), mode="RGB", fmt=None)`: a small noisy image on disk."""
    return _write_image


@pytest.fixture()
def messy_domain(tmp_path: Path) -> Path:
    """A domain tree with good images of several kinds and files that must be reported.

    Good: 2 RGB JPEGs (neutrophil, as "SNE" and "Neutrophils" folders), a 16-bit TIFF and a
    grayscale PNG (lymphocyte), a nested PNG. Bad: a truncated JPEG, a text file named .jpg, a
    README.txt, a file directly in the root; a hidden .DS_Store is ignored. Masks: a good one for
    SNE/a.jpg and a corrupt one for lymphocytes/gray.png.
    """
    root = tmp_path / "lab"
    _write_image(root / "SNE" / "a.jpg")
    _write_image(root / "Neutrophils" / "b.jpeg")
    _write_image(root / "lymphocytes" / "deep16.tif", mode="I;16")
    _write_image(root / "lymphocytes" / "gray.png", mode="L")
    _write_image(root / "lymphocytes" / "sub" / "nested.PNG")
    (root / "lymphocytes" / "broken.jpg").write_bytes(_truncated_jpeg())
    (root / "SNE" / "notes.jpg").write_text("not an image at all")
    (root / "SNE" / "README.txt").write_text("labels by Dr X")
    (root / "SNE" / ".DS_Store").write_bytes(b"\0\1")
    (root / "index.csv").write_text("a,b")
    (root / "masks" / "SNE").mkdir(parents=True)
    Image.fromarray(np.where(np.eye(36, 40, dtype=bool), 255, 0).astype(np.uint8)).save(root / "masks" / "SNE" / "a.png")
    (root / "masks" / "lymphocytes").mkdir(parents=True)
    (root / "masks" / "lymphocytes" / "gray.png").write_bytes(b"garbage")
    return root


def _truncated_jpeg() -> bytes:
    """The first half of a valid JPEG: PIL opens it, decoding fails."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]
