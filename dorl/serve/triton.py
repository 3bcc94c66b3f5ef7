"""A model repository for Triton Inference Server, written from an ONNX or TensorRT engine artifact.

Layout (Triton's): `DIR/<name>/config.pbtxt`, `DIR/<name>/labels.txt` (the class names, which
Triton's classification extension returns with each top-k answer) and `DIR/<name>/1/` holding
`model.onnx` plus any external data files under their own names (the graph refers to them by
name), or `model.plan` for an engine. The config's tensor names, types and dims come from the
artifact's manifest, the batch dimension becomes `max_batch_size`, and the manifest's identity
(class names, precision, sha256 of the graph or engine) goes into `parameters`, so a Triton server
reports the same metadata as `dorl serve` does for the same artifact.

The config is built as a dict of ModelConfig's field names (the form Triton's own
`/v2/models/<name>/config` answers with) and written in protobuf text format.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dorl.artifacts import MANIFEST_NAME, sha256_file
from dorl.errors import ArtifactError, ConfigError
from dorl.manifests import read_artifact
from dorl.safe_write import OutputError, check_output
from dorl.serve.config import check_model_name

PLATFORMS = {"onnx": ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
             "engine": ("tensorrt_plan", "tensorrt", "model.plan")}
TRITON_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
                "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64"}
DEVICES = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
CLASS_OUTPUTS = ("probs", "logits")  # outputs whose last axis is the classes: they get labels.txt
HOST_ONLY_FILES = ("head.safetensors",)  # the host-side head: not part of the graph Triton runs
LABELS_FILE = "labels.txt"
VERSION = "1"
# ModelConfig fields whose values are enum names (written bare) and map fields (written as key/value entries).
_ENUM_FIELDS = {"data_type", "kind"}
_MAP_FIELDS = {"parameters"}


def model_file(manifest: Mapping[str, Any]) -> str:
    """The graph or engine file of a runnable artifact (the one Triton loads)."""
    suffix = ".onnx" if manifest["kind"] == "onnx" else ".engine"
    names = [name for name in manifest["files"] if name.endswith(suffix)]
    preferred = "model" + suffix
    name = preferred if preferred in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ArtifactError(f"{manifest.get('folder')} lists no single {suffix} file: re-export the artifact.")
    return name


def manifest_parameters(manifest: Mapping[str, Any], max_batch: int) -> dict[str, str]:
    """The artifact's identity as string parameters (shared by `dorl serve` metadata and Triton configs)."""
    name = model_file(manifest)
    params = {
        "class_names": json.dumps(list(manifest.get("class_names") or [])),
        "precision": str(manifest.get("precision", "")),
        "sha256": str(manifest["files"][name]["sha256"]),
        "source_bundle_sha256": str(manifest.get("source_bundle_sha256") or ""),
        "image_size": str(manifest.get("image_size", "")),
        "artifact_kind": str(manifest["kind"]),
        "max_batch_size": str(max_batch),
    }
    for key in ("tensorrt_version", "gpu_name", "compute_capability"):  # an engine's build target
        if manifest.get(key) is not None:
            params[key] = str(manifest[key])
    return params


def _tensor(entry: Mapping[str, Any], labels: bool) -> dict[str, Any]:
    dtype = str(entry["dtype"])
    if dtype not in TRITON_TYPES:
        raise ArtifactError(f"tensor {entry['name']!r} has dtype {dtype}, which Triton configs cannot describe.")
    shape = list(entry["shape"])
    if not shape or isinstance(shape[0], int):
        raise ArtifactError(f"tensor {entry['name']!r} has shape {shape} without a dynamic batch dimension: "
                            "re-export the artifact with dorl.")
    tensor = {"name": entry["name"], "data_type": TRITON_TYPES[dtype],
              "dims": [d if isinstance(d, int) else -1 for d in shape[1:]]}
    if labels and entry["name"] in CLASS_OUTPUTS:
        tensor["label_filename"] = LABELS_FILE
    return tensor


