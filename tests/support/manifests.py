"""Edit an artifact's manifest in a test and write a matching digest, as a careful forger would
(a plain module on pytest's pythonpath: `from manifests import edit_manifest`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dorl.artifacts import MANIFEST_DIGEST_FILE
from dorl.contract import MANIFEST_FILE


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Apply `change` to `folder`'s manifest, rewrite it and its digest; returns the new manifest."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest)
    text = json.dumps(manifest, indent=2) + "\n"
    (folder / MANIFEST_FILE).write_text(text)
    (folder / MANIFEST_DIGEST_FILE).write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  {MANIFEST_FILE}\n")
    return manifest
