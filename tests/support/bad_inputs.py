"""A corpus of hostile inputs made for real on disk, with what the analyzer must say about each.

`build_corpus(folder)` writes real cells from the bundled sample (some re-encoded in awkward but
valid ways), files that are broken in every way seen in the field, links that point nowhere or
in circles, an unreadable file and folder, a pipe, a non-UTF-8 name, frames without a cell, and
files to ignore. `Corpus.expected` maps each path to the status it must get and a fragment of
its error, so a test can check every record.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "sample" / "pbc"
NON_UTF8_NAME = os.fsdecode(b"caf\xe9_cell.jpg")


@dataclass
class Corpus:
    root: Path
    expected: dict[str, tuple[set[str], str]] = field(default_factory=dict)  # relative path -> (statuses, fragment)
    ignored: list[str] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)  # chmod 000: restore before removing

    def expect(self, relative: str, statuses: set[str] | str, fragment: str = "") -> None:
        self.expected[relative] = ({statuses} if isinstance(statuses, str) else statuses, fragment)


def sample_cells(count: int) -> list[Path]:
    """`count` real pbc cells of the bundled sample, two classes alternating."""
    a, b = sorted((SAMPLE / "neutrophil").glob("*.jpg")), sorted((SAMPLE / "lymphocyte").glob("*.jpg"))
    cells = [p for pair in zip(a, b) for p in pair]
    return cells[:count]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, depth: int, colour: int, rows: bytes, sbit: bytes | None = None) -> bytes:
    """A PNG from raw filtered rows (filter byte first), written without Pillow's checks."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    extra = png_chunk(b"sBIT", sbit) if sbit is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + header + extra + png_chunk(b"IDAT", zlib.compress(rows, 9))
            + png_chunk(b"IEND", b""))


def blank_png(width: int, height: int) -> bytes:
    """A 1-bit black PNG of any size, compressed row by row without allocating the image."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def twelve_bit_rgb_png(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG holding 12-bit camera counts (0..4095) unscaled, with sBIT 12."""
    counts = np.round(rgb.astype(np.float64) * 4095 / 255).astype(">u2")
    rows = b"".join(b"\x00" + counts[y].tobytes() for y in range(counts.shape[0]))
    return png(rgb.shape[1], rgb.shape[0], 16, 2, rows, sbit=bytes([12, 12, 12]))


def build_corpus(folder: Path) -> Corpus:
    """Write the corpus under `folder` (created) and return what each file must give."""
    c = Corpus(folder)
    good, bad, blank = folder / "cells", folder / "bad", folder / "blank"
    for sub in (good, bad, blank):
        sub.mkdir(parents=True)
    cells = sample_cells(8)
    _good_cells(c, good, cells)
    _bad_files(c, bad, cells[0])
    _bad_paths(c, bad, cells[0])
    for name, rgb in _no_cell_frames().items():
        Image.fromarray(rgb).save(blank / name)
        c.expect(f"blank/{name}", "no_cell", "")
    Image.fromarray(np.zeros((96, 96, 4), np.uint8)).save(blank / "transparent.png")  # white once composited
    c.expect("blank/transparent.png", "no_cell")
    (folder / "notes.txt").write_text("not an image\n")
    (good / ".thumbs.jpg").write_bytes(cells[0].read_bytes())
    c.ignored += ["notes.txt", "cells/.thumbs.jpg"]
    return c


def _good_cells(c: Corpus, good: Path, cells: list[Path]) -> None:
    labelled = {"ok", "uncertain"}
    for i, cell in enumerate(cells[:3]):
        (good / f"cell_{i}.jpg").write_bytes(cell.read_bytes())
        c.expect(f"cells/cell_{i}.jpg", labelled)
    rgb = np.asarray(Image.open(cells[3]).convert("RGB"))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(good / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(good / "cmyk.jpg")
    Image.fromarray(rgb).save(good / "single.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(good / "exif_rotated.jpg", exif=exif)
    (good / "twelve_bit.png").write_bytes(twelve_bit_rgb_png(rgb))
    (good / NON_UTF8_NAME).write_bytes(cells[4].read_bytes())
    for name in ("palette.png", "cmyk.jpg", "single.gif", "exif_rotated.jpg", NON_UTF8_NAME):
        c.expect(f"cells/{name}", labelled)
    c.expect("cells/twelve_bit.png", labelled, "12-bit data")
    share = c.root / "share" / "monocyte"  # a class folder linked in from elsewhere
    share.mkdir(parents=True)
    (share / "linked_cell.jpg").write_bytes(cells[5].read_bytes())
    (good / "monocyte").symlink_to(share)
    c.expect("cells/monocyte/linked_cell.jpg", labelled)
    c.ignored.append("share/monocyte")  # the same folder again, already reached through the link


def _bad_files(c: Corpus, bad: Path, cell: Path) -> None:
    data = cell.read_bytes()
    files = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (data[: len(data) // 3], "truncated or corrupt"),
        "fake.png": (b"this is a text file, not a PNG\n", "not an image"),
        "bomb.png": (blank_png(10_000, 10_000), "above the limit"),
        "strip.png": (blank_png(4_000_000, 8), "times longer than wide"),
    }
    for name, (content, fragment) in files.items():
        (bad / name).write_bytes(content)
        c.expect(f"bad/{name}", "failed", fragment)
    rgb = np.asarray(Image.open(cell).convert("RGB"))
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb), Image.fromarray(rgb // 2)]
    frames[0].save(bad / "pages.tif", save_all=True, append_images=frames[1:2])
    frames[0].save(bad / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    c.expect("bad/pages.tif", "failed", "holds 2 frames")
    c.expect("bad/animated.gif", "failed", "holds 3 frames")


def _bad_paths(c: Corpus, bad: Path, cell: Path) -> None:
    (bad / "locked.jpg").write_bytes(cell.read_bytes())
    os.chmod(bad / "locked.jpg", 0)
    c.expect("bad/locked.jpg", "failed", "permission denied")
    locked = bad / "locked_dir"
    locked.mkdir()
    (locked / "hidden_cell.jpg").write_bytes(cell.read_bytes())
    os.chmod(locked, 0)
    c.unreadable += [bad / "locked.jpg", locked]
    c.expect("bad/locked_dir", "failed", "cannot be listed")
    (bad / "dangling.jpg").symlink_to(bad / "gone.jpg")
    c.expect("bad/dangling.jpg", "failed", "which does not exist")
    (bad / "loop_a.jpg").symlink_to(bad / "loop_b.jpg")
    (bad / "loop_b.jpg").symlink_to(bad / "loop_a.jpg")
    c.expect("bad/loop_a.jpg", "failed", "loop of symbolic links")
    c.expect("bad/loop_b.jpg", "failed", "loop of symbolic links")
    (bad / "up").symlink_to(c.root)
    c.expect("bad/up", "failed", "a folder above it")
    os.mkfifo(bad / "pipe.png")
    c.expect("bad/pipe.png", "failed", "not a regular file")


def _no_cell_frames() -> dict[str, np.ndarray]:
    """Frames with no white cell in them (the real model's "no cell" rate is measured on more)."""
    return {"black.png": np.zeros((96, 96, 3), np.uint8), "white.png": np.full((96, 96, 3), 255, np.uint8)}


def restore(corpus: Corpus) -> None:
    """Make the unreadable entries removable again."""
    for path in corpus.unreadable:
        os.chmod(path, 0o755)
