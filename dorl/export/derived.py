"""What every artifact derived from the verified FP32 graph shares: file names, the manifest
fields inherited from FP32, and the host-side head (each artifact is written with `dorl.safe_write.atomic_folder`).

The FP16 and INT8 exports import these from here, and `onnx_export` imports those exports, so
the shared pieces live apart from all three.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dorl.contract import HEAD_FILE, MODEL_FILE
from dorl.deps import versions

EXPORT_VERSIONS = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy")


def derived_fields(fp32_manifest: dict[str, Any], precision: str) -> dict[str, Any]:
    """The manifest fields of a graph derived from an FP32 artifact (same I/O, new precision)."""
    # each derived graph gets its own parity and TensorRT compatibility report
    skip = ("format_version", "kind", "created", "files", "folder", "parity", "graph", "tensorrt_compatibility")
    fields = {k: v for k, v in fp32_manifest.items() if k not in skip}
    fields["precision"] = precision
    fields["source_fp32_sha256"] = fp32_manifest["files"][MODEL_FILE]["sha256"]
    fields["versions"] = versions(*EXPORT_VERSIONS)
    return fields


def copy_head(fp32_manifest: dict[str, Any], folder: Path) -> list[str]:
    """Copy the FP32 artifact's host-side head into a derived artifact's folder."""
    if HEAD_FILE not in fp32_manifest.get("files", {}):
        return []
    shutil.copy2(Path(fp32_manifest["folder"]) / HEAD_FILE, folder / HEAD_FILE)
    return [HEAD_FILE]
