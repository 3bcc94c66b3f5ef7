"""Which node groups an INT8 graph keeps in float: the sensitivity sweep and the automatic selection.

When the fully quantized graph fails the gate, the sweep quantizes one group at a time (the rest
in float) and scores the damage against what the gate allows. Then groups go back to float one
by one, the best damage-per-cost first (cost: the group's share of the quantized multiply-
accumulates, so a small sensitive group goes before a large one), and the gate is scored again
after each, until it holds. The sweep's numbers and every step are recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dorl.export.int8_gate import GateReport

# A group whose damage alone is under a tenth of what the gate allows is noise, not a cause.
MIN_SCORE = 0.1
# Probability mass moved per flipped label: finer than flips on the sweep's few cells, it counts
# as this many times fewer flips (a moved mass of 0.1 on average ~ one flip in a hundred cells).
DRIFT_PER_FLIP = 10.0
MIN_SHARE = 1e-3  # a group's cost never counts as less than this share of the quantized work

Measure = Callable[[list[str]], GateReport]


@dataclass(frozen=True)
class GroupSensitivity:
    """The damage one group does when it alone is quantized."""

    group: str
    nodes: int
    macs_share: float  # the group's share of the graph's quantized multiply-accumulates
    top1_agreement: float
    mask_iou_mean: float | None
    probs_drift: float
    score: float  # damage / what the gate allows (1.0 fails the gate on its own)

    def describe(self) -> str:
        masks = "" if self.mask_iou_mean is None else f", mask IoU {self.mask_iou_mean:.3f}"
        return (f"{self.group} ({self.nodes} nodes, {self.macs_share:.1%} of the INT8 work: "
                f"{self.top1_agreement:.1%} agreement{masks}, score {self.score:.2f})")


def damage_score(report: GateReport) -> float:
    """How much of the gate's allowance a graph uses up: above 1.0 it fails on labels or masks.

    Label damage counts flipped cells or, finer than flips on a few cells, the mean probability
    mass moved (total variation, see DRIFT_PER_FLIP); both against the allowed disagreement. Mask
    damage is the lost mean IoU against the allowed loss.
    """
    t = report.thresholds
    flips = max(1.0 - report.top1_agreement, report.probs_drift / DRIFT_PER_FLIP)
    labels = flips / max(1.0 - t.min_agreement, 1e-6)
    masks = 0.0 if report.mask_iou_mean is None else (1.0 - report.mask_iou_mean) / max(1.0 - t.min_mask_iou, 1e-6)
    return max(labels, masks)


def sweep(groups: dict[str, list[str]], macs: dict[str, float], measure_only: Measure) -> list[GroupSensitivity]:
    """Quantize one group at a time and score it; the highest score first.

    Args:
        groups: group -> its quantized node names.
        macs: node name -> multiply-accumulates per image.
        measure_only: scores the graph with only the given nodes quantized.
    """
    total = sum(macs.get(n, 0.0) for names in groups.values() for n in names) or 1.0
    results = []
    for group, names in groups.items():
        report = measure_only(names)
        share = sum(macs.get(n, 0.0) for n in names) / total
        results.append(GroupSensitivity(group, len(names), share, report.top1_agreement, report.mask_iou_mean,
                                        report.probs_drift, damage_score(report)))
    return sorted(results, key=lambda r: (-r.score, r.group))


def float_order(sensitivities: Sequence[GroupSensitivity], min_score: float = MIN_SCORE) -> list[GroupSensitivity]:
    """The groups worth keeping in float, best damage per cost first."""
    candidates = [s for s in sensitivities if s.score >= min_score]
    return sorted(candidates, key=lambda s: (-s.score / max(s.macs_share, MIN_SHARE), s.group))


@dataclass(frozen=True)
class FloatSelection:
    """What the automatic selection kept in float, and why."""

    kept_groups: tuple[str, ...]
    kept_nodes: tuple[str, ...]
    report: GateReport  # the gate on the final graph
    sweep: tuple[GroupSensitivity, ...] = ()
    steps: tuple[tuple[str, GateReport], ...] = ()  # (group put back in float, the gate afterwards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_groups": list(self.kept_groups),
            "kept_nodes": len(self.kept_nodes),
            "passed": self.report.passed,
            "sweep": [asdict(s) for s in self.sweep],
            "steps": [{"kept_in_float": group, **report.to_dict()} for group, report in self.steps],
        }

    def advice(self) -> str:
        """What a failed selection tells the user."""
        if not self.sweep:
            return "Automatic float selection is off: keep the costliest groups in float with --exclude 'GROUP*'."
        worst = "; ".join(s.describe() for s in self.sweep[:3])
        kept = ", ".join(self.kept_groups) or "none"
        return (f"Kept in float automatically: {kept}; still failing. Groups that cost the most when quantized "
                f"alone: {worst}. Calibrate on more cells, or export FP16.")


def select_float_groups(groups: dict[str, list[str]], macs: dict[str, float], full: GateReport,
                        measure_only: Measure, measure_without: Measure,
                        say: Callable[[str], None] = lambda message: None, screen_without: Measure | None = None,
                        ranking: Sequence[GroupSensitivity] = ()) -> FloatSelection:
    """Keep the most damaging groups in float, one at a time, until the gate holds.

    Args:
        groups: group -> its quantized node names in the fully quantized graph.
        macs: node name -> multiply-accumulates per image.
        full: the gate's report on the fully quantized graph (nothing is kept if it passed).
        measure_only: scores the graph with only the given nodes quantized (the sweep).
        measure_without: scores the graph with the given nodes kept in float (the gate).
        screen_without: like `measure_without` on fewer cells: a step the screen fails is not worth
            the whole gate (the gate then runs only on candidates the screen passes).
        ranking: another variant's sweep of the same model (e.g. the Q/DQ graph's, for the dynamic
            CPU graph): its order is tried first, and this variant's own sweep runs only if that
            order does not reach the gate.

    Returns:
        The selection; its report says whether the gate holds.
    """
    if full.passed:
        return FloatSelection((), (), full)
    kept: list[str] = []
    nodes: list[str] = []
    steps: list[tuple[str, GateReport]] = []
    final, gated = full, True  # the last report, and whether it was the whole gate's

    def keep_until_it_holds(order: Sequence[GroupSensitivity]) -> bool:
        nonlocal final, gated
        for candidate in order:
            if candidate.group in kept or candidate.group not in groups:
                continue
            kept.append(candidate.group)
            nodes.extend(groups[candidate.group])
            report = screen_without(nodes) if screen_without is not None else measure_without(nodes)
            if screen_without is not None and report.passed:
                report = measure_without(nodes)
            final, gated = report, report.passed or screen_without is None
            steps.append((candidate.group, report))
            say(f"kept {candidate.describe()} in float: {report.describe()}")
            if report.passed:
                return True
        return False

    sensitivities: tuple[GroupSensitivity, ...] = tuple(s for s in ranking if s.group in groups)
    failing = f"the fully quantized graph fails the gate ({full.describe()})"
    if sensitivities:
        say(f"{failing}: trying the Q/DQ sweep's order first")
        if keep_until_it_holds(float_order(sensitivities)):
            return FloatSelection(tuple(kept), tuple(nodes), final, sensitivities, tuple(steps))
        failing = f"that order does not reach the gate ({final.describe()})"
    say(f"{failing}: quantizing one of {len(groups)} groups at a time")
    sensitivities = tuple(sweep(groups, macs, measure_only))
    keep_until_it_holds(float_order(sensitivities))
    if not gated:  # the last step was scored on the screen's cells only
        final = measure_without(nodes)
    return FloatSelection(tuple(kept), tuple(nodes), final, sensitivities, tuple(steps))
