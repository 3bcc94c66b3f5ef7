"""A copy of an ONNX artifact whose manifest records a framing (a plain module on pytest's pythonpath)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dorl.artifacts import read_manifest, write_manifest

SEGMENTER = {"input": "cell", "mask": "segmenter", "margin": 0.1}


def with_framing(source: Path, folder: Path, framing: Any = SEGMENTER) -> Path:
    """Copy the artifact `source` to `folder` and record `framing` in its (re-sealed) manifest."""
    shutil.copytree(source, folder)
    manifest = read_manifest(folder)
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", "kind", "created", "files", "folder")}
    write_manifest(folder, "onnx", list(manifest["files"]), **{**fields, "framing": framing})
    return folder
