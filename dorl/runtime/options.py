"""How the analyzer is run: the options `dorl predict` on single cells and field analysis on whole
frames share, checked the same way before any model is loaded. Torch-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dorl.artifacts import read_manifest
from dorl.contract import check_tta
from dorl.errors import ArtifactError, ConfigError
from dorl.runtime.analyzer import Analyzer, batch_cap, is_count
from dorl.runtime.loader import BACKENDS, RUNNABLE_KINDS


@dataclass(frozen=True)
class AnalyzerOptions:
    """The artifact to run and how: batch size, uncertainty threshold, backend, site profile, "no cell" check,
    test-time augmentation."""

    artifact: Path
    batch_size: int = 8
    threshold: float = 0.5
    backend: str = "auto"
    site: Path | None = None
    check_cells: bool = True
    tta: str | None = None  # None: what the artifact records

    def check_values(self) -> None:
        """Refuse a bad batch size, threshold, backend or test-time augmentation (nothing is read).

        Raises:
            ConfigError: with the option's name and what it must be.
        """
        if not is_count(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a whole number of at least 1, got {self.batch_size!r}.")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be within [0, 1], got {self.threshold}.")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}.")
        if self.tta is not None:
            check_tta(self.tta, "--tta")

    def check_artifact(self) -> CheckedArtifact:
        """Read the artifact's and the site profile's manifests (no model is loaded) and cap the batch.

        Raises:
            ArtifactError: the artifact or profile is missing, malformed, or not something that runs.
        """
        manifest = read_manifest(self.artifact, verify=False)
        if manifest["kind"] not in RUNNABLE_KINDS:
            raise ArtifactError(f"{self.artifact} is a {manifest['kind']!r} artifact, which cannot be run: give an "
                                "ONNX artifact from `dorl export` or an engine from `dorl build`.")
        if self.site is not None:
            read_manifest(self.site, "site-profile", verify=False)
        cap = batch_cap(manifest)
        notes = []
        if self.batch_size > cap:
            notes.append(f"--batch-size {self.batch_size} is above this artifact's limit of {cap} cells per call: "
                         f"using {cap}.")
        names = [str(n) for n in manifest.get("class_names") or []]
        return CheckedArtifact(names, min(self.batch_size, cap), notes)

    def open(self, batch_size: int, warn: Callable[[str], None] | None = None) -> Analyzer:
        """The analyzer these options describe, with the (capped) batch size."""
        return Analyzer(self.artifact, backend=self.backend, batch_size=batch_size, threshold=self.threshold,
                        site=self.site, check_cells=self.check_cells, warn=warn, tta=self.tta)


@dataclass(frozen=True)
class CheckedArtifact:
    """What checking the artifact found: its class names, the batch size to use, notes for the user."""

    class_names: list[str]
    batch_size: int
    notes: list[str]
