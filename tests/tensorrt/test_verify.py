"""The engine check's comparison, on the CPU: real cells from the bundled sample, an FP16 ONNX graph
standing in for the engine beside its FP32 graph (both in ONNX Runtime), and drifts that must be refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dorl.errors import ConfigError
from dorl.tensorrt.verify import (
    THRESHOLDS,
    VerificationError,
    check_verification,
    compare_outputs,
    run_in_batches,
    verification_cells,
)


def test_cells_come_from_the_bundled_sample_spread_over_labs_and_classes() -> None:
    checked, where = verification_cells(64, 224)
    cells = checked.pixels
    assert not checked.two_pass and cells.shape == (64, 224, 224, 3) and cells.dtype == np.uint8
    assert where == "64 cells from the bundled sample (dorl/assets/sample)"
    assert len({cell.tobytes() for cell in cells}) == 64  # 64 different images
    with pytest.raises(ConfigError, match="needs at least that many images; the bundled sample .* holds"):
        verification_cells(10_000, 224)


def test_cells_from_the_users_images(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[2] / "dorl" / "assets" / "sample" / "pbc" / "monocyte"
    cells, where = verification_cells(3, 64, [sample])
    assert cells.pixels.shape == (3, 64, 64, 3) and str(sample) in where
    with pytest.raises(ConfigError, match="give more with --verify-images"):
        verification_cells(3, 64, [tmp_path])



def test_a_cell_centric_engine_is_checked_on_its_cells_too() -> None:
    from dorl.data.framing import FramingConfig

    checked, _ = verification_cells(4, 224, framing=FramingConfig(input="cell", mask="pseudo"))
    assert checked.two_pass and checked.crops is not None and checked.crops.shape == (4, 224, 224, 3)
    assert not np.array_equal(checked.crops, checked.pixels)  # pass 2 sees the cells cut out, not the fields

@pytest.fixture(scope="module")
def fp32_and_fp16(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The tiny contract graph and its FP16 conversion, both run in ONNX Runtime on 32 bundled real cells."""
    onnx = pytest.importorskip("onnx", reason="the FP16 conversion needs onnx (export extra)")
    ort = pytest.importorskip("onnxruntime", reason="the reference runs in onnxruntime")
    from tiny_artifact import build_tiny_artifact

    from dorl.export.fp16 import convert_to_fp16
    from dorl.runtime.onnxrt import OnnxRuntimeRunner

    folder = build_tiny_artifact(tmp_path_factory.mktemp("verify") / "tiny").folder
    fp16_path = folder.parent / "fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(folder / "model.onnx"))), str(fp16_path))
    cells = verification_cells(32, 224)[0].pixels
    with OnnxRuntimeRunner(folder, providers=["cpu"]) as runner:
        fp32 = run_in_batches(runner, "images", cells)
    session = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fp16 = {name: np.concatenate([session.run([name], {"images": cells[i:i + 8]})[0] for i in range(0, 32, 8)])
            for name in names}
    return fp32, fp16


def test_an_fp16_graph_passes_the_fp16_thresholds_against_its_fp32_graph(fp32_and_fp16) -> None:  # type: ignore[no-untyped-def]
    fp32, fp16 = fp32_and_fp16
    result = compare_outputs(fp32, fp16, "fp16", "32 sample cells")
    assert result.problems() == [] and result.finite and result.cells == 32
    assert 0 < result.probs_max_abs_diff < THRESHOLDS["fp16"].max_probs_diff
    assert result.mask_iou_mean is not None and result.mask_iou_mean > 0.95
    check_verification(result)
    record = result.to_dict()
    assert record["passed"] and record["thresholds"]["min_agreement"] == 0.995 and record["sources"] == "32 sample cells"


def test_a_drifting_engine_is_refused_with_its_numbers(fp32_and_fp16) -> None:  # type: ignore[no-untyped-def]
    fp32, fp16 = fp32_and_fp16
    drifted = dict(fp16)
    drifted["probs"] = fp16["probs"][:, ::-1].copy()  # classes scrambled: top-1 flips
    drifted["mask_logits"] = -fp16["mask_logits"]  # cell and background swapped
    result = compare_outputs(fp32, drifted, "fp16")
    problems = result.problems()
    assert len(problems) == 3
    assert problems[0].startswith("probs differ by up to") and "(limit 0.05)" in problems[0]
    assert "top-1 agrees on" in problems[1] and "(needs 99.5%" in problems[1]
    assert problems[2].startswith("mask IoU averages") and "(needs 0.95)" in problems[2]
    with pytest.raises(VerificationError, match=r"the FP16 engine drifts from its ONNX graph on 32 real cells: probs"):
        check_verification(result)


def test_nan_is_refused_and_int8_thresholds_are_wider(fp32_and_fp16) -> None:  # type: ignore[no-untyped-def]
    fp32, fp16 = fp32_and_fp16
    broken = {**fp16, "feature": np.full_like(fp16["feature"], np.nan)}
    assert compare_outputs(fp32, broken, "fp16").problems() == ["the engine produced NaN or Inf"]
    nudged = {**fp32, "probs": fp32["probs"] + 0.08}
    assert compare_outputs(fp32, nudged, "int8").problems() == []
    assert compare_outputs(fp32, nudged, "fp16").problems()[0].startswith("probs differ by up to 0.080")
    with pytest.raises(ConfigError, match="no verification thresholds for precision 'fp32'"):
        compare_outputs(fp32, fp32, "fp32")
