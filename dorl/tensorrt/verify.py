"""Does a built engine compute what its ONNX graph computes? Checked on real cells before it is kept.

`dorl build` runs N real cells (the bundled sample, or images the user gives) through the new
engine and through the ONNX graph it was built from (ONNX Runtime, CPU), as the analyzer runs
them (both passes of a cell-centric artifact, see `dorl.export.check_cells`), and compares them the
way the export's parity checks do (`dorl.export.parity.compare`): probs max abs diff, top-1
agreement (near ties counted as agreeing) and mask IoU. An engine past its precision's thresholds
is refused; the numbers go into its manifest either way they are kept. The comparison is numpy;
only `verify_engine` needs TensorRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.errors import ConfigError, DorlError
from dorl.export.check_cells import CheckCells

DEFAULT_VERIFY_CELLS = 64
BATCH = 8
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "assets" / "sample"


@dataclass(frozen=True)
class Thresholds:
    """How far an engine may drift from its source graph on real cells."""

    max_probs_diff: float  # max |probs_engine - probs_onnx| over the cells
    min_agreement: float  # top-1 agreement, near ties (reference top-2 margin ≤ tie_margin) counted as agreeing
    min_mask_iou: float  # mean per-cell IoU of the cell masks
    tie_margin: float = 0.05  # as the FP16 export's check (dorl.export.parity.FP16_TIE_MARGIN)


THRESHOLDS = {
    # FP16 engine vs the graph it came from: FP16 rounding moved probs by up to ~0.04 on SAM ViT-B
    # (the FP16 export's own check), and no decisive top-1 flip is allowed (the export's 99.5 %);
    # mask pixels flip only on the cell's rim, where the two mask logits are within FP16 rounding.
    "fp16": Thresholds(max_probs_diff=0.05, min_agreement=0.995, min_mask_iou=0.95),
    # INT8 engine vs its Q/DQ graph in ONNX Runtime: both quantize at the same nodes with the same
    # scales, but TensorRT fuses and rounds in other places and (TensorRT 10) runs the float rest
    # in FP16; one decisive flip in 64 cells is tolerated (the INT8 export itself is gated at 99 %
    # agreement and mask IoU 0.90 against FP32, so an engine drifting further than that is refused).
    "int8": Thresholds(max_probs_diff=0.15, min_agreement=0.98, min_mask_iou=0.90),
}


class VerificationError(DorlError):
    """A built engine drifts from its ONNX graph beyond its precision's thresholds."""


@dataclass(frozen=True)
class EngineVerification:
    """The engine beside its source graph on `cells` real cells."""

    cells: int
    precision: str
    probs_max_abs_diff: float
    top1_agreement: float
    decisive_agreement: float
    near_ties: int
    mask_iou_mean: float | None
    mask_iou_min: float | None
    finite: bool
    thresholds: Thresholds
    sources: str  # where the cells came from

    def problems(self) -> list[str]:
        """What is past the thresholds (empty when the engine passes)."""
        t, found = self.thresholds, []
        if not self.finite:
            found.append("the engine produced NaN or Inf")
        if self.probs_max_abs_diff > t.max_probs_diff:
            found.append(f"probs differ by up to {self.probs_max_abs_diff:.3f} (limit {t.max_probs_diff})")
        if self.decisive_agreement < t.min_agreement:
            found.append(f"top-1 agrees on {self.decisive_agreement:.1%} of the cells (needs {t.min_agreement:.1%}; "
                         f"{self.near_ties} near ties counted as agreeing)")
        if self.mask_iou_mean is not None and self.mask_iou_mean < t.min_mask_iou:
            found.append(f"mask IoU averages {self.mask_iou_mean:.3f} (needs {t.min_mask_iou})")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": not self.problems()}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str,
                    sources: str = "") -> EngineVerification:
    """The engine's outputs (`candidate`) beside its source graph's (`reference`) on the same cells."""
    from dorl.export.parity import compare

    if precision not in THRESHOLDS:
        raise ConfigError(f"no verification thresholds for precision {precision!r}: choose {', '.join(THRESHOLDS)}.")
    thresholds = THRESHOLDS[precision]
    report = compare(reference, candidate, thresholds.tie_margin)
    return EngineVerification(
        cells=report.images, precision=precision, probs_max_abs_diff=report.max_abs_diff["probs"],
        top1_agreement=report.top1_agreement, decisive_agreement=report.decisive_agreement,
        near_ties=report.near_ties, mask_iou_mean=report.mask_iou_mean, mask_iou_min=report.mask_iou_min,
        finite=report.finite, thresholds=thresholds, sources=sources)


def check_verification(result: EngineVerification) -> None:
    """Raise VerificationError, with the numbers, when the engine is past its thresholds."""
    problems = result.problems()
    if problems:
        raise VerificationError(
            f"the {result.precision.upper()} engine drifts from its ONNX graph on {result.cells} real cells: "
            f"{'; '.join(problems)}. It was not written. Check the ONNX artifact's own parity report, rebuild "
            "with --verbose, or build the FP16 engine from the FP16 graph.")


def verification_cells(count: int, size: int, images: Sequence[str | Path] = (),
                       framing: Any = None) -> tuple[CheckCells, str]:
    """`count` real cells, evenly spread over the given images (or the bundled sample), decoded and resized.

    Args:
        framing: the artifact's `FramingConfig` (None: whole images); a cell-centric one is checked
            through both of the analyzer's passes.

    Returns:
        The cells (`pixels`: uint8 [count, size, size, 3]) and a description of where they came from.

    Raises:
        ConfigError: fewer images than `count`.
    """
    from dorl.data.images import find_images

    files = find_images(images) if images else find_images([SAMPLE_DIR])
    where = ", ".join(str(p) for p in images) if images else "the bundled sample (dorl/assets/sample)"
    if count < 1 or len(files) < count:
        raise ConfigError(f"verifying an engine on {count} cells needs at least that many images; {where} holds "
                          f"{len(files)}: give more with --verify-images, or a smaller --verify.")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    return CheckCells.load(picks, size, framing), f"{count} cells from {where}"


def run_in_batches(runner: Any, input_name: str, cells: np.ndarray, batch: int = BATCH) -> dict[str, np.ndarray]:
    """All outputs of an active runner on `cells`, fed `batch` at a time."""
    chunks = [runner.infer({input_name: cells[i:i + batch]}) for i in range(0, len(cells), batch)]
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}


def verify_engine(engine_dir: str | Path, onnx_dir: str | Path, cells: CheckCells, precision: str,
                  sources: str = "", device: int = 0) -> EngineVerification:
    """Run `cells` through the engine and its ONNX graph (ONNX Runtime, CPU) and compare them.

    Raises:
        VerificationError: the engine is past its precision's thresholds.
    """
    from dorl.runtime.onnxrt import OnnxRuntimeRunner
    from dorl.tensorrt.runner import TensorRTRunner

    with OnnxRuntimeRunner(onnx_dir, providers=["cpu"]) as onnx_runner:
        input_name = next(iter(onnx_runner.input_specs))
        reference = cells.run(lambda x: run_in_batches(onnx_runner, input_name, x))
    with TensorRTRunner(engine_dir, device=device) as engine_runner:
        candidate = cells.run(lambda x: run_in_batches(engine_runner, input_name, x, engine_runner.max_batch))
    result = compare_outputs(reference, {k: candidate[k] for k in reference}, precision, sources)
    check_verification(result)
    return result
