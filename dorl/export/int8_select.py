"""Which node groups an INT8 graph keeps in float: the sensitivity sweep and the automatic selection.

When the fully quantized graph fails the gate, the sweep quantizes one group at a time (the rest
in float) and scores the damage against what the gate allows. Then groups go back to float in the
order of best damage-per-cost (cost: the group's share of the quantized multiply-accumulates, so a
small sensitive group goes before a large one), in steps that double what is kept (1, 2, 4, 8, ...
groups, then every candidate; then, while the gate still fails, the other groups the same way, the most
damaging first, short of the last), and the gate is scored again after each step until it holds. On the
bundles measured, one group per step held the gate only after 13 and 14 of 23 groups (as many gate
runs); doubling needs a logarithmic number of runs and keeps at most twice the groups the gate
needs. The sweep's numbers and every step are recorded in the manifest.
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
    steps: tuple[tuple[tuple[str, ...], GateReport], ...] = ()  # (groups put back in float, the gate afterwards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept_groups": list(self.kept_groups),
            "kept_nodes": len(self.kept_nodes),
            "passed": self.report.passed,
            "sweep": [asdict(s) for s in self.sweep],
            "steps": [{"kept_in_float": list(step), **report.to_dict()} for step, report in self.steps],
        }

    def advice(self) -> str:
        """What a failed selection tells the user."""
        if not self.sweep:
            return "Automatic float selection is off: keep the costliest groups in float with --exclude 'GROUP*'."
        worst = "; ".join(s.describe() for s in self.sweep[:3])
        kept = ", ".join(self.kept_groups) or "none"
        return (f"Kept in float automatically: {kept}; still failing. Groups that cost the most when quantized "
                f"alone: {worst}. Calibrate on more cells, or export FP16.")


def step_sizes(candidates: int) -> list[int]:
    """How many groups are kept in float after each step: 1, 2, 4, ... and finally all `candidates`."""
    sizes, size = [], 1
    while size < candidates:
        sizes.append(size)
        size *= 2
    return sizes + [candidates] if candidates else []


def select_float_groups(groups: dict[str, list[str]], macs: dict[str, float], full: GateReport,
                        measure_only: Measure, measure_without: Measure,
                        say: Callable[[str], None] = lambda message: None, screen_without: Measure | None = None,
                        ranking: Sequence[GroupSensitivity] = ()) -> FloatSelection:
    """Keep the most damaging groups in float, doubling how many each step, until the gate holds.

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
    steps: list[tuple[tuple[str, ...], GateReport]] = []
    final, gated = full, True  # the last report, and whether it was the whole gate's

    def keep_until_it_holds(order: Sequence[GroupSensitivity]) -> bool:
        nonlocal final, gated
        todo = [c for c in order if c.group in groups and c.group not in kept]
        done = 0
        for size in step_sizes(len(todo)):
            added = todo[done:size]
            done = size
            kept.extend(c.group for c in added)
            nodes.extend(n for c in added for n in groups[c.group])
            report = screen_without(nodes) if screen_without is not None else measure_without(nodes)
            if screen_without is not None and report.passed:
                report = measure_without(nodes)
            final, gated = report, report.passed or screen_without is None
            steps.append((tuple(c.group for c in added), report))
            say(f"kept {'; '.join(c.describe() for c in added)} in float ({len(kept)} of {len(groups)} groups): "
                f"{report.describe()}")
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
    if not keep_until_it_holds(float_order(sensitivities)):
        # Small damages add up: the rest go back too, the most damaging first, until the gate holds;
        # the least damaging group stays quantized (all in float is the FP32 graph, not an INT8 one).
        rest = [s for s in sensitivities if s.group not in kept][:-1]
        if rest:
            say(f"every group the sweep found damaging is in float and the gate still fails ({final.describe()}): "
                f"the other groups go back too, the most damaging first")
            keep_until_it_holds(rest)
    if not gated:  # the last step was scored on the screen's cells only
        final = measure_without(nodes)
    return FloatSelection(tuple(kept), tuple(nodes), final, sensitivities, tuple(steps))
