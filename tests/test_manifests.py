"""Typed manifests: each kind read once into its dataclass, malformed fields refused in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from manifests import edit_manifest

from dorl.artifacts import write_manifest
from dorl.errors import ArtifactError
from dorl.manifests import (
    CalibrationSetManifest,
    EngineManifest,
    OnnxManifest,
    SiteProfileManifest,
    read_artifact,
    read_onnx,
)
from dorl.runtime.base import TensorSpec

SPECS = {"inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", 224, 224, 3]}],
         "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 2]}]}


def test_an_onnx_manifest_is_typed(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package (export extra)")
    from tiny_artifact import build_tiny_artifact

    folder = build_tiny_artifact(tmp_path / "onnx").folder
    manifest = read_onnx(folder)
    assert isinstance(manifest, OnnxManifest) and manifest.precision == "fp32" and manifest.image_size == 224
    assert manifest.inputs == (TensorSpec("images", "uint8", ("batch", 224, 224, 3)),)
    assert [o.name for o in manifest.outputs] == ["logits", "probs", "feature", "mask_logits"]
    assert manifest.model_path == folder.resolve() / "model.onnx" and manifest.head_path is None
    assert manifest.model_sha256 == manifest.files["model.onnx"].sha256 == manifest.sha256("model.onnx")
    assert manifest.to_dict()["folder"] == str(folder.resolve()) and manifest.to_dict()["precision"] == "fp32"
    with pytest.raises(ArtifactError, match="does not list head.safetensors"):
        manifest.path("head.safetensors")


def test_every_kind_has_its_dataclass(tmp_path: Path) -> None:
    for name, kind, fields in (
        ("engine", "engine", {**SPECS, "class_names": ["a", "b"], "max_batch": 8, "source_onnx": {"sha256": "0"}}),
        ("profile", "site-profile", {"site": "bccd", "method": "mean", "n_cells": 60, "artifact_sha256": "ab"}),
        ("cells", "calibration-set", {"size": 24, "seed": 0}),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.bin").write_bytes(b"x")
        write_manifest(folder, kind, ["data.bin"], **fields)
    engine = read_artifact(tmp_path / "engine")
    assert isinstance(engine, EngineManifest) and engine.max_batch == 8 and engine.class_names == ("a", "b")
    profile = read_artifact(tmp_path / "profile", "site-profile")
    assert isinstance(profile, SiteProfileManifest) and (profile.site, profile.n_cells) == ("bccd", 60)
    cells = read_artifact(tmp_path / "cells")
    assert isinstance(cells, CalibrationSetManifest) and (cells.size, cells.seed) == (24, 0)


def test_a_malformed_field_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"x")
    write_manifest(tmp_path, "engine", ["data.bin"], **SPECS, max_batch=8, source_onnx={})
    edit_manifest(tmp_path, lambda m: m.update(max_batch="eight"))
    with pytest.raises(ArtifactError, match="garbles a EngineManifest field.*re-create the artifact"):
        read_artifact(tmp_path)
    edit_manifest(tmp_path, lambda m: m.pop("inputs"))
    with pytest.raises(ArtifactError, match="lacks or garbles"):
        read_artifact(tmp_path)
