"""The automatic float selection: the sweep's order, the stop when the gate holds, and the whole
INT8 export of the small graph with one part made fragile on purpose (tests/support/int8_graphs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from int8_graphs import CLASSES, SAMPLE, fitted_biases, gate_cells, mini_dorl, write_fp32_artifact

from dorl.artifacts import read_manifest
from dorl.calibration.calibration_set import read_calibration_set, write_calibration_set
from dorl.export.int8 import FP16, QDQ, Int8Settings, quantize_artifact
from dorl.export.int8_gate import GateError, GateReport, GateThresholds, gate_set
from dorl.export.int8_select import (
    FloatSelection,
    GroupSensitivity,
    damage_score,
    float_order,
    select_float_groups,
    step_sizes,
    sweep,
)
from dorl.safe_write import OutputError

# The small graph's labels pass 99 % only just when fully quantized (98-100 % by seed); 95 % keeps
# these tests about the fragile part, which drops agreement to a few percent.
RELAXED = GateThresholds(min_agreement=0.95, max_accuracy_drop=0.05, min_cells=100)


def _report(agreement: float, iou: float = 1.0, drift: float = 0.0) -> GateReport:
    return GateReport(100, agreement, 0.8, 0.8, 0.0, iou, drift)


def test_damage_is_measured_against_what_the_gate_allows() -> None:
    assert damage_score(_report(0.99)) == pytest.approx(1.0)  # exactly the allowed disagreement
    assert damage_score(_report(1.0, iou=0.95)) == pytest.approx(0.5)  # half the allowed IoU loss
    assert damage_score(_report(1.0, drift=0.05)) == pytest.approx(0.5)  # moved mass: finer than flips
    assert damage_score(_report(1.0)) == 0.0


def test_the_sweep_orders_groups_by_damage_per_cost_and_drops_noise() -> None:
    groups = {"encoder": ["a", "b"], "cae": ["c"], "mask_decoder": ["d"]}
    macs = {"a": 60.0, "b": 30.0, "c": 5.0, "d": 5.0}
    alone = {("a", "b"): _report(0.96), ("c",): _report(0.98), ("d",): _report(1.0, iou=0.9995)}
    result = sweep(groups, macs, lambda nodes: alone[tuple(nodes)])
    assert [r.group for r in result] == ["encoder", "cae", "mask_decoder"]  # by damage
    assert result[0] == GroupSensitivity("encoder", 2, 0.9, 0.96, 1.0, 0.0, pytest.approx(4.0))
    # cae does half encoder's damage at a 18th of the cost: it goes back to float first; the mask
    # decoder's damage (0.005 of the allowance) is noise
    assert [r.group for r in float_order(result)] == ["cae", "encoder"]
    assert "cae (1 nodes, 5.0% of the INT8 work: 98.0% agreement" in result[1].describe()


def test_selection_stops_as_soon_as_the_gate_holds() -> None:
    groups = {"encoder": ["a"], "cae": ["c"], "mask_decoder": ["d"]}
    macs = {"a": 10.0, "c": 10.0, "d": 10.0}
    alone = {"a": _report(0.97), "c": _report(0.98), "d": _report(0.985)}
    kept_float: list[list[str]] = []

    def without(nodes: list[str]) -> GateReport:
        kept_float.append(list(nodes))
        return _report(0.995 if "a" in nodes else 0.95)

    full = _report(0.9)
    selection = select_float_groups(groups, macs, full, lambda nodes: alone[nodes[0]], without)
    assert selection.kept_groups == ("encoder",) and selection.kept_nodes == ("a",) and selection.report.passed
    assert kept_float == [["a"]]  # stopped after the first group
    record = selection.to_dict()
    assert record["kept_groups"] == ["encoder"] and record["passed"] and len(record["sweep"]) == 3
    assert record["steps"][0]["kept_in_float"] == ["encoder"] and record["steps"][0]["top1_agreement"] == 0.995
    assert select_float_groups(groups, macs, _report(1.0), lambda n: full, without).kept_groups == ()


def test_another_variants_order_is_tried_before_a_sweep_of_its_own() -> None:
    groups = {"encoder": ["a"], "cae": ["c"]}
    macs = {"a": 10.0, "c": 10.0}
    swept: list[list[str]] = []

    def only(nodes: list[str]) -> GateReport:
        swept.append(nodes)
        return _report(0.97 if nodes == ["a"] else 1.0)

    ranking = (GroupSensitivity("cae", 1, 0.5, 0.97, None, 0.0, 3.0), GroupSensitivity("gone", 1, 0.5, 0.9, None, 0.0, 9.0))
    holds = select_float_groups(groups, macs, _report(0.9), only, lambda nodes: _report(0.995), ranking=ranking)
    assert holds.kept_groups == ("cae",) and holds.report.passed and swept == []  # no sweep of its own
    # the borrowed order does not reach the gate: this variant's own sweep names encoder
    fails = select_float_groups(groups, macs, _report(0.9), only,
                                lambda nodes: _report(0.995 if "a" in nodes else 0.95), ranking=ranking)
    assert fails.kept_groups == ("cae", "encoder") and fails.report.passed and len(swept) == 2
    assert [s.group for s in fails.sweep] == ["encoder", "cae"]


def test_the_screen_spares_the_whole_gate_until_a_step_looks_good() -> None:
    groups = {"encoder": ["a"], "cae": ["c"]}
    alone = {"a": _report(0.97), "c": _report(0.98)}
    gated: list[list[str]] = []

    def without(nodes: list[str]) -> GateReport:
        gated.append(list(nodes))
        return _report(0.995)

    def screen(nodes: list[str]) -> GateReport:
        return _report(0.995 if "c" in nodes else 0.95)

    selection = select_float_groups(groups, {"a": 1.0, "c": 1.0}, _report(0.9), lambda nodes: alone[nodes[0]], without,
                                    screen_without=screen)
    assert selection.kept_groups == ("encoder", "cae") and selection.report.passed
    assert gated == [["a", "c"]]  # the first step failed its screen: the whole gate ran once
    assert [step[1].top1_agreement for step in selection.steps] == [0.95, 0.995]


def test_steps_double_what_is_kept_until_every_candidate() -> None:
    assert [step_sizes(n) for n in (0, 1, 2, 3, 5, 14)] == [[], [1], [1, 2], [1, 2, 3], [1, 2, 4, 5], [1, 2, 4, 8, 14]]
    names = [f"g{i}" for i in range(7)]
    groups = {name: [name] for name in names}
    alone = {name: _report(1.0, drift=0.01 * (10 - i)) for i, name in enumerate(names)}  # g0 the most damaging
    gated: list[list[str]] = []

    def without(nodes: list[str]) -> GateReport:
        gated.append(list(nodes))
        return _report(0.995 if {"g0", "g4"} <= set(nodes) else 0.95)  # needs g0 and the fifth in order

    selection = select_float_groups(groups, dict.fromkeys(names, 1.0), _report(0.9), lambda n: alone[n[0]], without)
    assert gated == [["g0"], ["g0", "g1"], ["g0", "g1", "g2", "g3"], names]  # 4 gate runs, not 5
    assert selection.kept_groups == tuple(names) and selection.report.passed
    assert [list(step) for step, _ in selection.steps] == [["g0"], ["g1"], ["g2", "g3"], ["g4", "g5", "g6"]]
    assert selection.to_dict()["steps"][3]["kept_in_float"] == ["g4", "g5", "g6"]


def test_when_the_damaging_groups_are_not_enough_the_rest_follow_short_of_the_last() -> None:
    names = ["loud", "a", "b", "c", "d"]
    groups = {name: [name] for name in names}
    alone = {"loud": _report(0.97), "a": _report(1.0, drift=0.009), "b": _report(1.0, drift=0.008),
             "c": _report(1.0, drift=0.007), "d": _report(1.0, drift=0.001)}  # scores 3, then 0.09 ... 0.01: noise

    def select(needed: set[str]) -> tuple[FloatSelection, list[list[str]]]:
        gated: list[list[str]] = []

        def without(nodes: list[str]) -> GateReport:
            gated.append(list(nodes))
            return _report(0.995 if needed <= set(nodes) else 0.985)

        return select_float_groups(groups, dict.fromkeys(names, 1.0), _report(0.9), lambda n: alone[n[0]],
                                   without), gated

    selection, gated = select({"loud", "a", "b"})
    assert gated == [["loud"], ["loud", "a"], ["loud", "a", "b"]] and selection.report.passed
    assert selection.kept_groups == ("loud", "a", "b")
    refused, gated = select(set(names))  # only all in float would hold: that is no INT8 graph, so it fails
    assert gated[-1] == ["loud", "a", "b", "c"] and not refused.report.passed and "d" not in refused.kept_groups


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration") / "set"
    write_calibration_set({d: SAMPLE / d for d in ("pbc", "bccd")}, folder, size=16, seed=0)
    return folder


def _export(tmp_path: Path, calibration: Path, settings: Int8Settings, **knobs: float) -> dict:  # type: ignore[type-arg]
    fp32 = write_fp32_artifact(mini_dorl(fitted=fitted_biases(), **knobs), tmp_path / "fp32")
    return _quantize(fp32, tmp_path / "int8", calibration, settings)


def _quantize(fp32: Path, out: Path, calibration: Path, settings: Int8Settings,
              overwrite: bool = False) -> dict:  # type: ignore[type-arg]
    """The INT8 export of `fp32`, gated on the test cells outside the calibration set."""
    cells = read_calibration_set(calibration)
    gate = gate_set(gate_cells(), CLASSES, frozenset(c.sha256 for c in cells.cells), settings.gate.min_cells)
    return quantize_artifact(fp32, out, cells, gate, settings, overwrite=overwrite)


def test_a_fragile_block_goes_back_to_float_and_nothing_more(tmp_path: Path, calibration: Path) -> None:
    manifest = _export(tmp_path, calibration, Int8Settings(gate=RELAXED), outlier=300.0)
    selection = manifest["float_selection"]
    assert selection["kept_groups"] == ["encoder.layers.0.blocks.1"] and selection["passed"]
    sweep_rows = {row["group"]: row for row in selection["sweep"]}
    assert sweep_rows["encoder.layers.0.blocks.1"]["top1_agreement"] < 0.5  # the fragile block alone
    assert [step["kept_in_float"] for step in selection["steps"]] == [["encoder.layers.0.blocks.1"]]
    assert selection["steps"][0]["passed"] and manifest["gate"]["passed"] and manifest["gate"]["images"] >= 100
    assert {"node_wide", "node_narrow"}.isdisjoint(_quantized(tmp_path / "int8"))
    for suffix, target in (("-fp16", "tensorrt-strongly-typed"), ("-cpu", "cpu")):
        variant = read_manifest(tmp_path / f"int8{suffix}", "onnx")
        assert variant["target"] == target and variant["gate"]["passed"]
    assert read_manifest(tmp_path / "int8-cpu", "onnx")["float_selection"]["kept_groups"]  # dynamic INT8 chose too


def test_drifting_masks_are_refused_or_kept_in_float(tmp_path: Path, calibration: Path) -> None:
    with pytest.raises(GateError, match=rf"{QDQ.replace('(', '[(]').replace(')', '[)]')} graph fails the gate: "
                                        r"top-1 agreement with FP32 .*mask IoU 0\.[0-8]\d+ \(needs 0\.90\)"):
        _export(tmp_path / "off", calibration, Int8Settings(gate=RELAXED, auto_float=False), mask_outlier=30.0)
    assert not (tmp_path / "off" / "int8").exists()
    manifest = _export(tmp_path / "on", calibration, Int8Settings(gate=RELAXED), mask_outlier=30.0)
    assert manifest["float_selection"]["kept_groups"] == ["mask_decoder"]
    assert manifest["gate"]["mask_iou_mean"] >= 0.9 and manifest["gate"]["top1_agreement"] >= 0.95
    assert read_manifest(tmp_path / "on" / "int8-fp16", "onnx")["variant"] == FP16


def test_a_variant_that_fails_on_its_own_is_left_out_and_its_old_folder_removed(tmp_path: Path,
                                                                                  calibration: Path) -> None:
    settings = Int8Settings(gate=RELAXED, auto_float=False)
    first = _export(tmp_path / "a", calibration, settings)  # every variant passes and is written
    assert first["refused_variants"] == {} and (tmp_path / "a" / "int8-fp16" / "manifest.json").is_file()
    fp32 = write_fp32_artifact(mini_dorl(fitted=fitted_biases(), fp16_hazard=2.0**15), tmp_path / "b" / "fp32")
    with pytest.raises(OutputError, match="pass --overwrite to replace it"):
        _quantize(fp32, tmp_path / "a" / "int8", calibration, settings)
    manifest = _quantize(fp32, tmp_path / "a" / "int8", calibration, settings, overwrite=True)
    refused = manifest["refused_variants"]
    assert list(refused) == [FP16] and refused[FP16]["gate"]["top1_agreement"] < 0.5  # its FP16 remainder overflows
    assert refused[FP16]["gate"]["probs_drift"] > 0.9  # overflowed cells count as far as probabilities can be, not NaN
    assert manifest["gate"]["passed"] and manifest["gate"]["top1_agreement"] >= RELAXED.min_agreement
    assert not (tmp_path / "a" / "int8-fp16").exists()  # no stale twin of the previous graph beside the new one
    assert read_manifest(tmp_path / "a" / "int8-cpu", "onnx")["refused_variants"] == refused
    import dataclasses
    import shutil

    shutil.copytree(tmp_path / "a" / "int8", tmp_path / "c" / "int8-cpu")  # another export's Q/DQ graph sits there
    _quantize(fp32, tmp_path / "c" / "int8", calibration, dataclasses.replace(settings, cpu_variant=False),
              overwrite=True)
    assert read_manifest(tmp_path / "c" / "int8-cpu", "onnx")["variant"] == QDQ  # not this export's CPU variant: kept


def test_without_the_cpu_variant_no_cpu_graph_is_made_and_an_old_one_goes(tmp_path: Path, calibration: Path) -> None:
    first = _export(tmp_path, calibration, Int8Settings(gate=RELAXED, auto_float=False))
    assert first["cpu_variant"] and (tmp_path / "int8-cpu" / "manifest.json").is_file()
    settings = Int8Settings(gate=RELAXED, auto_float=False, cpu_variant=False)
    manifest = _quantize(tmp_path / "fp32", tmp_path / "int8", calibration, settings, overwrite=True)
    assert manifest["cpu_variant"] is False and manifest["refused_variants"] == {}
    assert not (tmp_path / "int8-cpu").exists()  # no CPU graph of the previous export beside the new one
    assert read_manifest(tmp_path / "int8-fp16", "onnx")["cpu_variant"] is False


def test_without_the_fp16_variant_only_the_qdq_graph_is_made_and_an_old_twin_goes(tmp_path: Path,
                                                                                  calibration: Path) -> None:
    first = _export(tmp_path, calibration, Int8Settings(gate=RELAXED, auto_float=False, cpu_variant=False))
    assert first["fp16_variant"] and (tmp_path / "int8-fp16" / "manifest.json").is_file()
    settings = Int8Settings(gate=RELAXED, auto_float=False, cpu_variant=False, fp16_variant=False)
    manifest = _quantize(tmp_path / "fp32", tmp_path / "int8", calibration, settings, overwrite=True)
    assert manifest["fp16_variant"] is False and manifest["refused_variants"] == {}
    assert not (tmp_path / "int8-fp16").exists() and not (tmp_path / "int8-cpu").exists()
    assert manifest["gate"]["passed"] and manifest["target"] == "tensorrt"


def _quantized(folder: Path) -> set[str]:
    import onnx

    from dorl.export.int8_qdq import quantized_nodes

    return set(quantized_nodes(onnx.load(str(folder / "model.onnx"))))


def test_the_selection_needs_no_exclude_option_but_honours_one(tmp_path: Path, calibration: Path) -> None:
    manifest = _export(tmp_path, calibration, Int8Settings(gate=RELAXED, exclude=("encoder.layers.0.blocks.1*",)),
                       outlier=300.0)
    assert manifest["float_selection"]["kept_groups"] == [] and manifest["exclude_patterns"] == [
        "encoder.layers.0.blocks.1*"]
    assert {"node_wide", "node_narrow"} <= set(manifest["excluded_nodes"]) and manifest["gate"]["passed"]
    assert {"node_wide", "node_narrow"}.isdisjoint(_quantized(tmp_path / "int8"))


def test_the_sweeps_estimate_runs_pass_two_on_fp32s_cells_and_pass_one_only_where_masks_can_change(
        tmp_path: Path) -> None:
    import onnx
    from framed_artifact import with_framing

    from dorl.contract import MASK_LOGITS
    from dorl.data.framing import FramingConfig
    from dorl.export.check_cells import CheckCells
    from dorl.export.int8_groups import module_path, upstream_nodes
    from dorl.export.int8_ort import cell_reader, quantize_qdq
    from dorl.export.int8_qdq import keep_float, tensorrt_infer
    from dorl.export.int8_score import GateScorer
    from dorl.export.parity import onnx_infer

    fp32 = with_framing(write_fp32_artifact(mini_dorl(fitted=fitted_biases()), tmp_path / "plain"), tmp_path / "fp32")
    model = onnx.load(str(fp32 / "model.onnx"))
    on_mask_path = upstream_nodes(model, MASK_LOGITS)
    scopes = {n.name: module_path(n) for n in model.graph.node}
    cae = [n for n, scope in scopes.items() if scope.startswith("cae")]
    decoder = [n for n, scope in scopes.items() if scope.startswith("mask_decoder")]
    assert cae and on_mask_path.isdisjoint(cae) and set(decoder) <= on_mask_path
    assert not any(scopes[n].startswith("head") for n in on_mask_path)
    assert upstream_nodes(model, "no_such_output") == frozenset()

    cells = CheckCells.load(gate_cells()[:12], 224, FramingConfig(input="cell", mask="segmenter", margin=0.1))
    fp32_infer = onnx_infer(fp32 / "model.onnx")
    scorer = GateScorer(cells.run(fp32_infer), cells, np.zeros(len(cells), int), RELAXED, np.arange(0, 12, 2))
    calibration = cells.inputs(fp32_infer)
    batches: list[int] = []

    def counted(path: Path):  # type: ignore[no-untyped-def]
        infer = tensorrt_infer(path)
        return lambda images: (batches.append(len(images)), infer(images))[1]

    def only(nodes: list[str], name: str) -> Path:  # a Q/DQ graph with only `nodes` quantized, as the export makes it
        path, floated = tmp_path / f"{name}.onnx", [n for n in scopes if n not in nodes]
        quantize_qdq(fp32 / "model.onnx", path, cell_reader(calibration, "images"), floated)
        onnx.save(keep_float(onnx.load(str(path)), model, floated), str(path))
        return path

    qdq_cae = only(cae, "cae")  # its masks are FP32's: the estimate is the analyzer's score, without pass 1
    estimate = scorer.estimate(qdq_cae, counted, masks_change=False)
    assert batches == [6]
    analyzer, _ = scorer.score(qdq_cae, counted, sweep=True)
    assert batches == [6, 6, 6] and estimate == analyzer and estimate.probs_drift > 0
    assert scorer.estimate(qdq_cae, counted).mask_iou_mean == 1.0 and batches[3:] == [6, 6]

    qdq_decoder = only(decoder, "decoder")  # the masks move; pass 2 on FP32's cells keeps every label
    batches.clear()
    estimate = scorer.estimate(qdq_decoder, counted)
    analyzer, _ = scorer.score(qdq_decoder, counted, sweep=True)
    assert batches == [6, 6, 6, 6]  # pass 2, then pass 1 on the (at most 16) mask cells; the analyzer's two passes
    assert estimate.mask_iou_mean == pytest.approx(analyzer.mask_iou_mean) and estimate.mask_iou_mean < 1.0
    assert estimate.top1_agreement == 1.0 and estimate.probs_drift == pytest.approx(0.0, abs=1e-6)
