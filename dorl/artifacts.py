"""Self-describing, bound artifact folders: files plus a JSON manifest with their sha256.

Every artifact `dorl` writes (a model bundle, an ONNX graph, a TensorRT engine, a site
profile, a calibration set) is a folder holding its files, `manifest.json` and
`manifest.sha256`. The manifest names the kind of artifact, the format version, and the size
and sha256 of each file; `manifest.sha256` holds the manifest's own digest. `read_manifest`
refuses, before anything trusts the folder:
- a manifest changed after it was written (its digest differs);
- a file entry that is not a plain name inside the folder (`..`, a path, a link);
- a changed, missing or truncated file;
- class names that differ from the config's, from an ONNX graph's own (stamped into its
  metadata) or from a bundle's weights file;
- an ONNX graph that loads a file its manifest does not list.
Files are written readable by every user (0644). Each file is hashed once per process (the
digest is kept per path, size, inode and modification time). Torch-free: the runtime uses it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from dorl.contract import MANIFEST_FILE, WEIGHTS_FILE
from dorl.errors import ArtifactError

MANIFEST_NAME = MANIFEST_FILE  # the contract's name, under the name other modules import
MANIFEST_DIGEST_FILE = "manifest.sha256"
FORMAT_VERSION = 2  # sealed: the manifest's digest beside it, the class names bound into the files
READABLE_VERSIONS = (2,)  # format 1 carried no seal: reading it would let an edited manifest pass as an old one
KINDS = ("bundle", "onnx", "engine", "site-profile", "calibration-set")
WHERE_FROM = {"bundle": "the bundle `dorl train` wrote (OUT/bundle)", "onnx": "an ONNX artifact from `dorl export`",
              "engine": "an engine folder from `dorl build`", "site-profile": "a site profile from `dorl adapt`",
              "calibration-set": "a calibration set from `dorl calibrate`"}
FILE_MODE = 0o644
CLASS_NAMES_KEY = "dorl.class_names"  # ONNX metadata and safetensors metadata
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_digests: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks; each file is read once per process while it is unchanged."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_ino, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def write_manifest(folder: str | Path, kind: str, files: list[str], **fields: Any) -> dict[str, Any]:
    """Write `folder/manifest.json` describing `files` (plain names in the folder), and its digest.

    The class names (`fields["class_names"]`) are bound into the files themselves: stamped into
    an ONNX graph's metadata before it is hashed (a bundle's weights carry them already, see
    `dorl.bundle`). Every file is made readable by every user.

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
    where = _non_finite(fields)
    if where is not None:  # json.dumps would write NaN/Infinity, which is not JSON and no reader accepts
        raise ValueError(f"the {kind} manifest's field {where} is not a finite number: a manifest records only "
                         "finite values (record a missing measurement as null).")
    folder = Path(folder)
    for name in files:
        check_name(folder, name)
    for graph in _graphs(files) if kind == "onnx" else []:
        from dorl.graph_file import GraphFacts, stamp

        _check_external(folder / graph, GraphFacts(folder / graph), files)
        if fields.get("class_names") is not None:
            stamp(folder / graph, CLASS_NAMES_KEY, json.dumps(list(fields["class_names"])))
    entries = {}
    for name in files:
        path = folder / name
        os.chmod(path, FILE_MODE)
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "files": entries,
    }
    text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"
    _write_readable(folder / MANIFEST_FILE, text)
    _write_readable(folder / MANIFEST_DIGEST_FILE, f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST_FILE}\n")
    return manifest


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path (e.g. `gate.probs_drift`, `losses[3]`) of the first NaN or infinite float in `value`, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for path, item in items:
        found = _non_finite(item, path)
        if found is not None:
            return found
    return None


