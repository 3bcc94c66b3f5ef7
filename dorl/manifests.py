"""Typed, read-once descriptions of the artifact folders: a frozen dataclass per kind.

`read_artifact(path)` reads and verifies a folder once (`dorl.artifacts.read_manifest`) and
returns the dataclass of its kind; a command passes that object on instead of reading the
folder again, and every file is hashed once per process. `Manifest.data` keeps the manifest as
written (JSON), for the fields a kind does not type and for code that still takes the dict.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dorl.artifacts import read_manifest
from dorl.config import ModelConfig, from_dict
from dorl.contract import HEAD_FILE, MODEL_FILE, WEIGHTS_FILE, TensorSpec
from dorl.errors import ArtifactError, ConfigError

M = TypeVar("M", bound="Manifest")


@dataclass(frozen=True)
class FileEntry:
    """One listed file: its sha256 and size."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What every artifact's manifest holds."""

    folder: Path
    kind: str
    format_version: int
    files: Mapping[str, FileEntry]
    data: Mapping[str, Any] = field(repr=False)  # the manifest as written

    def path(self, name: str) -> Path:
        """The absolute path of a listed file."""
        if name not in self.files:
            raise ArtifactError(f"{self.folder} does not list {name}: re-create the artifact with this dorl.")
        return self.folder / name

    def sha256(self, name: str) -> str:
        """The recorded sha256 of a listed file."""
        self.path(name)
        return self.files[name].sha256

    def to_dict(self) -> dict[str, Any]:
        """The manifest as `read_manifest` returns it (with `"folder"`), for code that takes the dict."""
        return {**self.data, "folder": str(self.folder)}

    @classmethod
    def parse(cls: type[M], raw: Mapping[str, Any]) -> M:  # noqa: PYI019  (typing.Self is Python 3.11+)
        """The typed manifest of `raw` (a verified manifest dict from `read_manifest`)."""
        try:
            return cls(**cls._common(raw), **cls._fields(raw))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactError(f"the manifest in {raw.get('folder')} lacks or garbles a {cls.__name__} field "
                                f"({type(exc).__name__}: {exc}): re-create the artifact with this dorl.") from exc

    @staticmethod
    def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
        files = {name: FileEntry(str(e["sha256"]), int(e["bytes"])) for name, e in raw["files"].items()}
        data = {k: v for k, v in raw.items() if k != "folder"}
        return {"folder": Path(raw["folder"]), "kind": str(raw["kind"]), "format_version": int(raw["format_version"]),
                "files": files, "data": data}

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class BundleManifest(Manifest):
    """A trained model: weights, config, class names, optional source feature statistics."""

    config: ModelConfig
    class_names: tuple[str, ...]
    metadata: Mapping[str, Any]

    @property
    def weights_sha256(self) -> str:
        return self.files[WEIGHTS_FILE].sha256

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"config": from_dict(ModelConfig, raw["config"]), "class_names": tuple(raw["class_names"]),
                "metadata": dict(raw.get("metadata") or {})}


def _specs(entries: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_dict(entry) for entry in entries)


def parse_framing(raw: Mapping[str, Any]) -> Any:
    """The `dorl.data.framing.FramingConfig` a graph's manifest records (copied from its bundle), or
    None when it records none (a whole-image model).

    Raises:
        ArtifactError: the record is not a valid framing.
    """
    record = raw.get("framing")
    if record is None:
        return None
    from dorl.data.framing import FramingConfig

    try:
        return from_dict(FramingConfig, dict(record))
    except (TypeError, ValueError, ConfigError) as exc:
        where = f"the manifest in {raw['folder']}" if raw.get("folder") else "the model's metadata"
        raise ArtifactError(f"{where} records an invalid framing {record!r} ({exc}): "
                            "re-train or re-export it with this dorl.") from exc


def parse_tta(raw: Mapping[str, Any]) -> str:
    """The test-time augmentation a graph's manifest (or a bundle's metadata) records for the analyzer
    to apply by default (`dorl.contract.TTA_MODES`); "none" when it records none (made before dorl
    recorded it).

    Raises:
        ArtifactError: the record is not a known mode.
    """
    from dorl.contract import TTA_MODES

    record = raw.get("tta", "none")
    if record not in TTA_MODES:
        where = f"the manifest in {raw['folder']}" if raw.get("folder") else "the model's metadata"
        raise ArtifactError(f"{where} records an unknown test-time augmentation {record!r} (known: "
                            f"{', '.join(TTA_MODES)}): re-train or re-export it with this dorl.")
    return str(record)


