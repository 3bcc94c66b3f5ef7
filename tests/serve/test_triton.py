"""Triton model repositories: every config.pbtxt parses with Triton's own model_config_pb2 and matches the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import client_for, running
from tiny_artifact import TinyArtifact

from dorl.artifacts import read_manifest, sha256_file, write_manifest
from dorl.errors import ArtifactError, ConfigError
from dorl.serve.triton import model_config, to_pbtxt, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="configs are parsed with Triton's model_config_pb2 (tritonclient[grpc])")
from google.protobuf import json_format, text_format

TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def parse(path: Path) -> Any:
    """config.pbtxt read by protobuf's text parser into Triton's ModelConfig (raises on any unknown field)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def check_against_manifest(config: Any, manifest: dict[str, Any], name: str, max_batch: int) -> None:
    assert config.name == name and config.max_batch_size == max_batch
    for tensors, specs in ((config.input, manifest["inputs"]), (config.output, manifest["outputs"])):
        assert [t.name for t in tensors] == [s["name"] for s in specs]
        for tensor, spec in zip(tensors, specs):
            assert model_config_pb2.DataType.Name(tensor.data_type) == TYPES[spec["dtype"]]
            assert list(tensor.dims) == spec["shape"][1:]  # the batch dimension is max_batch_size's
    params = {k: v.string_value for k, v in config.parameters.items()}
    graph = next(n for n in manifest["files"] if n.endswith((".onnx", ".engine")))
    assert json.loads(params["class_names"]) == manifest["class_names"]
    assert params["precision"] == manifest["precision"] and params["sha256"] == manifest["files"][graph]["sha256"]
    assert params["source_bundle_sha256"] == manifest["source_bundle_sha256"]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 5000


