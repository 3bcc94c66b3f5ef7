"""`dorl export` and `dorl calibrate` through typer: options parsed, errors reported in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from sample_data import MASKED
from typer.testing import CliRunner

from dorl.commands.calibrate import calibrate
from dorl.commands.export import export


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("export")(export)
    app.command("calibrate")(calibrate)
    return app


def _run(app: typer.Typer, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_calibrate_writes_a_reproducible_set(app: typer.Typer, wbc_dir: Path, tmp_path: Path) -> None:
    domains = ["--domain", f"pbc={wbc_dir / 'pbc'}", "--domain", f"{MASKED}={wbc_dir / MASKED}"]
    first = _run(app, "calibrate", *domains, "-o", tmp_path / "a", "--size", "20", "--seed", "3")
    assert first.exit_code == 0, first.output
    assert "wrote a calibration set of 20 cells (seed 3)" in first.output
    _run(app, "calibrate", *domains, "-o", tmp_path / "b", "--size", "20", "--seed", "3")
    cells = json.loads((tmp_path / "a" / "cells.json").read_text())
    assert cells == json.loads((tmp_path / "b" / "cells.json").read_text())
    assert {c["domain"] for c in cells} == {"pbc", MASKED}


def test_calibrate_rejects_a_malformed_domain(app: typer.Typer, tmp_path: Path) -> None:
    result = _run(app, "calibrate", "--domain", "pbc", "-o", tmp_path / "a")
    assert result.exit_code == 1 and "NAME=PATH" in result.output
    result = _run(app, "calibrate", "--domain", f"lab={tmp_path / 'none'}", "-o", tmp_path / "a")
    assert result.exit_code == 1 and "does not exist" in result.output
    twice = ["--domain", f"lab={tmp_path}", "--domain", f"lab={tmp_path}"]
    result = _run(app, "calibrate", *twice, "-o", tmp_path / "a")
    assert result.exit_code == 1 and "given twice" in result.output


def test_export_errors_are_one_sentence(app: typer.Typer, tinyvit_bundle: tuple[Path, list[str]], cell_paths: list[Path],
                                        tmp_path: Path) -> None:
    bundle, out = tinyvit_bundle[0], tmp_path / "out"
    cells = ["--images", cell_paths[0]]
    cases = [
        ((tmp_path / "nope", "-o", out, *cells), "does not exist"),
        ((bundle, "-o", out, "--precision", "int4", *cells), "unknown precision 'int4'"),
        ((bundle, "-o", out, "--precision", "int8", *cells), "needs a calibration set"),
        ((bundle, "-o", out, "--precision", "int8", "--calibration", tmp_path / "empty", *cells), "missing or empty"),
        ((bundle, "-o", out, "--images", tmp_path / "gone.png"), "gone.png does not exist"),
        ((bundle, "-o", out, "--images", tmp_path / "empty"), "no cell images found"),
    ]
    (tmp_path / "empty").mkdir()
    for args, message in cases:
        result = _run(app, "export", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert not out.exists()


def test_export_fp16_from_the_fp32_artifact_without_images(app: typer.Typer, tinyvit_bundle: tuple[Path, list[str]],
                                                           tinyvit_fp32: Path, tmp_path: Path) -> None:
    # no --images: the bundle records no training domains, so the cells come from the bundled sample
    result = _run(app, "export", tinyvit_bundle[0], "-o", tmp_path / "fp16", "--precision", "fp16",
                  "--fp32", tinyvit_fp32, "--parity-cells", "10")
    assert result.exit_code == 0, result.output
    assert "no --images given: 10 cells from the sample bundled with dorl" in result.output
    assert f"wrote the fp16 ONNX graph to {tmp_path / 'fp16'}" in result.output
    assert "parity vs onnx fp32 on 10 cells" in result.output and "top-1 agreement 100.00%" in result.output
    assert json.loads((tmp_path / "fp16" / "manifest.json").read_text())["precision"] == "fp16"


def test_an_export_replaces_only_its_own_kind_and_only_when_told(app: typer.Typer, tmp_path: Path,
                                                                 tinyvit_bundle: tuple[Path, list[str]],
                                                                 tinyvit_fp32: Path) -> None:
    bundle, fp16 = tinyvit_bundle[0], tmp_path / "fp16"
    args = ("--precision", "fp16", "--fp32", tinyvit_fp32, "--parity-cells", "4")
    assert _run(app, "export", bundle, "-o", fp16, *args).exit_code == 0
    before = (fp16 / "manifest.json").read_bytes()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    refused = {
        fp16: "already holds a dorl onnx artifact: pass --overwrite to replace it",
        bundle: "is, holds or lies inside the input",
        bundle / "onnx": "is, holds or lies inside the input",
        tinyvit_fp32: "is, holds or lies inside the input",
        tmp_path / "notes": "holding other files",
    }
    for output, message in refused.items():  # each refused before any graph is loaded or written
        result = _run(app, "export", bundle, "-o", output, *args)
        assert result.exit_code == 1 and message in result.output, (output, result.output)
    assert (fp16 / "manifest.json").read_bytes() == before and not (bundle / "onnx").exists()
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    replaced = _run(app, "export", bundle, "-o", fp16, *args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert (fp16 / "manifest.json").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16", "notes"]  # no temporary sibling or lock left
    calibrated = _run(app, "calibrate", "--domain", f"pbc={bundle.parent}", "-o", fp16, "--size", "4")
    assert calibrated.exit_code == 1 and "is a dorl onnx folder: refusing to write a calibration-set" in calibrated.output


def test_tolerance_options_are_checked_before_any_work(app: typer.Typer, tinyvit_bundle: tuple[Path, list[str]],
                                                       tmp_path: Path) -> None:
    for args, message in ((("--atol", "scores=1e-3"), "names no output"), (("--rtol", "probs=x"), "not a number")):
        result = _run(app, "export", tinyvit_bundle[0], "-o", tmp_path / "x", *args)
        assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "x").exists()


def test_relaxed_gate_thresholds_reach_the_manifest(app: typer.Typer, tinyvit_bundle: tuple[Path, list[str]],
                                                  tinyvit_fp32: Path, calibration_dir: Path,
                                                  held_out_cells: list[str], tmp_path: Path) -> None:
    """A throughput study of an untrained model lowers the thresholds (and turns the float selection
    off), and the manifest says so."""
    images = [a for p in held_out_cells[:10] for a in ("--images", p)]
    result = _run(app, "export", tinyvit_bundle[0], "-o", tmp_path / "int8", "--precision", "int8", "--fp32",
                  tinyvit_fp32, "--calibration", calibration_dir, "--min-agreement", "0", "--max-accuracy-drop", "1",
                  "--min-mask-iou", "0", "--gate-cells", "10", "--no-auto-float", "--no-cpu-variant", *images)
    assert result.exit_code == 0, result.output
    assert "kept in float automatically: nothing" in result.output
    assert f"strongly typed) variant: {tmp_path / 'int8-fp16'}" in result.output and "(CPU) variant" not in result.output
    assert (tmp_path / "int8-fp16" / "manifest.json").is_file() and not (tmp_path / "int8-cpu").exists()
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    gate = manifest["gate"]
    assert gate["min_agreement"] == 0.0 and gate["max_accuracy_drop"] == 1.0 and gate["min_mask_iou"] == 0.0
    assert gate["passed"] is True and gate["images"] == 10 and gate["min_cells"] == 10
    assert manifest["float_selection"]["kept_groups"] == [] and manifest["quantizer"] == "ort"
    rejected = _run(app, "export", tinyvit_bundle[0], "-o", tmp_path / "x", "--min-agreement", "1.5")
    assert rejected.exit_code == 2 and not (tmp_path / "x").exists()  # typer's range check, before any work
    unknown = _run(app, "export", tinyvit_bundle[0], "-o", tmp_path / "x", "--quantizer", "tensorrt")
    assert unknown.exit_code == 1 and "unknown INT8 quantizer 'tensorrt': choose one of ort, modelopt" in unknown.output


def test_int8_cli_defaults_are_the_library_defaults() -> None:
    import inspect

    from dorl.export.int8 import Int8Settings
    from dorl.export.int8_gate import GateThresholds

    defaults = {name: p.default for name, p in inspect.signature(export).parameters.items()}
    gate, settings = GateThresholds(), Int8Settings()
    assert (defaults["min_agreement"], defaults["max_accuracy_drop"], defaults["min_mask_iou"], defaults["gate_cells"]) \
        == (gate.min_agreement, gate.max_accuracy_drop, gate.min_mask_iou, gate.min_cells)
    assert (defaults["quantizer"], defaults["auto_float"], defaults["sweep_cells"], defaults["cpu_variant"],
            defaults["fp16_variant"]) \
        == (settings.quantizer, settings.auto_float, settings.sweep_cells, settings.cpu_variant, settings.fp16_variant)