@dataclass(frozen=True)
class GraphDescription(Manifest):
    """What ONNX graphs and engines share: I/O, classes, input size, the head beside them."""

    precision: str
    class_names: tuple[str, ...]
    image_size: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    head_kind: str | None
    source_bundle_sha256: str | None
    framing: Any  # dorl.data.framing.FramingConfig: how an image becomes the encoder's input; None: whole image
    tta: str  # the test-time augmentation the analyzer applies unless told otherwise (dorl.contract.TTA_MODES)

    @property
    def head_path(self) -> Path | None:
        """The host-side head (site profiles), when the artifact carries one."""
        return self.folder / HEAD_FILE if self.head_kind and HEAD_FILE in self.files else None

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        head = raw.get("head") or {}
        size = raw.get("image_size")
        return {"precision": str(raw.get("precision", "fp32")), "class_names": tuple(raw.get("class_names") or ()),
                "image_size": int(size) if size is not None else None, "inputs": _specs(raw["inputs"]),
                "outputs": _specs(raw["outputs"]), "head_kind": head.get("kind"),
                "source_bundle_sha256": raw.get("source_bundle_sha256"), "framing": parse_framing(raw),
                "tta": parse_tta(raw)}


@dataclass(frozen=True)
class OnnxManifest(GraphDescription):
    """An exported ONNX graph (fp32, fp16 or int8) and its parity record."""

    parity: Mapping[str, Any]
    source_fp32_sha256: str | None

    @property
    def model_path(self) -> Path:
        """The graph file: model.onnx, or the only .onnx file listed."""
        graphs = [name for name in self.files if name.endswith(".onnx")]
        name = MODEL_FILE if MODEL_FILE in graphs else (graphs[0] if len(graphs) == 1 else None)
        if name is None:
            raise ArtifactError(f"{self.folder} lists {len(graphs)} .onnx files and none is {MODEL_FILE}: re-export it.")
        return self.folder / name

    @property
    def model_sha256(self) -> str:
        return self.files[self.model_path.name].sha256

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(raw), "parity": dict(raw.get("parity") or {}),
                "source_fp32_sha256": raw.get("source_fp32_sha256")}


@dataclass(frozen=True)
class EngineManifest(GraphDescription):
    """A TensorRT engine built from an ONNX artifact for one GPU and TensorRT version."""

    max_batch: int
    source_onnx: Mapping[str, Any]

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(raw), "max_batch": int(raw["max_batch"]), "source_onnx": dict(raw["source_onnx"])}


@dataclass(frozen=True)
class SiteProfileManifest(Manifest):
    """A site profile from `dorl adapt`: the affine map of one lab's features onto the source's."""

    site: str
    method: str
    n_cells: int
    artifact_sha256: str

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"site": str(raw["site"]), "method": str(raw["method"]), "n_cells": int(raw["n_cells"]),
                "artifact_sha256": str(raw["artifact_sha256"])}


@dataclass(frozen=True)
class CalibrationSetManifest(Manifest):
    """An INT8 calibration set: the list of its cells (and their sha256), drawn with a seed."""

    size: int
    seed: int

    @classmethod
    def _fields(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        return {"size": int(raw["size"]), "seed": int(raw["seed"])}


TYPES: dict[str, type[Manifest]] = {
    "bundle": BundleManifest,
    "onnx": OnnxManifest,
    "engine": EngineManifest,
    "site-profile": SiteProfileManifest,
    "calibration-set": CalibrationSetManifest,
}


def read_artifact(path: str | Path, kinds: str | tuple[str, ...] | None = None, verify: bool = True) -> Manifest:
    """Read and check an artifact folder once; the typed manifest of its kind.

    Args:
        path: the artifact folder (or a file in it).
        kinds: the kind(s) the caller accepts; None accepts any.
        verify: hash every listed file and check the class names bound into them (see
            `dorl.artifacts.read_manifest`).

    Raises:
        ArtifactError: see `read_manifest`; or a field of its kind is missing or malformed.
    """
    raw = read_manifest(path, kinds, verify)
    return TYPES[raw["kind"]].parse(raw)


def read_bundle(path: str | Path, verify: bool = True) -> BundleManifest:
    """A bundle folder's typed manifest (see `read_artifact`)."""
    manifest = read_artifact(path, "bundle", verify)
    assert isinstance(manifest, BundleManifest)
    return manifest


def read_onnx(path: str | Path, verify: bool = True) -> OnnxManifest:
    """An ONNX artifact folder's typed manifest (see `read_artifact`)."""
    manifest = read_artifact(path, "onnx", verify)
    assert isinstance(manifest, OnnxManifest)
    return manifest
