"""Find the image files under the paths a user gives, and say what could not be looked at.

Folders are walked recursively in sorted order, following symbolic links (a class sub-folder
linked to a share is common) with loop protection. Nothing found is dropped silently: a link
that points nowhere or back to a folder above it, a folder that cannot be listed, a pipe with
an image's name, each becomes an entry with its problem, and files without an image suffix are
listed as ignored. Torch-free; no file is opened.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass(frozen=True)
class ScanEntry:
    """One thing to analyse: an image file, or a path whose problem was found while walking."""

    path: Path
    problem: str | None = None  # why it cannot be analysed, found without opening it
    root: Path | None = None  # the folder given by the user that this entry was found in


@dataclass
class ImageScan:
    """What `scan_images` found."""

    entries: list[ScanEntry] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # no image suffix, hidden, or reached twice

    @property
    def files(self) -> list[Path]:
        """The image files to decode (entries without a problem)."""
        return [e.path for e in self.entries if e.problem is None]

    @property
    def problems(self) -> list[ScanEntry]:
        return [e for e in self.entries if e.problem is not None]


def scan_images(paths: Iterable[str | Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> ImageScan:
    """Expand folders to the image files below them; files given directly are kept as given.

    Args:
        paths: files and folders; folders are searched recursively for files whose suffix
            (any case) is in `suffixes`; names starting with "." are ignored there.
        suffixes: the image suffixes.

    Returns:
        Entries in the order given, each folder's in sorted path order, each file once (by its
        real path).
    """
    scan = ImageScan()
    seen_files: set[str] = set()
    walked: set[tuple[int, int]] = set()
    for path in map(Path, paths):
        if _is_dir(path):
            found: Iterable[ScanEntry] = _walk(path, path, frozenset(), walked, scan.ignored, suffixes)
        else:
            found = [ScanEntry(path)]  # decoding says what is wrong with it, if anything
        for entry in found:
            key = os.path.realpath(entry.path)
            if entry.problem is None and key in seen_files:
                continue
            seen_files.add(key)
            scan.entries.append(entry)
    return scan


def require_existing(paths: Iterable[str | Path], what: str = "image files or folders of them") -> None:
    """Refuse, before any work, a given path that does not exist (it would otherwise count as one bad image).

    Raises:
        ConfigError: naming the first missing path.
    """
    from dorl.errors import ConfigError

    for path in paths:
        if not os.path.lexists(path):
            raise ConfigError(f"{path} does not exist: give {what}.")


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """The image files of `scan_images` (problems and ignored files left out).

    Returns:
        The files, in the order given, each folder's files sorted by path, each file once.
    """
    return scan_images(paths).files


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _walk(root: Path, folder: Path, ancestors: frozenset[tuple[int, int]], walked: set[tuple[int, int]],
          ignored: list[Path], suffixes: tuple[str, ...]) -> Iterator[ScanEntry]:
    try:
        info = os.stat(folder)
        names = sorted(os.listdir(folder))
    except OSError as exc:
        yield ScanEntry(folder, f"the folder {folder} cannot be listed ({_reason(exc)}): its images were not "
                                "analysed; fix its permissions or leave it out.", root)
        return
    identity = (info.st_dev, info.st_ino)
    walked.add(identity)
    inside = ancestors | {identity}
    for name in names:
        path = folder / name
        if name.startswith("."):
            ignored.append(path)
            continue
        kind, detail = _classify(path)
        if kind == "dir":
            assert detail is not None
            child = _identity(detail)
            if child in inside:
                yield ScanEntry(path, f"{path} is a symbolic link to {os.readlink(path)}, a folder above it (a loop): "
                                      "it was not followed.", root)
            elif child in walked:
                ignored.append(path)  # the same folder, reached through another link
            else:
                yield from _walk(root, path, inside, walked, ignored, suffixes)
        elif kind in ("file", "other") and path.suffix.lower() not in suffixes:
            ignored.append(path)
        elif kind == "file":
            yield ScanEntry(path, None, root)
        elif kind == "other":
            yield ScanEntry(path, f"{path} is not a regular file (a pipe, socket or device): give image files.", root)
        else:
            yield ScanEntry(path, kind, root)


def _classify(path: Path) -> tuple[str, os.stat_result | None]:
    """("dir" | "file" | "other", stat) or (the problem sentence, None)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist: fix or remove it.", None
        return f"{path} disappeared while the folder was read.", None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links: fix or remove it.", None
        return f"{path} cannot be examined ({_reason(exc)}).", None
    if stat.S_ISDIR(info.st_mode):
        return "dir", info
    return ("file" if stat.S_ISREG(info.st_mode) else "other"), info


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _reason(exc: OSError) -> str:
    return "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
