"""Export a DoRL bundle to one verified ONNX graph: export, checker, shapes, parity, manifest.

The graph comes from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`) at opset 18:
it keeps LayerNormalization as one node and matched SAM ViT-B to 4.5e-6, where the TorchScript
exporter at opset 17 drifted to 8e-4 and cannot trace TinyViT's neck norm with a dynamic batch
(measured for this module). Every export is run in ONNX Runtime on real
cell images beside the PyTorch model before its manifest is written; the FP16 and INT8 graphs
are derived from the verified FP32 one.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dorl.artifacts import write_manifest
from dorl.config import to_dict
from dorl.contract import DATA_FILE, EXTERNAL_DATA_BYTES, HEAD_FILE, MODEL_FILE
from dorl.deps import require, versions
from dorl.errors import ArtifactError, ConfigError
from dorl.export.check_cells import CheckCells
from dorl.export.derived import EXPORT_VERSIONS
from dorl.export.parity import Tolerance
from dorl.export.parity_cells import DEFAULT_PARITY_CELLS, default_cells, sample_cells
from dorl.export.source import ExportSource
from dorl.safe_write import atomic_folder, check_output, output_lock

if TYPE_CHECKING:
    from dorl.export.int8 import Int8Settings

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is a single ONNX op from opset 17 on
MAX_OPSET = 23  # the newest opset torch.onnx writes (its ONNX_MAX_OPSET, torch 2.14): above it the exporter fails late
MAX_BATCH = 4096

Reporter = Callable[[str], None]


def check_precision(precision: str, opset: int = DEFAULT_OPSET) -> None:
    """Raise ConfigError unless `precision` is one of PRECISIONS and `opset` keeps LayerNorm whole and can be written."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} splits LayerNormalization into pieces that overflow in FP16: use {MIN_OPSET}+.")
    if opset > MAX_OPSET:
        raise ConfigError(f"opset {opset} is newer than the exporter writes: use {MIN_OPSET} to {MAX_OPSET} "
                          f"(default {DEFAULT_OPSET}).")


def export_graph(model: Any, folder: Path, opset: int = DEFAULT_OPSET) -> list[str]:
    """Write the wrapped model as `folder/model.onnx` (plus external data past 2 GB).

    Returns:
        The file names written, relative to `folder`.
    """
    torch = require("torch", "exporting to ONNX")
    require("onnxscript", "the dynamo ONNX exporter")
    from dorl.contract import INPUT_NAME, OUTPUT_NAMES
    from dorl.export.wrapper import ExportWrapper

    check_precision("fp32", opset)
    size = model.config.image_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # batch 2: batch 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    with torch.no_grad():
        program = torch.onnx.export(
            ExportWrapper(model).eval(), (example,), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: batch}},
        )
    folder.mkdir(parents=True, exist_ok=True)
    program.save(str(folder / MODEL_FILE), external_data=big)
    return [MODEL_FILE] + ([DATA_FILE] if (folder / DATA_FILE).exists() else [])


