import json

import pytest

from dorl.artifacts import read_manifest, sha256_file, write_manifest
from dorl.errors import ArtifactError


def test_write_then_read_verifies(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    manifest = write_manifest(tmp_path, "onnx", ["a.bin"], precision="fp32")
    assert manifest["files"]["a.bin"] == {"sha256": sha256_file(tmp_path / "a.bin"), "bytes": 5}
    read = read_manifest(tmp_path / "a.bin", "onnx")  # a file inside the folder works too
    assert read["precision"] == "fp32" and read["folder"] == str(tmp_path.resolve())


def test_corruptions(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"hello")
    write_manifest(tmp_path, "bundle", ["a.bin"])
    with pytest.raises(ArtifactError, match="'bundle' artifact, but a engine"):
        read_manifest(tmp_path, "engine")
    (tmp_path / "a.bin").write_bytes(b"hellO")
    with pytest.raises(ArtifactError, match="sha256"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "bundle", "files": {}, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        read_manifest(tmp_path)