def test_onnx_repository(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    folder = write_repository(tiny_artifact.folder, tmp_path / "repo", name="wbc")
    manifest = read_manifest(tiny_artifact.folder)
    config = parse(folder / "config.pbtxt")
    check_against_manifest(config, manifest, "wbc", 8)
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (1, "KIND_AUTO")]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert {o.name: o.label_filename for o in config.output} == {
        "logits": "labels.txt", "probs": "labels.txt", "feature": "", "mask_logits": ""}
    assert (folder / "labels.txt").read_text().splitlines() == manifest["class_names"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert sha256_file(folder / "1" / "model.onnx") == manifest["files"]["model.onnx"]["sha256"]


def test_options_reach_the_config(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    folder = write_repository(tiny_artifact.folder, tmp_path, name="cpu-2", max_batch=16, max_delay_us=100,
                              queue_size=5, instances=2, device="cpu")
    config = parse(folder / "config.pbtxt")
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 5
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]


def test_external_data_travels_with_the_graph(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    import onnx

    source = tmp_path / "external"
    source.mkdir()
    model = onnx.load(str(tiny_artifact.folder / "model.onnx"))
    onnx.save_model(model, str(source / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    manifest = read_manifest(tiny_artifact.folder)
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", "kind", "created", "files", "folder")}
    write_manifest(source, "onnx", ["model.onnx", "model.onnx.data"], **fields)
    folder = write_repository(source, tmp_path / "repo")
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    ort = pytest.importorskip("onnxruntime")
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    copied, original = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {
        "images": images})[0] for path in (folder / "1" / "model.onnx", tiny_artifact.folder / "model.onnx"))
    np.testing.assert_array_equal(copied, original)


def engine_artifact(tiny_artifact: TinyArtifact, folder: Path, max_batch: int = 4) -> Path:
    """An engine artifact's folder with the manifest fields `dorl build` writes. The plan's bytes are opaque to
    the repository writer (and TensorRT cannot run here), so they are a stand-in."""
    onnx_manifest = read_manifest(tiny_artifact.folder)
    folder.mkdir()
    (folder / "model.engine").write_bytes(b"serialized TensorRT plan")
    write_manifest(folder, "engine", ["model.engine"], tensorrt_version="10.3.0", gpu_name="Orin",
                   compute_capability="8.7", precision="fp16", max_batch=max_batch, opt_batch=max_batch,
                   inputs=onnx_manifest["inputs"], outputs=onnx_manifest["outputs"],
                   class_names=onnx_manifest["class_names"], image_size=224,
                   source_bundle_sha256=onnx_manifest["source_bundle_sha256"],
                   source_onnx={"folder": str(tiny_artifact.folder), "sha256": onnx_manifest["files"]["model.onnx"]["sha256"],
                                "precision": "fp32"})
    return folder


def test_engine_repository(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    source = engine_artifact(tiny_artifact, tmp_path / "engine")
    folder = write_repository(source, tmp_path / "repo")
    config = parse(folder / "config.pbtxt")
    check_against_manifest(config, read_manifest(source), "dorl", 4)  # the engine profile's max batch
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert (params["tensorrt_version"], params["gpu_name"], params["compute_capability"]) == ("10.3.0", "Orin", "8.7")
    assert (folder / "1" / "model.plan").read_bytes() == b"serialized TensorRT plan"
    with pytest.raises(ConfigError, match="profile maximum 4"):
        write_repository(source, tmp_path / "repo2", max_batch=8)
    with pytest.raises(ConfigError, match="GPU only"):
        write_repository(source, tmp_path / "repo3", device="cpu")


def test_served_config_is_the_repository_config(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    folder = write_repository(tiny_artifact.folder, tmp_path)
    written = parse(folder / "config.pbtxt")
    with running(tiny_artifact.folder) as server:
        served = json_format.ParseDict(client_for(server).get_model_config("dorl"), model_config_pb2.ModelConfig())
    for output in written.output:
        output.label_filename = ""  # the server has no repository folder to point at
    assert served == written


def test_text_format_escapes_strings() -> None:
    manifest = {"kind": "onnx", "folder": "/x", "files": {"model.onnx": {"sha256": "ab", "bytes": 1}},
                "class_names": ['band "neutrophil"', "back\\slash", "naïve\tcell"], "precision": "fp32",
                "inputs": [{"name": "images", "dtype": "uint8", "shape": ["batch", 4, 4, 3]}],
                "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 3]}]}
    config = text_format.Parse(to_pbtxt(model_config(manifest, "m")), model_config_pb2.ModelConfig())
    assert json.loads(config.parameters["class_names"].string_value) == manifest["class_names"]


def test_refusals(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    write_repository(tiny_artifact.folder, tmp_path)
    with pytest.raises(ConfigError, match="already exists: give another --name or repository, or add --overwrite"):
        write_repository(tiny_artifact.folder, tmp_path)
    assert write_repository(tiny_artifact.folder, tmp_path, overwrite=True) == tmp_path / "dorl"
    with pytest.raises(ConfigError, match="model name '../up' is not allowed"):
        write_repository(tiny_artifact.folder, tmp_path, name="../up")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact.folder, broken)
    (broken / "model.onnx").write_bytes(b"flipped")
    with pytest.raises(ArtifactError, match="does not match the sha256|has 7 bytes"):
        write_repository(broken, tmp_path / "other")
    assert not (tmp_path / "other" / "dorl").exists()
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "profile.npz").write_bytes(b"x")
    write_manifest(profile, "site-profile", ["profile.npz"])
    with pytest.raises(ArtifactError, match="is a 'site-profile' artifact, but this needs 'onnx' or 'engine'"):
        write_repository(profile, tmp_path / "other")


def test_overwrite_replaces_only_a_triton_model_never_the_artifact(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    from dorl.safe_write import OutputError

    repository = tmp_path / "repo"
    shutil.copytree(tiny_artifact.folder, repository / "art")
    with pytest.raises(OutputError, match="input"):
        write_repository(repository / "art", repository, name="art", overwrite=True)
    assert (repository / "art" / "manifest.json").is_file()  # the input is whole
    with pytest.raises(OutputError, match="lies inside the input"):
        write_repository(repository / "art", repository / "art" / "models")
    with pytest.raises(OutputError, match="lies inside the dorl artifact"):
        write_repository(tiny_artifact.folder, repository / "art" / "models")
    (repository / "notes").mkdir()
    (repository / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a Triton model folder"):
        write_repository(tiny_artifact.folder, repository, name="notes", overwrite=True)
    assert (repository / "notes" / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_repository(tiny_artifact.folder, tmp_path / "afile")


def test_a_resealed_manifest_without_its_tensors_is_refused(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    from manifests import edit_manifest

    forged = tmp_path / "forged"
    shutil.copytree(tiny_artifact.folder, forged)
    edit_manifest(forged, lambda m: m.pop("inputs"))
    with pytest.raises(ArtifactError, match="inputs"):
        write_repository(forged, tmp_path / "repo")
    assert not (tmp_path / "repo" / "dorl").exists()
