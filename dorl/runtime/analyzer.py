"""The cell analyzer: decode and resize images, run the artifact in batches, decide per cell.

One `Analyzer` wraps one runner (ONNX Runtime or TensorRT). Each image goes through the same
preprocessing as training (`dorl.data.images`; a camera frame far larger than the model's input
is decoded at a reduced size), is batched into the graph's uint8 NHWC input, and comes back as a
`CellResult`: a label with its probabilities, "no cell" with the reasons (`cell_check`), or the
error that stopped that one image. A bad image never stops the rest of the batch, and nothing
but the current batch is held in memory.

A cell-centric artifact (its manifest records `framing` with input "cell") is run twice per
batch: pass 1 on the whole images gives the masks, the host cuts each cell out
(`dorl.runtime.cell_framing`), and pass 2 on the crops gives labels, probabilities and features.

With test-time augmentation (`tta="flips"`), the classifying pass (pass 2, or the only pass) also
runs on each flip of its input, one inference call per view, so an engine's max batch still bounds
every call; a cell's probabilities are the mean over its views (each through the site profile
when there is one). Its feature, "no cell" check and drift watch read the plain view.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dorl.artifacts import read_manifest
from dorl.contract import FEATURE, LOGITS, MASK_LOGITS, PROBS, check_tta, tta_views, view
from dorl.data.images import ImageSource, decode_image, describe_source, resize_square
from dorl.errors import ArtifactError, ConfigError, ImageError
from dorl.runtime import postprocess
from dorl.runtime.base import BaseRunner
from dorl.runtime.batch_results import BatchResults
from dorl.runtime.cell_check import CellCheck, FeatureDistance, stain_area
from dorl.runtime.cell_framing import Framed, frame_batch
from dorl.runtime.cell_result import CellResult
from dorl.runtime.loader import load_runner
from dorl.runtime.site_profile import DriftWatch, SiteProfile

if TYPE_CHECKING:  # typing.Self is Python 3.11+; JetPack 6 runs 3.10, where this never imports
    from typing_extensions import Self

__all__ = ["Analyzer", "CellResult", "batch_cap"]

# Cells per inference call at most, whatever is asked: a TinyViT DoRL graph holds about 15 MB of
# activations per cell in ONNX Runtime, so 64 cells stay near 1 GB. An engine's own max batch
# (its optimisation profile) lowers it further.
MAX_BATCH = 64


def is_count(value: object) -> bool:
    """Whether `value` is a whole number (a Python or numpy integer; not a bool, float or string)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def batch_cap(manifest: dict[str, Any]) -> int:
    """The largest batch an artifact is run with: its engine's max batch, else MAX_BATCH."""
    engine_max = manifest.get("max_batch")
    return min(MAX_BATCH, engine_max) if isinstance(engine_max, int) and engine_max >= 1 else MAX_BATCH


