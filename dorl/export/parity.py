"""Parity: an exported graph beside its reference on real cell images, compared like Polygraphy.

The FP32 graph is compared with the PyTorch model it came from; the FP16 and INT8 graphs with
the FP32 graph (in ONNX Runtime, torch-free). Each output is compared element by element as
Polygraphy's default comparator does: an element mismatches when it differs from the
reference by more than `atol` *and* by more than `rtol` times the reference's magnitude
(`Tolerance`, per output). Beside the tensors, the cells' top-1 labels must agree (a near tie
may flip) and their masks must overlap (mask IoU, the runtime's masks: argmax of `mask_logits`,
every non-background channel counted as cell). A refusal is a `ParityError` that names the
output, the cell and the values that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dorl.contract import NEAR_TIE_MARGIN, OUTPUT_NAMES, load_cells, mask_iou, top1_matches
from dorl.deps import require
from dorl.errors import ConfigError, DorlError

MIN_MASK_IOU = 0.99  # per image, FP32
FP16_MIN_AGREEMENT = 0.995  # top-1 agreement of the FP16 graph with the FP32 graph
# FP16 rounding (measured up to ~0.04 in probs on ViT-B) may flip a near tie (see the contract).
FP16_TIE_MARGIN = NEAR_TIE_MARGIN
BATCH = 8


@dataclass(frozen=True)
class Tolerance:
    """Polygraphy's elementwise rule: a value mismatches when |Δ| > atol and |Δ| > rtol·|reference|."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ConfigError(f"tolerances must be zero or positive, got atol {self.atol}, rtol {self.rtol}.")

    def excess(self, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """Per element, how far |Δ| exceeds the larger allowance (> 0: a mismatch; NaN counts as one)."""
        ref = np.asarray(reference, dtype=np.float64)
        diff = np.abs(ref - np.asarray(candidate, dtype=np.float64))
        excess = diff - np.maximum(self.atol, self.rtol * np.abs(ref))
        return np.where(np.isnan(excess), np.inf, excess)


# FP32 ONNX Runtime vs PyTorch differ by the round-off of two libraries' float32 kernels. Measured on
# the README's trained TinyViT bundle (250 pbc cells): logits up to 4.1e-4 (|logit| up to 11), probs
# 8.6e-5, feature 1.4e-6, mask_logits 8.8e-5; an earlier run over 1,751 images reached 6.4e-4 in the
# logits and 1.4e-4 in the probs. A logit drift of d moves a probability p by at most 2·d·p, so the
# probs' rtol is twice the logits' atol; mask_logits get a wider atol because the masks themselves
# are held to the IoU rule.
FP32_PROBS_ATOL = 1e-4
FP32_TOLERANCES: dict[str, Tolerance] = {
    "logits": Tolerance(1e-3, 1e-3),
    "probs": Tolerance(FP32_PROBS_ATOL, 2e-3),
    "feature": Tolerance(1e-3, 1e-3),
    "mask_logits": Tolerance(1e-2, 1e-3),
}


class ParityError(DorlError):
    """An exported graph's outputs drift from its reference beyond the thresholds."""


@dataclass(frozen=True)
class OutputDiff:
    """One output compared: the largest differences and the cells beyond its tolerance."""

    max_abs_diff: float
    max_rel_diff: float
    atol: float | None  # None: not held to a tolerance
    rtol: float | None
    mismatched_cells: int
    worst_cell: str | None  # the cell furthest beyond the tolerance (or with the largest |Δ|)
    worst_values: tuple[float, float] | None  # (reference, candidate) there


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
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    decisive_mismatch_cells: tuple[str, ...] = ()  # top-1 disagreements that are not near ties
    worst_mask_cell: str | None = None

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
    return run_session(cpu_session(path, threads), images, batch)


def onnx_infer(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One ONNX Runtime CPU session of a graph, as a function of uint8 images (see `run_session`)."""
    return partial(run_session, cpu_session(path, threads))


def run_session(session: Any, images: np.ndarray, batch: int = BATCH) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session (one image input) on uint8 images, in batches; all outputs by name."""
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


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
            tie_margin: float = FP32_PROBS_ATOL, tolerances: Mapping[str, Tolerance] | None = None,
            cells: Sequence[str] | None = None) -> ParityReport:
    """Compare two output dicts (same images, same order).

    Args:
        reference, candidate: output name -> [N, ...] arrays.
        tie_margin: a top-1 disagreement where the reference's margin between the two classes is
            at most this is a near tie.
        tolerances: output name -> Tolerance; outputs not named are reported but not held to one.
        cells: a name per image (e.g. its path) for the report; default "cell <index>".
    """
    names = list(cells) if cells is not None else [f"cell {i}" for i in range(len(reference["probs"]))]
    tolerances = tolerances or {}
    outputs = {name: _diff(reference[name], candidate[name], tolerances.get(name), names) for name in reference}
    ref_top = reference["probs"].argmax(axis=1)
    cand_top = candidate["probs"].argmax(axis=1)
    mismatch = ~top1_matches(reference["probs"], candidate["probs"])
    rows = np.arange(len(ref_top))
    near = mismatch & (reference["probs"][rows, ref_top] - reference["probs"][rows, cand_top] <= tie_margin)
    masks = "mask_logits" in reference and "mask_logits" in candidate
    iou = mask_iou(reference["mask_logits"], candidate["mask_logits"]) if masks else None
    return ParityReport(
        images=len(ref_top),
        max_abs_diff={name: diff.max_abs_diff for name, diff in outputs.items()},
        top1_agreement=float(1.0 - mismatch.mean()) if len(mismatch) else 1.0,
        top1_mismatches=int(mismatch.sum()),
        near_ties=int(near.sum()),
        mask_iou_min=float(iou.min()) if iou is not None else None,
        mask_iou_mean=float(iou.mean()) if iou is not None else None,
        finite=bool(all(np.isfinite(v).all() for v in candidate.values())),
        tie_margin=tie_margin,
        outputs=outputs,
        decisive_mismatch_cells=tuple(names[i] for i in np.flatnonzero(mismatch & ~near)),
        worst_mask_cell=names[int(np.argmin(iou))] if iou is not None and len(iou) else None,
    )


def _diff(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance | None, cells: list[str]) -> OutputDiff:
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    diff = np.abs(ref - cand)
    rel = diff / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    if tolerance is not None:
        excess = tolerance.excess(ref, cand)
        mismatched = int((excess > 0).any(axis=1).sum())
        worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
    else:
        mismatched, worst = 0, np.unravel_index(int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff))), diff.shape)
    return OutputDiff(
        max_abs_diff=float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"),
        max_rel_diff=float(np.nanmax(rel)) if np.isfinite(rel).any() else float("inf"),
        atol=tolerance.atol if tolerance else None,
        rtol=tolerance.rtol if tolerance else None,
        mismatched_cells=mismatched,
        worst_cell=cells[int(worst[0])],
        worst_values=(float(ref[worst]), float(cand[worst])),
    )


