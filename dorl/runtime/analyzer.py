"""The cell analyzer: decode and resize images, run the artifact in batches, postprocess per cell.

One `Analyzer` wraps one runner (ONNX Runtime or TensorRT). Each image goes through the same
preprocessing as training (`dorl.data.images`), is batched into the graph's uint8 NHWC input,
and comes back as a `CellResult`: label, probabilities, feature, mask at the image's own size,
an uncertainty flag, or the error that stopped that one image. A bad image never stops the
rest of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.data.images import ImageSource, describe_source, load_rgb, resize_square
from dorl.errors import ArtifactError, ConfigError, ImageError
from dorl.runtime import postprocess
from dorl.runtime.base import BaseRunner
from dorl.runtime.loader import load_runner

if TYPE_CHECKING:  # typing.Self is Python 3.11+; JetPack 6 runs 3.10, where this never imports
    from typing_extensions import Self

# Output roles of the deployed graph, named once by the export wrapper (see DESIGN.md).
PROBS, LOGITS, FEATURE, MASK_LOGITS = "probs", "logits", "feature", "mask_logits"


@dataclass(frozen=True, eq=False)
class CellResult:
    """What the analyzer says about one image."""

    source: str  # path, or a description of bytes / an array
    label: str | None  # None when the image failed or the outputs were not finite
    probs: dict[str, float]  # class name -> probability; empty on error
    feature: np.ndarray | None  # the classification feature [D]; None on error
    mask: np.ndarray | None  # boolean cell mask at the image's original size
    uncertain: bool  # top probability below the threshold, or non-finite outputs
    error: str | None = None  # why this image could not be analysed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def confidence(self) -> float | None:
        """The top class probability (None on error)."""
        return max(self.probs.values()) if self.probs else None

    @classmethod
    def failed(cls, source: str, error: str) -> CellResult:
        return cls(source=source, label=None, probs={}, feature=None, mask=None, uncertain=True, error=error)


class Analyzer:
    """Classify and segment cell images with an exported artifact (a context manager)."""

    def __init__(
        self,
        artifact: str | Path,
        backend: str = "auto",
        batch_size: int = 8,
        threshold: float = 0.5,
        threads: int | None = None,
        site: str | Path | None = None,
    ) -> None:
        """Load (not yet activate) the runner for `artifact`.

        Args:
            artifact: an "onnx" or "engine" artifact folder.
            backend: "auto", "onnxruntime" or "tensorrt" (see `load_runner`).
            batch_size: images per inference call (at most an engine's max batch).
            threshold: a top probability below this marks a cell uncertain.
            threads: ONNX Runtime intra-op threads (None: its default).
            site: a site profile folder written by `dorl adapt` for this artifact (None: unadapted).
        """
        options = {"threads": threads} if threads is not None else {}
        runner = load_runner(artifact, backend, **options)
        manifest = getattr(runner, "manifest", None) or read_manifest(artifact, verify=False)
        self._setup(runner, list(manifest.get("class_names", [])), batch_size, threshold, manifest.get("image_size"))
        if site is not None:
            self.use_site(site, manifest)

    def use_site(self, site: str | Path, manifest: dict[str, Any]) -> None:
        """Apply a site profile between the graph's `feature` output and the head, on the host."""
        from dorl.runtime.head import load_head
        from dorl.runtime.site_profile import artifact_id, load_profile

        head, _ = load_head(manifest)
        self.site_profile = load_profile(site, artifact_id(manifest))
        self.site_head = head

    @classmethod
    def from_runner(
        cls,
        runner: BaseRunner,
        class_names: Sequence[str],
        batch_size: int = 8,
        threshold: float = 0.5,
        image_size: int | None = None,
    ) -> Analyzer:
        """An analyzer around an existing runner (e.g. a TensorRT runner built elsewhere).

        Args:
            runner: a runner whose single input is uint8 [batch, S, S, 3].
            class_names: the head's classes, in output order.
            image_size: S, when the input spec does not fix it.
        """
        analyzer = cls.__new__(cls)
        analyzer._setup(runner, list(class_names), batch_size, threshold, image_size)
        return analyzer

    def _setup(
        self, runner: BaseRunner, class_names: list[str], batch_size: int, threshold: float, image_size: Any
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be within [0, 1], got {threshold}.")
        if len(runner.input_specs) != 1:
            raise ArtifactError(f"{runner.name} has inputs {sorted(runner.input_specs)}; the analyzer needs one image input.")
        spec = next(iter(runner.input_specs.values()))
        size = spec.shape[1] if len(spec.shape) == 4 and isinstance(spec.shape[1], int) else image_size
        if spec.dtype != "uint8" or len(spec.shape) != 4 or spec.shape[3] != 3 or not isinstance(size, int):
            raise ArtifactError(
                f"{runner.name} input {spec.name!r} is {spec.dtype} {list(spec.shape)}; the analyzer needs uint8 "
                "[batch, size, size, 3] with a known size: re-export the model with dorl."
            )
        if not class_names:
            raise ArtifactError(f"{runner.name} records no class names: re-export the artifact with dorl.")
        head = runner.output_specs.get(PROBS) or runner.output_specs.get(LOGITS)
        if head is None:
            raise ArtifactError(f"{runner.name} has no {PROBS!r} or {LOGITS!r} output: re-export the artifact.")
        if isinstance(head.shape[-1], int) and head.shape[-1] != len(class_names):
            raise ArtifactError(
                f"{runner.name} outputs {head.shape[-1]} classes but names {len(class_names)}: re-export the artifact."
            )
        self.runner, self.class_names, self.input_name, self.image_size = runner, class_names, spec.name, size
        max_batch = getattr(runner, "max_batch", None)  # an engine's optimisation profile caps the batch
        self.batch_size = min(batch_size, max_batch) if isinstance(max_batch, int) else batch_size
        self.threshold = threshold

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the runner (analysing again re-activates it)."""
        self.runner.deactivate()

    # -- analysis ----------------------------------------------------------------------------
    def analyze(self, images: Sequence[ImageSource]) -> list[CellResult]:
        """Analyse images; the result list has one entry per image, in order.

        Args:
            images: paths, encoded bytes, or arrays (see `dorl.data.images.load_rgb`).
        """
        return list(self.iter_analyze(images))

    def iter_analyze(self, images: Iterable[ImageSource]) -> Iterator[CellResult]:
        """Like `analyze`, yielding results batch by batch (for progress reporting)."""
        chunk: list[ImageSource] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == self.batch_size:
                yield from self._analyze_batch(chunk)
                chunk = []
        if chunk:
            yield from self._analyze_batch(chunk)

    def _analyze_batch(self, sources: list[ImageSource]) -> list[CellResult]:
        results: list[CellResult | None] = [None] * len(sources)
        pixels, sizes, slots = [], [], []
        for i, source in enumerate(sources):
            try:
                rgb = load_rgb(source)
                pixels.append(resize_square(rgb, self.image_size))
                sizes.append((rgb.shape[0], rgb.shape[1]))
                slots.append(i)
            except ImageError as exc:
                results[i] = CellResult.failed(describe_source(source), str(exc))
        if slots:
            self.runner.activate()
            outputs = self.runner.infer({self.input_name: np.stack(pixels)})
            probs, finite = self.class_probabilities(outputs), postprocess.finite_rows(outputs)
            for row, (i, size) in enumerate(zip(slots, sizes)):
                results[i] = self._cell(describe_source(sources[i]), outputs, row, probs[row], size, bool(finite[row]))
        return [r for r in results if r is not None]

    def class_probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The class probabilities [B, C] of a batch: the one place the head's output is read.

        A later site profile (issue 7) re-centres the `feature` output and applies the head here.
        """
        profile = getattr(self, "site_profile", None)
        if profile is not None and FEATURE in outputs:
            return postprocess.softmax(self.site_head.logits(profile.apply(outputs[FEATURE])))
        if PROBS in outputs:
            return outputs[PROBS]
        return postprocess.softmax(outputs[LOGITS])

    def _cell(
        self,
        source: str,
        outputs: dict[str, np.ndarray],
        row: int,
        probs: np.ndarray,
        size_hw: tuple[int, int],
        finite: bool,
    ) -> CellResult:
        label, uncertain = postprocess.decide(probs, self.class_names, self.threshold, finite)
        mask = postprocess.cell_mask(outputs[MASK_LOGITS][row], size_hw) if MASK_LOGITS in outputs else None
        feature = outputs[FEATURE][row].copy() if FEATURE in outputs else None
        return CellResult(
            source=source,
            label=label,
            probs={name: float(p) for name, p in zip(self.class_names, probs)},
            feature=feature,
            mask=mask,
            uncertain=uncertain,
        )
