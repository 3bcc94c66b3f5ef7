"""`dorl export`: a bundle to a verified ONNX graph (fp32, fp16, or int8 Q/DQ plus its FP16-remainder and CPU variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dorl.commands.common import user_errors

IMAGES_HELP = ("Real cell images or folders (repeat the option) for the parity checks and, for int8, the accuracy "
               "gate (labelled by their <class>/ folder). Default: cells of the bundle's training domains (as its "
               "manifest records them) where they are on this machine, else the sample bundled with dorl.")
TOLERANCE_HELP = ("FP32 parity: {what} tolerance, for every output (VALUE) or one (NAME=VALUE, e.g. probs=2e-4); "
                  "repeat it. A value mismatches when it is beyond both atol and rtol x |PyTorch's value|.")


@user_errors
def export(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `dorl train`.")],
    output: Annotated[Path, typer.Option(
        "-o", "--output", "--out", help="The artifact folder (int8 also writes <DIR>-fp16 and <DIR>-cpu).")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp32",
    images: Annotated[list[Path] | None, typer.Option("--images", help=IMAGES_HELP)] = None,
    parity_cells: Annotated[int, typer.Option(
        "--parity-cells", min=0, help="Check parity on at most this many of the images, drawn stratified by lab and "
                                      "class (0: all of them).")] = 200,
    atol: Annotated[list[str] | None, typer.Option("--atol", help=TOLERANCE_HELP.format(what="absolute"))] = None,
    rtol: Annotated[list[str] | None, typer.Option("--rtol", help=TOLERANCE_HELP.format(what="relative"))] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="The calibration set from `dorl calibrate` (int8).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Node name, module or group pattern kept in float (int8).")
    ] = None,
    opset: Annotated[int, typer.Option(min=17, max=23, help="ONNX opset (17+ keeps LayerNormalization one node; 23 is "
                                                       "the newest the exporter writes).")] = 18,
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
    quantizer: Annotated[str, typer.Option(help="INT8 Q/DQ quantizer: ort or modelopt (pip install 'dorl\\[modelopt]').")
                         ] = "ort",
    auto_float: Annotated[bool, typer.Option(
        help="INT8: keep the most damaging node groups in float until the gate holds.")] = True,
    sweep_cells: Annotated[int, typer.Option(
        min=1, help="INT8: gate cells the sensitivity sweep scores each node group on (fewer: faster, noisier).")
    ] = 64,
    cpu_variant: Annotated[bool, typer.Option(
        help="INT8: also make the dynamic CPU graph <DIR>-cpu (its own float selection; off saves that time).")
    ] = True,
    fp16_variant: Annotated[bool, typer.Option(
        help="INT8: also make the Q/DQ graph with its float remainder in FP16, <DIR>-fp16 (TensorRT 11's strongly typed).")
    ] = True,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing ONNX artifacts at the output folders (once the new ones are verified).")
    ] = False,
) -> None:
    """Export, check and verify an ONNX graph; a drift beyond the thresholds is an error."""
    from dorl.data.images import find_images
    from dorl.errors import ConfigError
    from dorl.export.int8 import Int8Settings
    from dorl.export.int8_gate import GateThresholds
    from dorl.export.onnx_export import check_precision, export_onnx
    from dorl.export.parity import tolerances_from

    check_precision(precision, opset)
    tolerances = tolerances_from(atol or [], rtol or [])
    gate = GateThresholds(min_agreement=min_agreement, max_accuracy_drop=max_accuracy_drop,
                          min_mask_iou=min_mask_iou, min_cells=gate_cells)
    int8 = Int8Settings(quantizer=quantizer, gate=gate, exclude=tuple(exclude or ()), auto_float=auto_float,
                        sweep_cells=sweep_cells, cpu_variant=cpu_variant, fp16_variant=fp16_variant)
    sources = [str(p) for p in find_images(images)] if images else None
    if images and not sources:
        raise ConfigError(f"no cell images found in {', '.join(map(str, images))}: pass --images with image files or "
                          "folders (the parity check runs on real cells), or leave it out to use the default cells.")
    manifest = export_onnx(bundle, output, precision=precision, opset=opset, images=sources, calibration=calibration,
                           fp32_artifact=fp32, int8=int8, parity_cells=parity_cells, tolerances=tolerances,
                           overwrite=overwrite, reporter=lambda message: typer.echo(message, err=True))
    typer.echo(_summary(manifest, output))


def _summary(manifest: dict[str, Any], output: Path) -> str:
    parity = manifest["parity"]
    lines = [f"wrote the {manifest['precision']} ONNX graph to {output}",
             (f"parity vs {parity['reference']} on {parity['images']} cells: probs max diff "
             f"{parity['max_abs_diff']['probs']:.2e}, top-1 agreement {parity['top1_agreement']:.2%}, "
             f"mask IoU min {parity['mask_iou_min']:.4f}")]
    if manifest["precision"] == "int8":
        from dorl.export.int8 import CPU, FP16, variant_folders

        refused, folders = manifest["refused_variants"], variant_folders(output)
        made = [name for name, on in ((FP16, manifest["fp16_variant"]), (CPU, manifest["cpu_variant"])) if on]
        lines.extend(f"{name} variant: {'refused by the gate' if name in refused else folders[name]}" for name in made)
        kept = manifest["float_selection"]["kept_groups"]
        lines.append(f"kept in float automatically: {', '.join(kept) if kept else 'nothing'}")
        lines.append("latency (ms/image, ONNX Runtime CPU): " + ", ".join(
            f"{k} {v:.1f}" for k, v in manifest["latency_ms_per_image"]["onnxruntime_cpu"].items()))
    return "\n".join(lines)