def check_fp32(report: ParityReport, min_mask_iou: float = MIN_MASK_IOU) -> None:
    """Raise ParityError unless the FP32 graph matches PyTorch: every output within its tolerance
    (see `compare`), the same top-1 on every cell (a near tie, where PyTorch's own margin is below
    the probs tolerance, is not a disagreement) and mask IoU ≥ `min_mask_iou` on every cell."""
    problems = _tensor_problems(report)
    if report.top1_mismatches > report.near_ties:
        problems.append(f"top-1 differs on {report.top1_mismatches - report.near_ties} of {report.images} cells "
                        f"(first: {report.decisive_mismatch_cells[0]})")
    if report.mask_iou_min is not None and report.mask_iou_min < min_mask_iou:
        problems.append(f"mask IoU falls to {report.mask_iou_min:.4f} on {report.worst_mask_cell} (limit {min_mask_iou})")
    if problems:
        raise ParityError(f"the FP32 ONNX graph does not match PyTorch on {report.images} real cells: "
                          f"{'; '.join(problems)}. Max differences: {_diffs(report)}. If the difference is float32 "
                          "round-off, loosen that output with --atol/--rtol NAME=VALUE; otherwise report it with the "
                          "bundle.")


def _tensor_problems(report: ParityReport) -> list[str]:
    problems = [] if report.finite else ["the ONNX graph produced NaN or Inf"]
    for name, diff in report.outputs.items():
        if diff.mismatched_cells and diff.worst_values is not None:
            reference, candidate = diff.worst_values
            problems.append(f"{name} is beyond atol {diff.atol:g} and rtol {diff.rtol:g} on {diff.mismatched_cells} of "
                            f"{report.images} cells (worst: {diff.worst_cell}, {candidate:.6g} where PyTorch gives "
                            f"{reference:.6g})")
    return problems


def check_reduced(report: ParityReport, precision: str, min_agreement: float) -> None:
    """Raise ParityError if an FP16 graph produces NaN/Inf or agrees with FP32 on too few cells
    (near ties, see FP16_TIE_MARGIN, count as agreeing and are reported)."""
    problems = []
    if not report.finite:
        problems.append("it produced NaN or Inf (an FP16 overflow: keep the overflowing node in FP32)")
    if report.decisive_agreement < min_agreement:
        first = f"; first: {report.decisive_mismatch_cells[0]}" if report.decisive_mismatch_cells else ""
        problems.append(f"top-1 agrees with FP32 on {report.decisive_agreement:.2%} of {report.images} cells "
                        f"(needs {min_agreement:.1%}; {report.near_ties} near ties counted as agreeing{first})")
    if problems:
        raise ParityError(f"the {precision.upper()} graph fails its check: {'; '.join(problems)}. "
                          f"Max differences from FP32: {_diffs(report)}.")


def _diffs(report: ParityReport) -> str:
    return ", ".join(f"{name} {value:.2e}" for name, value in report.max_abs_diff.items())


def tolerances_from(atol: Sequence[str], rtol: Sequence[str],
                    defaults: Mapping[str, Tolerance] = FP32_TOLERANCES) -> dict[str, Tolerance]:
    """The FP32 tolerances after `--atol`/`--rtol` options: "VALUE" sets every output, "NAME=VALUE" one.

    Raises:
        ConfigError: a value is not a number, or names an output the graph does not have.
    """
    values = {name: {"atol": t.atol, "rtol": t.rtol} for name, t in defaults.items()}
    for kind, options in (("atol", atol), ("rtol", rtol)):
        for option in options:
            name, _, text = option.rpartition("=")
            if name and name not in values:
                raise ConfigError(f"--{kind} {option!r} names no output: use one of {', '.join(values)}.")
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"--{kind} {option!r} is not a number or NAME=NUMBER (e.g. 1e-4 or probs=1e-4).") from None
            for target in [name] if name else list(values):
                values[target][kind] = number
    return {name: Tolerance(**value) for name, value in values.items()}
