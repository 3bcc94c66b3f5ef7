"""Walking the user's paths: sorted, links followed with loop protection, nothing dropped silently."""

from __future__ import annotations

import os
from pathlib import Path

from dorl.data.scan import find_images, scan_images


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_sorted_recursive_and_each_file_once(tmp_path: Path) -> None:
    for name in ("a/z.JPG", "a/b/y.png", "a/b/x.bmp", "a/b/c.tiff", "a/d.gif"):
        touch(tmp_path / name)
    touch(tmp_path / "a" / "readme.txt")
    touch(tmp_path / "a" / ".DS_Store")
    touch(tmp_path / "a" / "._z.jpg")  # an AppleDouble file, not an image
    explicit = tmp_path / "a" / "readme.txt"
    scan = scan_images([tmp_path / "a", explicit, tmp_path / "a" / "b" / "x.bmp"])  # x.bmp only once
    assert [p.relative_to(tmp_path).as_posix() for p in scan.files] == [
        "a/b/c.tiff", "a/b/x.bmp", "a/b/y.png", "a/d.gif", "a/z.JPG", "a/readme.txt"]
    assert sorted(p.name for p in scan.ignored) == [".DS_Store", "._z.jpg", "readme.txt"]
    assert {e.root for e in scan.entries[:5]} == {tmp_path / "a"} and scan.entries[5].root is None
    assert find_images([tmp_path / "a"]) == scan.files[:5]


def test_linked_class_folders_are_followed_and_loops_reported(tmp_path: Path) -> None:
    share = tmp_path / "share"
    touch(share / "lymphocyte" / "l1.jpg")
    touch(share / "neutrophil" / "n1.jpg")
    site = tmp_path / "site"
    site.mkdir()
    (site / "lymphocyte").symlink_to(share / "lymphocyte")
    (site / "neutrophil").symlink_to(share / "neutrophil")
    (site / "again").symlink_to(share / "neutrophil")  # the same folder twice: walked once
    (site / "back").symlink_to(site)  # a loop to a folder above
    (site / "self.jpg").symlink_to(site / "self.jpg")
    (site / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (site / "gone_folder").symlink_to(tmp_path / "unmounted_share")
    os.mkfifo(site / "pipe.png")
    scan = scan_images([site])
    # sorted by name: "again" reaches share/neutrophil first, so "neutrophil" is the repeat
    assert [p.relative_to(site).as_posix() for p in scan.files] == ["again/n1.jpg", "lymphocyte/l1.jpg"]
    problems = {e.path.name: e.problem for e in scan.problems}
    assert set(problems) == {"back", "self.jpg", "gone.jpg", "gone_folder", "pipe.png"}
    assert "a folder above it (a loop)" in problems["back"]
    assert "loop of symbolic links" in problems["self.jpg"]
    assert "which does not exist" in problems["gone.jpg"] and "unmounted_share" in problems["gone_folder"]
    assert "not a regular file" in problems["pipe.png"]
    assert [p.name for p in scan.ignored] == ["neutrophil"]  # reached a second time through another link


def test_paths_given_directly_are_kept_for_the_decoder_to_judge(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    scan = scan_images([loop, tmp_path / "missing.png"])
    assert scan.files == [loop, tmp_path / "missing.png"] and not scan.problems