def _write_readable(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, FILE_MODE)


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
        verify: also check every listed file (size, sha256) and the class names bound into the
            files. The manifest's own digest and its file names are checked always.

    Returns:
        The manifest, with `"folder"` set to the artifact folder's absolute path.

    Raises:
        ArtifactError: the manifest is missing, unreadable, changed, of another kind or format,
            names a file outside the folder, or a file is missing, truncated, changed or disagrees
            with the manifest's class names.
    """
    folder = resolve_folder(path)
    if Path(path).is_file() and not (folder / MANIFEST_FILE).is_file():
        raise ArtifactError(f"{path} is a file, not an artifact folder, and {folder} holds no {MANIFEST_FILE}: give the "
                            "folder dorl wrote.")
    manifest = _load(folder)
    accepted = (kinds,) if isinstance(kinds, str) else kinds
    if accepted is not None and manifest["kind"] not in accepted:
        raise ArtifactError(
            f"{folder} is a {manifest['kind']!r} artifact, but this needs {' or '.join(map(repr, accepted))}: give "
            f"{' or '.join(WHERE_FROM.get(k, k) for k in accepted)}."
        )
    for name in manifest["files"]:
        check_name(folder, name)
    check_class_names(folder, manifest)
    if verify:
        verify_files(folder, manifest["files"])
        check_bound_files(folder, manifest)
    manifest["folder"] = str(folder.resolve())
    return manifest


def _load(folder: Path) -> dict[str, Any]:
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{folder} has no {MANIFEST_FILE}: it is not a dorl artifact; export or save it again with dorl."
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}): the artifact is corrupt; write it again.") from exc
    if not isinstance(manifest, dict) or "kind" not in manifest or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path} lacks 'kind' or 'files': the artifact is corrupt; write it again.")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{folder} has format version {version!r}, this dorl reads {' and '.join(map(str, READABLE_VERSIONS))}: "
            "re-create the artifact with this version of dorl."
        )
    _check_digest(folder, raw)
    return manifest


def _check_digest(folder: Path, raw: bytes) -> None:
    digest_path = folder / MANIFEST_DIGEST_FILE
    try:
        recorded = digest_path.read_text().split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        raise ArtifactError(f"{folder} has no readable {MANIFEST_DIGEST_FILE}: the artifact is incomplete; copy the "
                            "whole folder again or re-create it.") from None
    if hashlib.sha256(raw).hexdigest() != recorded:
        raise ArtifactError(f"{folder / MANIFEST_FILE} was changed after it was written (its sha256 differs from "
                            f"{MANIFEST_DIGEST_FILE}): re-create the artifact instead of editing its manifest.")


def check_name(folder: Path, name: Any) -> None:
    """Refuse a file entry that is not a plain file name inside `folder` (no path, `..` or link)."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in (MANIFEST_FILE, MANIFEST_DIGEST_FILE):
        raise ArtifactError(f"{folder} lists the file {name!r}, which is not a plain file name inside the artifact "
                            "folder: the manifest is corrupt or forged; re-create the artifact.")
    if (folder / name).is_symlink():
        raise ArtifactError(f"{folder / name} is a link: an artifact holds its own files; copy the file into the "
                            "folder instead, or re-create the artifact.")


def verify_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Check each recorded file's presence, size and sha256."""
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact: copy the whole folder again or re-create it.")
        size = path.stat().st_size
        if not isinstance(entry, dict) or size != entry.get("bytes"):
            raise ArtifactError(
                f"{path} has {size} bytes but its manifest records {entry.get('bytes') if isinstance(entry, dict) else entry}:"
                " the file is truncated or changed; copy it again or re-create the artifact."
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(
                f"{path} does not match the sha256 in its manifest: the file was changed or corrupted; copy it "
                "again or re-create the artifact."
            )


def check_class_names(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest's class names must be those of the config it records beside them."""
    names, config = manifest.get("class_names"), manifest.get("config")
    if names is None or not isinstance(config, dict) or "class_names" not in config:
        return
    if list(names) != list(config["class_names"]):
        raise ArtifactError(f"{folder / MANIFEST_FILE} names the classes {list(names)} but its config "
                            f"{list(config['class_names'])}: the manifest was edited; re-create the artifact.")


def check_bound_files(folder: Path, manifest: dict[str, Any]) -> None:
    """The class names recorded in the files themselves, and an ONNX graph's external files."""
    names = manifest.get("class_names")
    files = manifest["files"]
    for graph in _graphs(files) if manifest["kind"] == "onnx" else []:
        from dorl.graph_file import GraphFacts

        facts = GraphFacts(folder / graph)
        _check_external(folder / graph, facts, files)
        _compare_names(folder / graph, names, facts.values(CLASS_NAMES_KEY))
    if manifest["kind"] == "bundle" and WEIGHTS_FILE in files:
        _compare_names(folder / WEIGHTS_FILE, names, _safetensors_values(folder / WEIGHTS_FILE))


def _check_external(path: Path, facts: Any, files: Any) -> None:
    unlisted = [location for location in facts.external if location not in files]
    if unlisted:
        raise ArtifactError(f"{path} loads {unlisted[0]!r}, which its manifest does not list (so it is not verified): "
                            "re-export the artifact.")


def _graphs(files: Any) -> list[str]:
    return [name for name in files if name.endswith(".onnx")]


def _compare_names(path: Path, names: Any, stored: list[str]) -> None:
    if names is None:
        return
    if not stored:
        raise ArtifactError(f"{path} does not record its class names: re-create the artifact with this dorl.")
    try:
        found = [json.loads(value) for value in stored]
    except json.JSONDecodeError:
        found = stored
    if any(f != list(names) for f in found):
        raise ArtifactError(f"the manifest beside {path} names the classes {list(names)}, but the file itself "
                            f"{found[0]}: the manifest was edited; re-create the artifact.")


def _safetensors_values(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own untyped errors
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}): re-create the artifact.") from exc
    return [metadata[CLASS_NAMES_KEY]] if CLASS_NAMES_KEY in metadata else []
