"""Writing outputs without destroying anything: checked paths, locks, temporary siblings, renames.

Every command that writes (a site profile, masks, and in time exports, engines and calibration
sets) goes through this module:

- `check_output` says, before any model or image is loaded, whether a path may be written: never
  an input or a folder holding an input, never inside or over an artifact of another kind, never
  over an existing artifact or file unless `overwrite`, never a folder of unrelated files;
- `output_lock` holds an exclusive lock beside the output for the whole run, so two commands
  writing the same output cannot interleave (the second one fails with a sentence);
- `atomic_folder` and `atomic_file` write into a temporary sibling and rename it into place:
  a failed or killed run leaves the previous output exactly as it was (an existing folder is
  swapped atomically where the kernel allows it).

Files are written world-readable (0644, folders 0755, subject to the umask's group/other write
bits only), so a service running as another user can read them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from dorl.errors import DorlError

MANIFEST_NAME = "manifest.json"  # the file that makes a folder a dorl artifact
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): locks are re-entrant within a process


class OutputError(DorlError):
    """An output path cannot or must not be written."""


def check_output(path: str | Path, *, kind: str | None = None, overwrite: bool = False,
                 inputs: Iterable[str | Path] = (), input_folders: Iterable[str | Path] = (),
                 folder: bool = True) -> Path:
    """Check that `path` may be written, before any work is done.

    Args:
        path: the output folder (or file, with `folder=False`).
        kind: the artifact kind about to be written (e.g. "site-profile"); an existing artifact
            of this kind may be replaced with `overwrite`, one of another kind never.
        overwrite: allow replacing an existing output of the same kind (or an existing file).
        inputs: the command's inputs (images, folders, artifacts); the output may be none of
            them, lie inside none of them, and hold none of them.
        input_folders: folders the inputs were found in (links followed); the output may be
            none of them and hold none of them.
        folder: the output is a folder: a new or empty one, an artifact of `kind`, or (with
            `kind` None and `overwrite`) a folder of plain files whose same-named files are replaced.

    Returns:
        The output path, absolute.

    Raises:
        OutputError: with a sentence saying what is in the way and what to do.
    """
    target = Path(os.path.abspath(path))
    real = Path(os.path.realpath(target))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if real == source or source in real.parents or real in source.parents:
            raise OutputError(f"{path} is, holds or lies inside the input {given}: write the output somewhere "
                              "else, so that no input can be overwritten.")
    for given in input_folders:
        source = Path(os.path.realpath(given))
        if real == source or real in source.parents:
            raise OutputError(f"{path} is or holds the folder {given}, where input images were found: write the "
                              "output somewhere else, so that no input can be overwritten.")
    for parent in real.parents:
        if (parent / MANIFEST_NAME).is_file():
            raise OutputError(f"{path} lies inside the dorl artifact {parent}: write outputs beside artifacts, "
                              "never into them.")
    if real.exists() or target.is_symlink():
        _check_existing(target, real, kind, overwrite, folder)
    _check_writable(target)
    return target


def _check_existing(target: Path, real: Path, kind: str | None, overwrite: bool, folder: bool) -> None:
    if not folder:
        if real.is_dir():
            raise OutputError(f"{target} is a folder, not a file: give a file name.")
        if not overwrite:
            raise OutputError(f"{target} already exists: pass --overwrite to replace it, or choose another name.")
        return
    if not real.is_dir():
        raise OutputError(f"{target} exists and is not a folder: choose another output folder.")
    manifest = real / MANIFEST_NAME
    if manifest.is_file():
        existing = _artifact_kind(manifest)
        if kind is None or existing != kind:
            raise OutputError(f"{target} is a dorl {existing or 'artifact'} folder: refusing to write a "
                              f"{kind or 'different output'} over it; choose another output folder.")
        if not overwrite:
            raise OutputError(f"{target} already holds a dorl {kind} artifact: pass --overwrite to replace it, or "
                              "choose another output folder.")
        return
    if any(real.iterdir()):
        if kind is None and overwrite:
            return  # a folder of plain output files (masks): files of the same name are replaced
        if kind is None:
            raise OutputError(f"{target} already holds files: pass --overwrite to replace those of the same name, or "
                              "choose a new or empty folder.")
        raise OutputError(f"{target} is a folder holding other files, not a {kind}: choose a new or empty folder, "
                          "so that nothing in it is lost.")


def _artifact_kind(manifest: Path) -> str | None:
    import json

    try:
        kind = json.loads(manifest.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _check_writable(target: Path) -> None:
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is not None and existing != target and not existing.is_dir():
        raise OutputError(f"{existing} is a file, not a folder, so {target} cannot be made under it: choose another "
                          "output path.")
    if existing is None or not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{target} cannot be written: {existing} is not writable by this user; choose "
                          "another output.")


@contextlib.contextmanager
def output_lock(path: str | Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` (a `.NAME.lock` file beside it).

    Args:
        path: the output folder or file.
        wait_s: how long to wait for another holder (0: fail at once).

    Raises:
        OutputError: another process holds the lock.
    """
    import fcntl

    target = Path(os.path.abspath(path))
    lock = target.parent / f".{target.name}.lock"
    key = str(lock)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, wait_s, fcntl)
    _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it: a waiter then finds a fresh file, see _acquire
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _acquire(lock: Path, wait_s: float, fcntl: object) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() >= deadline:
                raise OutputError(f"another dorl process (pid {holder}) is writing {lock.parent / lock.name[1:-5]}: "
                                  "wait for it to finish, or choose another output.") from None
            time.sleep(0.2)
            continue
        # The holder before us may have unlinked the file after we opened it: lock the live one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, kind: str | None = None, overwrite: bool = False,
                  inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, then move it into place.

    Args:
        path: the output folder.
        kind: the artifact kind written (see `check_output`).
        overwrite: replace an existing folder of the same kind.
        inputs: the inputs the output must not touch.

    Yields:
        The temporary folder to write into; on an exception it is removed and `path` is untouched.
    """
    target = Path(os.path.abspath(path))
    with output_lock(target):
        check_output(target, kind=kind, overwrite=overwrite, inputs=inputs)
        _sweep_leftovers(target)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(tmp, 0o755)
        try:
            yield tmp
            _publish(tmp)
            if target.exists():
                _replace_folder(tmp, target)
            else:
                os.rename(tmp, target)
            _fsync_dir(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _sweep_leftovers(target: Path) -> None:
    """Remove the temporary siblings of `target` left by killed runs (their process is gone)."""
    if not target.parent.is_dir():
        return
    for entry in target.parent.glob(f".{_glob_escape(target.name)}.*-*-*"):
        kind, _, rest = entry.name[len(target.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(folder: Path) -> None:
    """Flush every file to disk and make the folder world-readable."""
    os.chmod(folder, 0o755)
    for entry in folder.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, 0o644)
            with open(entry, "rb+") as f:
                os.fsync(f.fileno())


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; afterwards `new` holds the old folder (removed by the caller)."""
    if _exchange(new, target):
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    os.rename(new, target)
    os.rename(old, new)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, *, overwrite: bool = False) -> Iterator[IO[bytes]]:
    """Write one file atomically: yield a temporary sibling opened for writing, then rename it.

    Without `overwrite` an existing file is never replaced, even by a race (the new file is
    hard-linked into place, which fails if the name exists).

    Raises:
        OutputError: the file exists and `overwrite` is False.
    """
    target = Path(os.path.abspath(path))
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_new(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputError(f"{target} already exists: pass --overwrite to replace it.") from None
    except OSError as exc:  # a file system without hard links: check, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            raise OutputError(f"{target} already exists: pass --overwrite to replace it.") from None
        os.rename(tmp, target)


def write_bytes(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """`atomic_file` for data already in memory; returns the path written."""
    with atomic_file(path, overwrite=overwrite) as f:
        f.write(data)
    return Path(path)
