"""What an export starts from: a bundle read once, or a model in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dorl.errors import ArtifactError
from dorl.manifests import BundleManifest


@dataclass(frozen=True)
class ExportSource:
    """A bundle folder (its manifest read and verified once) or a DoRLModel given directly."""

    bundle: BundleManifest | None
    model: Any = None

    @classmethod
    def of(cls, source: Any) -> ExportSource:
        """Read a bundle folder (str or Path) once, or wrap a DoRLModel.

        Raises:
            ArtifactError: the folder does not exist or is not a valid bundle.
        """
        if isinstance(source, ExportSource):
            return source
        if isinstance(source, (str, Path)):
            from dorl.manifests import read_bundle

            if not Path(source).exists():
                raise ArtifactError(f"bundle {source} does not exist: give the folder written by `dorl train`.")
            return cls(read_bundle(source))
        return cls(None, source)

    @property
    def image_size(self) -> int:
        return self.bundle.config.image_size if self.bundle else int(self.model.config.image_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names if self.bundle else self.model.config.class_names)

    @property
    def sha256(self) -> str | None:
        """The bundle's weights sha256 (what site profiles and derived graphs are tied to); None for a model."""
        return self.bundle.weights_sha256 if self.bundle else None

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.bundle.metadata) if self.bundle else {}

    def load(self) -> Any:
        """The model to export, in eval mode, LoRA merged."""
        from dorl.bundle import load_bundle, merged_copy

        return load_bundle(self.bundle) if self.bundle else merged_copy(self.model).eval()

    def feature_stats(self) -> dict[str, Any] | None:
        """The source domain's feature statistics recorded in the bundle (None for a model)."""
        from dorl.bundle import load_feature_stats

        return load_feature_stats(self.bundle) if self.bundle else None

