"""Self-describing artifact folders: files plus a JSON manifest with their sha256.

Every artifact `dorl` writes (a model bundle, an ONNX graph, a TensorRT engine, a site
profile) is a folder holding its files and `manifest.json`. The manifest names the kind of
artifact, the format version, and the size and sha256 of each file; loaders call
`read_manifest`, which refuses a changed, missing or truncated file before anything trusts it.
This module is torch-free: the runtime uses it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from dorl.contract import MANIFEST_FILE as MANIFEST_NAME
from dorl.errors import ArtifactError

FORMAT_VERSION = 1
KINDS = ("bundle", "onnx", "engine", "site-profile", "calibration-set")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, kind: str, files: list[str], **fields: Any) -> dict[str, Any]:
    """Write `folder/manifest.json` describing `files` (names relative to the folder).

    Args:
        folder: the artifact folder; the files must already be in it.
        kind: one of KINDS.
        files: file names to hash and record.
        **fields: any JSON-serialisable description (config, class names, tensor specs...).

    Returns:
        The manifest as written.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
    folder = Path(folder)
    entries = {}
    for name in files:
        path = folder / name
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "files": entries,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def resolve_folder(path: str | Path) -> Path:
    """The artifact folder for `path`, which may be the folder or any file inside it."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist: give the path of an artifact folder written by dorl.")
    return path if path.is_dir() else path.parent


def read_manifest(path: str | Path, kinds: str | tuple[str, ...] | None = None, verify: bool = True) -> dict[str, Any]:
    """Read and check an artifact's manifest.

    Args:
        path: the artifact folder (or a file in it).
        kinds: the kind(s) the caller accepts; None accepts any.
        verify: check that every listed file exists with the recorded size and sha256.

    Returns:
        The manifest, with `"folder"` set to the artifact folder's absolute path.

    Raises:
        ArtifactError: the manifest is missing, unreadable, of another kind or format, or a
            file is missing, truncated or changed.
    """
    folder = resolve_folder(path)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{folder} has no {MANIFEST_NAME}: it is not a dorl artifact; export or save it again with dorl."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}): the artifact is corrupt; write it again.") from exc
    if not isinstance(manifest, dict) or "kind" not in manifest or "files" not in manifest:
        raise ArtifactError(f"{manifest_path} lacks 'kind' or 'files': the artifact is corrupt; write it again.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} has format version {manifest.get('format_version')}, this dorl reads {FORMAT_VERSION}: "
            "re-create the artifact with this version of dorl."
        )
    accepted = (kinds,) if isinstance(kinds, str) else kinds
    if accepted is not None and manifest["kind"] not in accepted:
        raise ArtifactError(
            f"{folder} is a {manifest['kind']!r} artifact, but a {' or '.join(accepted)} is needed here."
        )
    if verify:
        verify_files(folder, manifest["files"])
    manifest["folder"] = str(folder.resolve())
    return manifest


def verify_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Check each recorded file's presence, size and sha256."""
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact: copy the whole folder again or re-create it.")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(
                f"{path} has {size} bytes but its manifest records {entry['bytes']}: the file is truncated or "
                "changed; copy it again or re-create the artifact."
            )
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(
                f"{path} does not match the sha256 in its manifest: the file was changed or corrupted; copy it "
                "again or re-create the artifact."
            )