def check_graph(path: Path, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the ONNX checker and shape inference; check names, dtypes and shapes against the specs.

    Returns:
        Graph facts for the manifest (node count, opset, LayerNormalization count).
    """
    onnx = require("onnx", "checking an ONNX graph")
    onnx.checker.check_model(str(path))  # by path: works for graphs with external data
    graph_model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False), strict_mode=True)
    graph = graph_model.graph
    found = [_spec(v) for v in graph.input] + [_spec(v) for v in graph.output]
    wanted = [(s["name"], s["dtype"], list(s["shape"])) for s in inputs + outputs]
    if found != wanted:
        raise ArtifactError(f"the exported graph's inputs/outputs {found} differ from the contract {wanted}: "
                            "this is a bug in the export wrapper.")
    ops = [n.op_type for n in graph.node]
    return {
        "nodes": len(ops),
        "layer_norm_nodes": ops.count("LayerNormalization"),
        "opset": next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")),
    }


def _spec(value: Any) -> tuple[str, str, list[int | str]]:
    import onnx

    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return value.name, dtype, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def write_head(model: Any, stats: dict[str, Any] | None, folder: Path) -> list[str]:
    """Write the host-side head and the source feature statistics (for site profiles), when the bundle has them."""
    if stats is None:
        return []
    from safetensors.torch import save_file

    tensors = {f"head.{k}": v.detach().float().contiguous() for k, v in model.head.state_dict().items()}
    tensors.update({f"source.{k}": v.float().contiguous() for k, v in stats.items()})
    save_file(tensors, str(folder / HEAD_FILE))
    return [HEAD_FILE]


def base_fields(model: Any, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], graph: dict[str, Any],
                source_sha256: str | None) -> dict[str, Any]:
    """The manifest fields every precision shares (the FP32 graph's description)."""
    config = model.config
    return {
        "precision": "fp32",
        "class_names": list(config.class_names),
        "image_size": config.image_size,
        "inputs": inputs,
        "outputs": outputs,
        "config": to_dict(config),
        "opset": graph["opset"],
        "exporter": "torch.onnx.export(dynamo=True)",
        "graph": graph,
        "versions": versions(*EXPORT_VERSIONS),
        "source_bundle_sha256": source_sha256,
    }


def export_fp32(source: ExportSource, out_dir: str | Path, cells: CheckCells, opset: int = DEFAULT_OPSET,
                reporter: Reporter | None = None, tolerances: Mapping[str, Tolerance] | None = None,
                overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Export, check and verify the FP32 graph; write the artifact atomically.

    Args:
        source: the bundle (read once) or model to export.
        out_dir: the artifact folder (a new or empty folder, or an ONNX artifact with `overwrite`).
        cells: the real cells of the parity check.
        tolerances: per output (see `parity.Tolerance`); default `parity.FP32_TOLERANCES`.
        overwrite: replace an existing ONNX artifact at `out_dir` (only once the new one is verified).
        inputs: the export's inputs, which the output may not touch.

    Returns:
        The manifest written.

    Raises:
        ParityError: ONNX Runtime and PyTorch disagree beyond the FP32 tolerances.
    """
    from dorl.export.parity import FP32_TOLERANCES, check_fp32, compare, onnx_infer, run_torch
    from dorl.export.wrapper import io_specs

    say = reporter or (lambda message: None)
    model = source.load()
    inputs_spec, outputs_spec = io_specs(model)
    with atomic_folder(out_dir, kind="onnx", overwrite=overwrite, inputs=inputs) as stage:
        say(f"exporting the {model.config.encoder} model to ONNX (opset {opset})")
        files = export_graph(model, stage, opset)
        graph = check_graph(stage / MODEL_FILE, inputs_spec, outputs_spec)
        from dorl.export.trt_compat import require_compatible
        compat = require_compatible(stage / MODEL_FILE, "the exported FP32 graph")
        say(f"checking parity with PyTorch on {len(cells)} real cells" + (" (both passes)" if cells.two_pass else ""))
        report = compare(cells.run(lambda x: run_torch(model, x)), cells.run(onnx_infer(stage / MODEL_FILE)),
                         tolerances=FP32_TOLERANCES if tolerances is None else tolerances, cells=cells.names)
        check_fp32(report)
        fields = base_fields(model, inputs_spec, outputs_spec, graph, source.sha256)
        if "framing" in source.metadata:  # the runtime frames each image as the model was trained (dorl.data.framing)
            fields["framing"] = dict(source.metadata["framing"])
        if "tta" in source.metadata:  # and averages the views the bundle was chosen with (dorl.contract.TTA_MODES)
            fields["tta"] = source.metadata["tta"]
        head = write_head(model, source.feature_stats(), stage)
        if head:
            fields["head"] = {"kind": model.config.head, "file": HEAD_FILE}
        return write_manifest(stage, "onnx", list(files) + head, **fields,
                              parity={"reference": "pytorch", **report.to_dict()}, tensorrt_compatibility=compat)


def export_onnx(source: Any, out_dir: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                images: Sequence[Any] | None = None, calibration: str | Path | None = None,
                gate_images: Sequence[Any] | None = None, fp32_artifact: str | Path | None = None,
                reporter: Reporter | None = None, int8: Int8Settings | None = None,
                parity_cells: int = DEFAULT_PARITY_CELLS,
                tolerances: Mapping[str, Tolerance] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export a bundle (or model) to a verified ONNX artifact of `precision`.

    Every input and output is checked (precision, bundle, calibration set, images, the output
    folders) before the slow export. The output folders are locked for the whole run and each is
    written atomically: a failed or killed export leaves what was there before.

    Args:
        source: a bundle folder or a DoRLModel.
        out_dir: the artifact folder. For int8 the FP16-remainder and CPU variants go beside it, in
            `<out_dir>-fp16` and `<out_dir>-cpu` (unless `int8` turns them off).
        precision: "fp32", "fp16" or "int8" (Q/DQ, symmetric, for TensorRT).
        images: real cell images (paths or arrays) for the parity checks; None: drawn from the
            bundle's training domains or the bundled sample (`parity_cells.default_cells`).
        calibration: an INT8 calibration-set folder from `dorl calibrate` (int8 only).
        gate_images: labelled held-out cells for the INT8 accuracy gate (int8 only; paths whose
            parent folder is the class name); default `images`.
        fp32_artifact: the verified FP32 artifact of the same bundle to derive fp16/int8 from,
            instead of exporting it again.
        int8: the INT8 settings (`int8.Int8Settings`: quantizer, gate thresholds, exclusions);
            default its defaults. The manifest records them.
        parity_cells: the parity checks run on at most this many of the images, drawn stratified by
            lab and class (0: all of them).
        tolerances: the FP32 check's per-output tolerances (default `parity.FP32_TOLERANCES`).
        overwrite: replace existing ONNX artifacts at the output folders (never anything else).

    Returns:
        The manifest of the artifact in `out_dir`.

    Raises:
        OutputError: an output folder may not be written (an input, another kind of artifact, an
            existing artifact without `overwrite`, a folder of other files).
    """
    check_precision(precision, opset)
    if precision == "fp32" and (fp32_artifact is not None or calibration is not None):
        raise ConfigError("an FP32 export takes neither --fp32 nor --calibration (they derive FP16/INT8 graphs): "
                          "leave them out, or choose --precision fp16 or int8.")
    if precision == "fp16" and (calibration is not None or (int8 is not None and int8.exclude)):
        raise ConfigError("an FP16 export takes neither --calibration nor --exclude (they are for INT8): leave them "
                          "out, or choose --precision int8.")
    what = ExportSource.of(source)
    outputs = [Path(out_dir)]
    if precision == "int8":
        from dorl.export.int8 import variant_folders

        outputs = list(variant_folders(out_dir).values())
    inputs = [p for p in (source, calibration, fp32_artifact) if isinstance(p, (str, Path))]
    inputs += [p for p in [*(images or []), *(gate_images or [])] if isinstance(p, (str, Path))]
    for folder in outputs:
        check_output(folder, kind="onnx", overwrite=overwrite, inputs=inputs)
    with contextlib.ExitStack() as locks:
        for folder in outputs:
            locks.enter_context(output_lock(folder))
        return _export_checked(what, out_dir, precision, opset, images, calibration, gate_images, fp32_artifact,
                               reporter, int8, parity_cells, tolerances, overwrite, inputs)


def _export_checked(what: ExportSource, out_dir: str | Path, precision: str, opset: int, images: Sequence[Any] | None,
                    calibration: str | Path | None, gate_images: Sequence[Any] | None,
                    fp32_artifact: str | Path | None, reporter: Reporter | None, int8: Int8Settings | None,
                    parity_cells: int, tolerances: Mapping[str, Tolerance] | None, overwrite: bool,
                    inputs: list[str | Path]) -> dict[str, Any]:
    settings = _int8_settings(int8) if precision == "int8" else None
    calibration_set = _calibration_set(calibration) if precision == "int8" else None
    held = frozenset(c.sha256 for c in calibration_set.cells) if calibration_set else frozenset()
    if images is None:
        # an INT8 export's gate scores these cells too: the model's own classes, at least the gate's count
        gate = settings.gate if settings is not None and gate_images is None else None
        count = max(parity_cells, gate.min_cells) if gate is not None and parity_cells > 0 else parity_cells
        images, where = default_cells(what.metadata, count, held, what.class_names if gate is not None else None)
        if reporter:
            reporter(f"no --images given: {len(images)} cells from {where}")
    images = list(images)
    quantizing = _int8_inputs(calibration_set, images if gate_images is None else list(gate_images),
                              what.class_names, settings) if calibration_set is not None and settings else None
    cells = CheckCells.load(sample_cells(images, parity_cells), what.image_size, _framing(what))
    if precision == "fp32":
        return export_fp32(what, out_dir, cells, opset, reporter, tolerances, overwrite, inputs)
    with _verified_fp32(what, fp32_artifact, cells, opset, reporter, tolerances) as fp32_dir:
        if quantizing is None:
            from dorl.export.fp16 import export_fp16

            return export_fp16(fp32_dir, out_dir, cells, reporter, overwrite=overwrite, inputs=inputs)
        from dorl.export.int8 import quantize_artifact

        return quantize_artifact(fp32_dir, out_dir, *quantizing, reporter=reporter, overwrite=overwrite, inputs=inputs)


def _framing(source: ExportSource) -> Any:
    """The framing the bundle was trained with (None: whole images)."""
    from dorl.manifests import parse_framing

    folder = {"folder": str(source.bundle.folder)} if source.bundle is not None else {}
    return parse_framing({**source.metadata, **folder})


def _int8_settings(settings: Int8Settings | None) -> Int8Settings:
    """The INT8 settings, with the chosen quantizer's packages checked before the slow export."""
    from dorl.export.int8 import Int8Settings

    settings = settings or Int8Settings()
    if settings.quantizer == "modelopt":
        from dorl.export.int8_modelopt import require_modelopt

        require_modelopt()
    return settings


def _calibration_set(calibration: str | Path | None) -> Any:
    from dorl.calibration.calibration_set import read_calibration_set

    if calibration is None:
        raise ConfigError("an INT8 export needs a calibration set: create one with `dorl calibrate` and pass "
                          "--calibration DIR.")
    return read_calibration_set(calibration)


def _int8_inputs(calibration_set: Any, gate_images: list[Any], class_names: list[str],
                 settings: Int8Settings) -> tuple[Any, Any, Int8Settings]:
    """The calibration set, the labelled held-out cells (outside it) for the gate, and the settings."""
    from dorl.export.int8_gate import gate_set

    held_out = gate_set(gate_images, class_names, frozenset(c.sha256 for c in calibration_set.cells),
                        settings.gate.min_cells)
    return calibration_set, held_out, settings


@contextlib.contextmanager
def _verified_fp32(source: ExportSource, fp32_artifact: str | Path | None, cells: CheckCells, opset: int,
                   reporter: Reporter | None, tolerances: Mapping[str, Tolerance] | None) -> Iterator[Path]:
    """The given FP32 artifact of this bundle, or a fresh export in a temporary folder."""
    if fp32_artifact is not None:
        from dorl.manifests import read_onnx

        manifest = read_onnx(fp32_artifact)
        if manifest.precision != "fp32" or (source.sha256 is not None and manifest.source_bundle_sha256 != source.sha256):
            raise ArtifactError(f"{fp32_artifact} is not an FP32 export of this bundle: export the bundle with "
                                "--precision fp32 and pass that folder.")
        yield manifest.folder
        return
    with tempfile.TemporaryDirectory(prefix="dorl-fp32-") as tmp:
        export_fp32(source, tmp, cells, opset, reporter, tolerances)
        yield Path(tmp)