class Analyzer:
    """Classify and segment cell images with an exported artifact (a context manager)."""

    def __init__(
        self,
        artifact: str | Path | BaseRunner,
        backend: str = "auto",
        batch_size: int = 8,
        threshold: float = 0.5,
        threads: int | None = None,
        site: str | Path | None = None,
        *,
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        max_batch: int | None = None,
        check_cells: bool = True,
        warn: Callable[[str], None] | None = None,
        framing: Any = None,
        tta: str | None = None,
    ) -> None:
        """Load (not yet activate) the runner for `artifact`.

        Args:
            artifact: an "onnx" or "engine" artifact folder, or a runner built elsewhere (then
                `class_names` is required and no site profile or feature check is available).
            backend: "auto", "onnxruntime" or "tensorrt" (see `load_runner`).
            batch_size: images per inference call (capped by `batch_cap`).
            threshold: a top probability below this marks a cell uncertain.
            threads: ONNX Runtime intra-op threads (None: its default).
            site: a site profile folder written by `dorl adapt` for this artifact (None: unadapted).
            class_names: the head's classes in output order, for a runner given directly.
            image_size: the input side, when the runner's input spec does not fix it.
            max_batch: the most images the runner takes per call (an engine's profile), for a
                runner given directly; an artifact's manifest says it itself.
            check_cells: decide "no cell" from the mask, the feature and, when the artifact records
                them (`dorl non-cells`), the stain floor and the non-cell discriminant (see `cell_check`).
            warn: called with a sentence when the cells look like another lab than the site profile's.
            framing: a `dorl.data.framing.FramingConfig`, for a runner given directly (an artifact's
                manifest records its own); input "cell" runs the two passes.
            tta: test-time augmentation, a key of `dorl.contract.TTA_MODES`: "none", or "flips" (the
                classifying pass also runs on the input's three flips and the probabilities are averaged);
                None: what the artifact's manifest records (`dorl train` records the best row of
                `dorl evaluate`'s table), "none" for a runner given directly.
        """
        if not is_count(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number of at least 1, got {batch_size!r}.")
        if tta is not None:
            check_tta(tta)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be within [0, 1], got {threshold}.")
        self.site: SiteProfile | None = None
        self.drift_watch: DriftWatch | None = None
        self.head: Any = None
        distance: FeatureDistance | None = None
        source: dict[str, np.ndarray] | None = None
        recorded = "none"  # the artifact's test-time augmentation; a runner given directly records none
        if isinstance(artifact, BaseRunner):
            if class_names is None:
                raise ConfigError("an analyzer around a runner needs the class names of its head.")
            runner, names, cap = artifact, list(class_names), MAX_BATCH
        else:
            from dorl.manifests import parse_framing, parse_tta

            manifest = read_manifest(artifact, verify=False)  # the runner verifies the files
            framing = framing or parse_framing(manifest)
            recorded = parse_tta(manifest)
            runner = load_runner(artifact, backend, **({"threads": threads} if threads is not None else {}))
            names = list(class_names or manifest.get("class_names") or [])
            image_size = image_size or manifest.get("image_size")
            cap = batch_cap(manifest)
            source = self._load_head(manifest, site is not None)
            if source is not None:
                distance = FeatureDistance.from_source(source)
                self.drift_watch = DriftWatch.of_source(source, warn)
            if site is not None:
                self._use_site(site, manifest, source, warn)
        self.tta = tta if tta is not None else recorded
        if max_batch is not None:
            cap = min(cap, max_batch)
        self.runner, self.class_names = runner, names
        self.input_name, self.image_size = self._check_contract(runner, names, image_size)
        self.framing = framing if framing is not None and framing.cell else None
        if self.framing is not None and self.framing.mask == "pseudo":
            from dorl.deps import require

            require("scipy", "this artifact's cell crop (framing mask 'pseudo': dorl.data.pseudo_masks)")
        if self.framing is not None and self.framing.mask == "segmenter" and MASK_LOGITS not in runner.output_specs:
            raise ArtifactError(f"{runner.name} is cell-centric with the segmenter's mask but has no {MASK_LOGITS!r} "
                                "output: re-export the artifact with dorl.")
        self.batch_size = min(batch_size, cap)
        self.threshold = threshold
        self.cell_check: CellCheck | None = _cell_check(source, distance, artifact) if check_cells else None

    @classmethod
    def from_runner(cls, runner: BaseRunner, class_names: Sequence[str], batch_size: int = 8,
                    threshold: float = 0.5, image_size: int | None = None, max_batch: int | None = None,
                    tta: str | None = None) -> Analyzer:
        """An analyzer around an existing runner (e.g. a TensorRT runner built elsewhere).

        Args:
            runner: a runner whose single input is uint8 [batch, S, S, 3].
            class_names: the head's classes, in output order.
            image_size: S, when the input spec does not fix it.
            max_batch: the runner's largest batch (an engine's optimisation profile), if it has one.
            tta: test-time augmentation ("none" or "flips"; None: "none").
        """
        return cls(runner, batch_size=batch_size, threshold=threshold, class_names=class_names, image_size=image_size,
                   max_batch=max_batch, tta=tta)

    def _load_head(self, manifest: dict[str, Any], needed: bool) -> dict[str, np.ndarray] | None:
        """The host-side head and source statistics, when the artifact carries them (or `needed`)."""
        from dorl.runtime.head import HEAD_FILE, load_head

        if not needed and not (manifest.get("head") and HEAD_FILE in manifest.get("files", {})):
            return None
        self.head, source = load_head(manifest)
        return source

    def _use_site(self, site: str | Path, manifest: dict[str, Any], source: dict[str, np.ndarray] | None,
                  warn: Callable[[str], None] | None) -> None:
        """Apply a site profile between the graph's `feature` output and the head, on the host."""
        from dorl.runtime.site_profile import artifact_id, load_profile

        self.site = load_profile(site, artifact_id(manifest), source=source)
        self.drift_watch = DriftWatch.of_site(self.site, warn)

    @staticmethod
    def _check_contract(runner: BaseRunner, class_names: list[str], image_size: Any) -> tuple[str, int]:
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
        return spec.name, size

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
        """Like `analyze`, yielding each batch's results as soon as the batch is done.

        Only the current batch is held: the iterable is consumed one batch at a time.

        Raises:
            ConfigError: `images` is one image (a path, bytes or an HxW(xC) array) or None, not a
                collection of them.
        """
        if images is None or isinstance(images, (str, Path, bytes, bytearray)) or (
                isinstance(images, np.ndarray) and images.ndim != 4):
            raise ConfigError("analyze takes a list (or other iterable) of images, not one image: pass [image]; "
                              "an array holds a batch only as N x H x W x C.")
        chunk: list[ImageSource] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == self.batch_size:
                yield from self.analyze_batch(chunk)
                chunk = []
        if chunk:
            yield from self.analyze_batch(chunk)

    def analyze_batch(self, sources: Sequence[ImageSource]) -> list[CellResult]:
        """Analyse images in inference calls of at most `batch_size` (two per batch for a
        cell-centric artifact); one result per image, in order."""
        if len(sources) > self.batch_size:
            return [r for start in range(0, len(sources), self.batch_size)
                    for r in self.analyze_batch(sources[start:start + self.batch_size])]
        results: list[CellResult | None] = [None] * len(sources)
        pixels, slots, decoded_rgb = [], [], []
        for i, source in enumerate(sources):
            try:
                decoded = decode_image(source, reduce_for=self.image_size)
            except ImageError as exc:
                results[i] = CellResult.failed(describe_source(source), str(exc))
                continue
            pixels.append(resize_square(decoded.rgb, self.image_size))
            slots.append((i, decoded.size_hw, decoded.notes, self._stain(pixels[-1])))
            if self.framing is not None:
                decoded_rgb.append(decoded.rgb)  # the crop is cut from these pixels, its box mapped to the image's
        if slots:
            self.runner.activate()
            classified = np.stack(pixels)
            outputs = self.runner.infer({self.input_name: classified})
            framed: list[Framed | None] = [None] * len(slots)
            if self.framing is not None:
                outputs, framed, failures, classified = self._second_pass(outputs, decoded_rgb)
                for row, error in failures.items():
                    i = slots[row][0]
                    results[i] = CellResult.failed(describe_source(sources[i]), error)
            views = [self.runner.infer({self.input_name: view(classified, name)}) for name in tta_views(self.tta)[1:]]
            batch = BatchResults(self, outputs, views)
            for row, (i, size_hw, notes, stain) in enumerate(slots):
                if results[i] is None:
                    where = framed[row]
                    if where is not None:
                        where = where.in_image(decoded_rgb[row].shape[:2], size_hw)
                    results[i] = batch.cell(row, describe_source(sources[i]), size_hw, notes, where, stain)
        return [r for r in results if r is not None]

    def _stain(self, pixels: np.ndarray) -> float | None:
        """The image's largest stained share (`cell_check.stain_area`), when the artifact records a floor."""
        if self.cell_check is None or self.cell_check.min_stain is None:
            return None
        return stain_area(pixels)

    def _second_pass(self, whole: dict[str, np.ndarray], images: list[np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], list[Framed | None], dict[int, str], np.ndarray]:
        """Cut each image's cell using pass 1's outputs, run the graph on the crops.

        Returns:
            The batch's outputs (pass 2's, with pass 1's mask logits: the record's mask is the
            whole image's), each row's crop, the rows whose crop could not be made (row -> why),
            and the crops (pass 2's input).
        """
        assert self.framing is not None
        masks = whole.get(MASK_LOGITS)
        crops, framed, failures = frame_batch(images, masks, self.framing, self.image_size)
        outputs = dict(self.runner.infer({self.input_name: crops}))
        if masks is not None:
            outputs[MASK_LOGITS] = masks
        return outputs, framed, failures, crops

    def class_probabilities(self, outputs: dict[str, np.ndarray], adapted: np.ndarray | None = None) -> np.ndarray:
        """The class probabilities [B, C] of a batch: the one place the head's output is read.

        Args:
            outputs: the graph's outputs.
            adapted: the site profile's map of the `feature` output, when already computed.
        """
        if self.site is not None and FEATURE in outputs:
            features = adapted if adapted is not None else self.site.apply(outputs[FEATURE])
            return postprocess.softmax(self.head.logits(features))
        if PROBS in outputs:
            return outputs[PROBS]
        return postprocess.softmax(outputs[LOGITS])


def _cell_check(source: dict[str, np.ndarray] | None, distance: FeatureDistance | None, artifact: Any) -> CellCheck:
    """The "no cell" check with what the artifact records, refused with a sentence when malformed."""
    try:
        return CellCheck.of_source(source, distance)
    except ValueError as exc:
        raise ArtifactError(f"the \"no cell\" check recorded in {artifact} cannot be used ({exc}): re-run "
                            "`dorl non-cells` on the original artifact.") from exc