def model_config(manifest: Mapping[str, Any], name: str, max_batch: int | None = None, max_delay_us: int = 5000,
                 queue_size: int = 64, instances: int = 1, device: str = "auto", labels: bool = True) -> dict[str, Any]:
    """The Triton ModelConfig of an artifact, as a dict of ModelConfig's field names.

    Args:
        manifest: an "onnx" or "engine" manifest (see `dorl.artifacts.read_manifest`).
        name: the model's name (its directory in the repository).
        max_batch: max_batch_size; None: the engine's profile maximum, or 8 for an ONNX graph.
        max_delay_us: how long Triton's dynamic batcher waits to fill a batch.
        queue_size: requests Triton queues before refusing more.
        instances: model instances Triton runs in parallel.
        device: "auto", "gpu" or "cpu" (an engine runs on the GPU only).
        labels: point the class outputs at labels.txt.
    """
    check_model_name(name)
    kind = manifest.get("kind")
    if kind not in PLATFORMS:
        raise ArtifactError(f"{manifest.get('folder')} is a {kind!r} artifact: Triton serves an ONNX artifact "
                            "(`dorl export`) or a TensorRT engine (`dorl build`).")
    if device not in DEVICES:
        raise ConfigError(f"device {device!r} is not one of {', '.join(DEVICES)}.")
    if kind == "engine" and device == "cpu":
        raise ConfigError("a TensorRT engine runs on the GPU only: use --device gpu or auto.")
    if instances < 1 or queue_size < 1 or max_delay_us < 0:
        raise ConfigError("instances and queue size must be at least 1 and the delay not negative.")
    engine_max = manifest.get("max_batch") if kind == "engine" else None
    batch = max_batch if max_batch is not None else int(engine_max or 8)
    if batch < 1 or (engine_max is not None and batch > int(engine_max)):
        limit = f"the engine's profile maximum {engine_max}" if engine_max is not None else "a positive number"
        raise ConfigError(f"max batch {batch} is not allowed: give 1 up to {limit}.")
    platform, backend, _ = PLATFORMS[kind]
    return {
        "name": name,
        "platform": platform,
        "backend": backend,
        "max_batch_size": batch,
        "input": [_tensor(entry, False) for entry in manifest["inputs"]],
        "output": [_tensor(entry, labels) for entry in manifest["outputs"]],
        "dynamic_batching": {"max_queue_delay_microseconds": max_delay_us,
                             "default_queue_policy": {"max_queue_size": queue_size}},
        "instance_group": [{"count": instances, "kind": DEVICES[device]}],
        "parameters": {k: {"string_value": v} for k, v in manifest_parameters(manifest, batch).items()},
    }


# -- protobuf text format ------------------------------------------------------------------
def _quote(text: str) -> str:
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(c, c if c >= " " else f"\\{ord(c):03o}") for c in text) + '"'


def _scalar(field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if field in _ENUM_FIELDS:
        return str(value)
    return _quote(str(value))


def _message(fields: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines = []
    for field, value in fields.items():
        if field in _MAP_FIELDS:
            for key, entry in value.items():
                lines += [f"{pad}{field} {{", f"{pad}  key: {_quote(key)}", f"{pad}  value {{",
                          *_message(entry, indent + 2), f"{pad}  }}", f"{pad}}}"]
        elif isinstance(value, dict):
            lines += [f"{pad}{field} {{", *_message(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{field} {{", *_message(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{field}: [ {', '.join(_scalar(field, v) for v in value)} ]")
        else:
            lines.append(f"{pad}{field}: {_scalar(field, value)}")
    return lines


def to_pbtxt(config: Mapping[str, Any]) -> str:
    """A ModelConfig dict (see `model_config`) in protobuf text format, as config.pbtxt holds it."""
    return "\n".join(_message(config, 0)) + "\n"


# -- the repository --------------------------------------------------------------------------
def write_repository(artifact: str | Path, repository: str | Path, name: str = "dorl", overwrite: bool = False,
                     **options: Any) -> Path:
    """Write `repository/<name>/` for Triton from an ONNX or engine artifact.

    Args:
        artifact: the artifact folder (its files are checked against the manifest first).
        repository: the model repository folder (created; other models in it are left alone).
        name: the model's name.
        overwrite: replace an existing `repository/<name>/`.
        **options: `model_config`'s max_batch, max_delay_us, queue_size, instances, device.

    Returns:
        The model's folder.
    """
    manifest = read_artifact(artifact, ("onnx", "engine")).to_dict()  # typed: a manifest lacking a field is refused
    config = model_config(manifest, name, **options)
    target = Path(repository) / name
    check_output(target, overwrite=True, inputs=[artifact])  # never in, over or around the artifact or another
    if target.exists():
        if not (target / "config.pbtxt").is_file():
            raise OutputError(f"{target} exists and is not a Triton model folder (it has no config.pbtxt): give "
                              "another --name or repository, so that nothing in it is lost.")
        if not overwrite:
            raise ConfigError(f"{target} already exists: give another --name or repository, or add --overwrite.")
    stage = target.with_name(f".{name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / VERSION).mkdir(parents=True)
    try:
        _copy_model_files(manifest, stage / VERSION)
        (stage / LABELS_FILE).write_text("".join(f"{c}\n" for c in manifest.get("class_names") or []))
        (stage / "config.pbtxt").write_text(to_pbtxt(config))
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return target


def _copy_model_files(manifest: Mapping[str, Any], version_dir: Path) -> None:
    """Copy the graph (renamed to Triton's default name) and its data files; check every copy's sha256."""
    folder, main = Path(manifest["folder"]), model_file(manifest)
    target_name = PLATFORMS[manifest["kind"]][2]
    for name, entry in manifest["files"].items():
        if name in HOST_ONLY_FILES or name == MANIFEST_NAME:
            continue
        destination = version_dir / (target_name if name == main else name)
        shutil.copyfile(folder / name, destination)
        if sha256_file(destination) != entry["sha256"]:
            raise ArtifactError(f"copying {folder / name} to {destination} changed it: check the disk and try again.")
