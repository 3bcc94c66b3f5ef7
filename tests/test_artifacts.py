"""Artifact folders: hashes, the manifest's own digest, class names bound into the files, plain
file names inside the folder, external data listed, files readable by everyone. The attacks are
the ones a hostile user tried on the artifacts `dorl demo` writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from manifests import edit_manifest

from dorl.artifacts import MANIFEST_DIGEST_FILE, read_manifest, sha256_file, write_manifest
from dorl.errors import ArtifactError


def swap(names: list[str], a: str = "basophil", b: str = "neutrophil") -> list[str]:
    return [b if n == a else a if n == b else n for n in names]


def test_write_then_read_verifies(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"hello")
    manifest = write_manifest(tmp_path, "onnx", ["a.bin"], precision="fp32")
    assert manifest["files"]["a.bin"] == {"sha256": sha256_file(tmp_path / "a.bin"), "bytes": 5}
    read = read_manifest(tmp_path / "a.bin", "onnx")  # a file inside the folder works too
    assert read["precision"] == "fp32" and read["folder"] == str(tmp_path.resolve())


def test_corruptions(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"hello")
    write_manifest(tmp_path, "bundle", ["a.bin"])
    with pytest.raises(ArtifactError, match="'bundle' artifact, but this needs 'engine': give an engine folder"):
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


def test_a_file_is_hashed_again_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    first = sha256_file(path)
    assert sha256_file(path) == first == hashlib.sha256(b"x" * 100).hexdigest()
    path.write_bytes(b"y" * 100)  # same size: the inode or modification time moves on
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) == hashlib.sha256(b"y" * 100).hexdigest()


@pytest.fixture()
def tiny_onnx(tmp_path: Path) -> Path:
    """The tiny artifact (tests/support/tiny_artifact.py): a real graph with a class-named manifest."""
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package (export extra)")
    from tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path / "onnx").folder


def test_an_edited_manifest_is_refused_by_its_digest(tiny_onnx: Path) -> None:
    manifest = json.loads((tiny_onnx / "manifest.json").read_text())
    manifest["class_names"] = swap(manifest["class_names"])
    (tiny_onnx / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(ArtifactError, match="was changed after it was written"):
        read_manifest(tiny_onnx, verify=False)  # the digest is checked even without hashing the files
    (tiny_onnx / MANIFEST_DIGEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="no readable manifest.sha256"):
        read_manifest(tiny_onnx)


def test_renamed_classes_are_refused_by_the_graph_itself(tiny_onnx: Path) -> None:
    def rename(manifest: dict) -> None:
        manifest["class_names"] = swap(manifest["class_names"])

    edit_manifest(tiny_onnx, rename)
    with pytest.raises(ArtifactError, match=r"names the classes \['neutrophil'.*but the file itself \['basophil'"):
        read_manifest(tiny_onnx)


def test_the_runtime_refuses_renamed_classes(tiny_onnx: Path) -> None:
    pytest.importorskip("onnxruntime")
    from dorl.runtime.loader import load_runner

    edit_manifest(tiny_onnx, lambda m: m.update(class_names=swap(m["class_names"])))
    with pytest.raises(ArtifactError, match="the manifest was edited"):
        load_runner(tiny_onnx)


def test_class_names_must_be_the_configs(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    write_manifest(tmp_path, "onnx", ["a.bin"], class_names=["a", "b"], config={"class_names": ["a", "b"]})
    edit_manifest(tmp_path, lambda m: m.update(class_names=["b", "a"]))
    with pytest.raises(ArtifactError, match=r"names the classes \['b', 'a'\] but its config \['a', 'b'\]"):
        read_manifest(tmp_path, verify=False)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "../outside/evil.onnx", "/etc/passwd", "sub/model.onnx",
                                  "..", "", "manifest.json"])
def test_file_entries_must_be_plain_names_in_the_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x")
    write_manifest(folder, "onnx", ["a.bin"])
    edit_manifest(folder, lambda m: m["files"].update({name: {"sha256": sha256_file("/etc/hostname"), "bytes": 1}}))
    with pytest.raises(ArtifactError, match="not a plain file name inside the artifact folder"):
        read_manifest(folder, verify=False)
    with pytest.raises(ArtifactError, match="not a plain file name"):
        write_manifest(folder, "onnx", [name])


def test_a_listed_file_may_not_be_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "evil.onnx"
    outside.write_bytes(b"outside")
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.bin").symlink_to(outside)
    with pytest.raises(ArtifactError, match="is a link"):
        write_manifest(folder, "onnx", ["model.bin"])
    (folder / "model.bin").unlink()
    (folder / "model.bin").write_bytes(b"outside")
    write_manifest(folder, "onnx", ["model.bin"])
    (folder / "model.bin").unlink()
    (folder / "model.bin").symlink_to(outside)  # same bytes, but from outside the folder
    with pytest.raises(ArtifactError, match="is a link"):
        read_manifest(folder)


def _graph_with_external_data(folder: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    folder.mkdir()
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)


def test_every_file_the_graph_loads_is_listed(tmp_path: Path) -> None:
    folder = tmp_path / "onnx"
    _graph_with_external_data(folder)
    write_manifest(folder, "onnx", ["model.onnx", "weights.bin"], class_names=["a", "b"])
    assert read_manifest(folder)["files"]["weights.bin"]["bytes"] == 64
    edit_manifest(folder, lambda m: m["files"].pop("weights.bin"))
    with pytest.raises(ArtifactError, match="loads 'weights.bin', which its manifest does not list"):
        read_manifest(folder)
    with pytest.raises(ArtifactError, match="loads 'weights.bin'"):
        write_manifest(folder, "onnx", ["model.onnx"])


def test_files_are_readable_by_everyone(tmp_path: Path) -> None:
    (tmp_path / "head.safetensors").write_bytes(b"x")
    os.chmod(tmp_path / "head.safetensors", 0o600)
    write_manifest(tmp_path, "onnx", ["head.safetensors"])
    for name in ("head.safetensors", "manifest.json", MANIFEST_DIGEST_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_format_1_manifest_is_refused_so_no_edit_passes_as_an_old_artifact(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    write_manifest(tmp_path, "onnx", ["a.bin"])
    edit_manifest(tmp_path, lambda m: m.update(format_version=1, framing={"input": "whole"}))
    with pytest.raises(ArtifactError, match="has format version 1, this dorl reads 2: re-create"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_DIGEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="has format version 1"):
        read_manifest(tmp_path)
    edit_manifest(tmp_path, lambda m: m.update(format_version="2"))
    with pytest.raises(ArtifactError, match="has format version '2'"):
        read_manifest(tmp_path)


def test_renamed_bundle_classes_are_refused_by_the_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dorl.bundle import load_bundle, save_bundle
    from dorl.config import ModelConfig
    from dorl.models.registry import build_model

    torch.manual_seed(0)
    save_bundle(build_model(ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)), tmp_path / "b")

    def rename(manifest: dict) -> None:
        manifest["class_names"] = swap(manifest["class_names"])
        manifest["config"]["class_names"] = swap(manifest["config"]["class_names"])

    edit_manifest(tmp_path / "b", rename)
    with pytest.raises(ArtifactError, match="the manifest was edited"):
        load_bundle(tmp_path / "b")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_manifest_never_records_a_non_finite_number(tmp_path: Path, value: float) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"field gate\.runs\[1\]\.drift is not a finite number"):
        write_manifest(tmp_path, "onnx", ["a.bin"], gate={"runs": [{"drift": 0.5}, {"drift": value}]})
    assert not (tmp_path / "manifest.json").exists()  # refused before anything is written
    write_manifest(tmp_path, "onnx", ["a.bin"], gate={"runs": [{"drift": 0.5}, {"drift": None}]})
    assert read_manifest(tmp_path)["gate"]["runs"][1]["drift"] is None


def test_a_file_outside_any_artifact_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ArtifactError, match="afile is a file, not an artifact folder, and .* holds no manifest.json"):
        read_manifest(tmp_path / "afile")
