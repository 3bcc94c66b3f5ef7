"""Parity: an exported graph beside its reference on real cell images, against fixed thresholds.

The FP32 graph is compared with the PyTorch model it came from; the FP16 and INT8 graphs with
the FP32 graph (in ONNX Runtime, torch-free). A drift beyond the thresholds is a `ParityError`
that carries the numbers. Masks are compared as the runtime makes them: argmax of
`mask_logits`, every non-background channel counted as cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dorl.contract import NEAR_TIE_MARGIN, OUTPUT_NAMES, load_cells, mask_iou, top1_matches
from dorl.deps import require
from dorl.errors import ConfigError, DorlError

FP32_PROBS_ATOL = 1e-4  # max |probs_onnx - probs_torch|
MIN_MASK_IOU = 0.99  # per image, FP32
FP16_MIN_AGREEMENT = 0.995  # top-1 agreement of the FP16 graph with the FP32 graph
# FP16 rounding (measured up to ~0.04 in probs on ViT-B) may flip a near tie (see the contract).
FP16_TIE_MARGIN = NEAR_TIE_MARGIN
BATCH = 8


class ParityError(DorlError):
    """An exported graph's outputs drift from its reference beyond the thresholds."""


@dataclass(frozen=True)
class ParityReport:
    """How closely a candidate's outputs follow a reference's on the same images."""

    images: int
    max_abs_diff: dict[str, float]
    top1_agreement: float
    top1_mismatches: int
    near_ties: int  # mismatches where the reference's top-2 margin is below tie_margin
    mask_iou_min: float | None  # None when the graphs have no mask_logits
    mask_iou_mean: float | None
    finite: bool
    tie_margin: float = FP32_PROBS_ATOL

    @property
    def decisive_agreement(self) -> float:
        """Top-1 agreement counting near ties as agreeing."""
        return 1.0 - (self.top1_mismatches - self.near_ties) / max(self.images, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decisive_agreement": self.decisive_agreement}


def prepare_images(sources: Sequence[Any], size: int) -> np.ndarray:
    """Decode and resize cells the way training and the runtime do.

    Args:
        sources: image paths, encoded bytes or arrays (an HxWx3 uint8 array of `size` is kept).
        size: the model's input side.

    Returns:
        uint8 [N,size,size,3].

    Raises:
        ConfigError: no images were given. ImageError: an image cannot be read.
    """
    if len(sources) == 0:
        raise ConfigError("the parity check needs real cell images: pass --images PATH (files or folders of cells).")
    return load_cells(sources, size)


def run_onnx(path: str | Path, images: np.ndarray, batch: int = BATCH, threads: int | None = None) -> dict[str, np.ndarray]:
    """Run an ONNX graph in ONNX Runtime (CPU) on uint8 images, in batches; all outputs by name."""
    session = cpu_session(path, threads)
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    chunks = [session.run(names, {input_name: images[i:i + batch]}) for i in range(0, len(images), batch)]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


def cpu_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation and warnings silenced."""
    ort = require("onnxruntime", "running an ONNX graph")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # FP16 graphs log a warning per node the CPU cannot constant-fold
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_torch(model: Any, images: np.ndarray, batch: int = BATCH) -> dict[str, np.ndarray]:
    """Run the export wrapper around `model` (eval mode) in PyTorch on the same uint8 images."""
    torch = require("torch", "the PyTorch side of the parity check")
    from dorl.export.wrapper import ExportWrapper

    wrapper = ExportWrapper(model).eval()
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            chunks.append([t.numpy() for t in wrapper(torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))])
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(OUTPUT_NAMES)}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            tie_margin: float = FP32_PROBS_ATOL) -> ParityReport:
    """Compare two output dicts (same images, same order); see ParityReport for `tie_margin`."""
    diffs = {name: float(np.max(np.abs(reference[name] - candidate[name]))) for name in reference}
    ref_top = reference["probs"].argmax(axis=1)
    cand_top = candidate["probs"].argmax(axis=1)
    mismatch = ~top1_matches(reference["probs"], candidate["probs"])
    rows = np.arange(len(ref_top))
    margin = reference["probs"][rows, ref_top] - reference["probs"][rows, cand_top]
    masks = "mask_logits" in reference and "mask_logits" in candidate
    iou = mask_iou(reference["mask_logits"], candidate["mask_logits"]) if masks else None
    return ParityReport(
        images=len(ref_top),
        max_abs_diff=diffs,
        top1_agreement=float(1.0 - mismatch.mean()),
        top1_mismatches=int(mismatch.sum()),
        near_ties=int((mismatch & (margin <= tie_margin)).sum()),
        mask_iou_min=float(iou.min()) if iou is not None else None,
        mask_iou_mean=float(iou.mean()) if iou is not None else None,
        finite=bool(all(np.isfinite(v).all() for v in candidate.values())),
        tie_margin=tie_margin,
    )


def check_fp32(report: ParityReport) -> None:
    """Raise ParityError unless the FP32 graph matches PyTorch.

    probs within FP32_PROBS_ATOL, the same top-1 (a near tie, where PyTorch's own top-2 margin
    is below that tolerance, is not a disagreement) and mask IoU ≥ MIN_MASK_IOU on every image.
    """
    problems = []
    if not report.finite:
        problems.append("the ONNX graph produced NaN or Inf")
    if report.max_abs_diff["probs"] > FP32_PROBS_ATOL:
        problems.append(f"probs differ by up to {report.max_abs_diff['probs']:.2e} (limit {FP32_PROBS_ATOL:.0e})")
    if report.top1_mismatches > report.near_ties:
        problems.append(f"top-1 differs on {report.top1_mismatches - report.near_ties} of {report.images} cells")
    if report.mask_iou_min is not None and report.mask_iou_min < MIN_MASK_IOU:
        problems.append(f"mask IoU falls to {report.mask_iou_min:.4f} (limit {MIN_MASK_IOU})")
    if problems:
        raise ParityError(f"the FP32 ONNX graph does not match PyTorch on {report.images} real cells: "
                          f"{'; '.join(problems)}. Max differences: {_diffs(report)}. Report this with the bundle.")


def check_reduced(report: ParityReport, precision: str, min_agreement: float) -> None:
    """Raise ParityError if an FP16 graph produces NaN/Inf or agrees with FP32 on too few cells
    (near ties, see FP16_TIE_MARGIN, count as agreeing and are reported)."""
    problems = []
    if not report.finite:
        problems.append("it produced NaN or Inf (an FP16 overflow: keep the overflowing node in FP32)")
    if report.decisive_agreement < min_agreement:
        problems.append(f"top-1 agrees with FP32 on {report.decisive_agreement:.2%} of {report.images} cells "
                        f"(needs {min_agreement:.1%}; {report.near_ties} near ties counted as agreeing)")
    if problems:
        raise ParityError(f"the {precision.upper()} graph fails its check: {'; '.join(problems)}. "
                          f"Max differences from FP32: {_diffs(report)}.")


def _diffs(report: ParityReport) -> str:
    return ", ".join(f"{name} {value:.2e}" for name, value in report.max_abs_diff.items())
