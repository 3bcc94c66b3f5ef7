"""`dorl export`: a bundle to a verified ONNX graph (fp32, fp16, or int8 Q/DQ plus its CPU variant)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dorl.commands.common import user_errors

DEFAULT_SAMPLE = 200  # cells: 1 flip in 200 is the FP16 limit of 99.5 % agreement
SAMPLE_SEED = 1
IMAGES_HELP = ("Real cell images or folders (repeat the option) for the parity checks and, for int8, the accuracy "
               "gate (labelled by their <class>/ folder). Default: a sample of shared/data/wbc.")


def default_images(calibration: Path | None) -> list[str]:
    """A stratified sample of the shared cell images, outside the calibration set; [] if there are none."""
    from dorl.calibration.calibration_set import NOT_CLASSES, draw_cells, read_calibration_set
    from dorl.paths import wbc_data_dir

    root = wbc_data_dir()
    if root is None:
        return []
    domains = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in NOT_CLASSES}
    held = frozenset(c.sha256 for c in read_calibration_set(calibration).cells) if calibration else frozenset()
    return [c.path for c in draw_cells(domains, DEFAULT_SAMPLE, SAMPLE_SEED, exclude=held)]


@user_errors
def export(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `dorl train`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The artifact folder (int8 also writes <DIR>-cpu).")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp32",
    images: Annotated[list[Path] | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="The calibration set from `dorl calibrate` (int8).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Node name, module or group pattern kept in float (int8).")
    ] = None,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset (17+ keeps LayerNormalization one node).")] = 18,
    fp32: Annotated[
        Path | None, typer.Option("--fp32", help="Derive fp16/int8 from this FP32 export of the bundle (no re-export).")
    ] = None,
    min_agreement: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="INT8 gate: least top-1 agreement with FP32 (lower it only to time an untrained model).")
    ] = 0.99,
    max_accuracy_drop: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="INT8 gate: largest accuracy drop from FP32, as a fraction.")] = 0.01,
    min_mask_iou: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="INT8 gate: least mean IoU of the cell masks with FP32's.")] = 0.90,
    gate_cells: Annotated[int, typer.Option(
        min=1, help="INT8 gate: least number of labelled cells outside the calibration set it scores.")] = 200,
    quantizer: Annotated[str, typer.Option(help="INT8 Q/DQ quantizer: ort or modelopt (pip install 'dorl[modelopt]').")
                         ] = "ort",
    auto_float: Annotated[bool, typer.Option(
        help="INT8: keep the most damaging node groups in float until the gate holds.")] = True,
) -> None:
    """Export, check and verify an ONNX graph; a drift beyond the thresholds is an error."""
    from dorl.data.images import find_images
    from dorl.errors import ConfigError
    from dorl.export.int8 import Int8Settings
    from dorl.export.int8_gate import GateThresholds
    from dorl.export.onnx_export import check_precision, export_onnx

    check_precision(precision)
    int8 = Int8Settings(quantizer, GateThresholds(min_agreement, max_accuracy_drop, min_mask_iou, gate_cells),
                        tuple(exclude or ()), auto_float)
    sources = [str(p) for p in find_images(images)] if images else default_images(calibration)
    if not sources:
        raise ConfigError(f"no cell images found{' in ' + ', '.join(map(str, images)) if images else ''}: pass "
                          "--images with image files or folders (the parity check runs on real cells).")
    manifest = export_onnx(bundle, output, precision=precision, opset=opset, images=sources, calibration=calibration,
                           fp32_artifact=fp32, int8=int8, reporter=lambda message: typer.echo(message, err=True))
    typer.echo(_summary(manifest, output))


def _summary(manifest: dict[str, Any], output: Path) -> str:
    parity = manifest["parity"]
    lines = [f"wrote the {manifest['precision']} ONNX graph to {output}",
             (f"parity vs {parity['reference']} on {parity['images']} cells: probs max diff "
             f"{parity['max_abs_diff']['probs']:.2e}, top-1 agreement {parity['top1_agreement']:.2%}, "
             f"mask IoU min {parity['mask_iou_min']:.4f}")]
    if manifest["precision"] == "int8":
        lines.append(f"TensorRT strongly typed (INT8 + FP16) variant: {output.with_name(output.name + '-fp16')}; "
                     f"CPU variant: {output.with_name(output.name + '-cpu')}")
        kept = manifest["float_selection"]["kept_groups"]
        lines.append(f"kept in float automatically: {', '.join(kept) if kept else 'nothing'}")
        lines.append("latency (ms/image, ONNX Runtime CPU): " + ", ".join(
            f"{k} {v:.1f}" for k, v in manifest["latency_ms_per_image"]["onnxruntime_cpu"].items()))
    return "\n".join(lines)
