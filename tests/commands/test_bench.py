"""`dorl bench` through typer's CliRunner on the tiny artifact and real cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from sample_data import MASKED
from tiny_artifact import build_tiny_artifact
from typer.testing import CliRunner

from dorl.commands.bench import bench, parse_batch_sizes
from dorl.errors import ConfigError

pytest.importorskip("onnxruntime", reason="bench runs the tiny artifact with onnxruntime")




@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs onnx")
    return build_tiny_artifact(tmp_path_factory.mktemp("bench") / "tiny").folder


def invoke(*args: str):  # type: ignore[no-untyped-def]
    app = typer.Typer()
    app.command()(bench)
    return CliRunner().invoke(app, list(args))


def test_bench_writes_the_report(artifact: Path, wbc_dir: Path, tmp_path: Path) -> None:
    result = invoke(str(artifact), "--labelled", str(wbc_dir / MASKED), "--max-cells", "5", "--batch-sizes", "1,2",
                    "--iterations", "2", "--warmup", "0", "--threads", "1", "--no-plots", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    (config,) = report["configurations"]
    assert config["status"] == "ok" and [b["batch"] for b in config["batches"]] == [1, 2]
    assert report["cells"]["count"] == 5 and report["cells"]["labelled"] == 5
    assert config["accuracy"]["total"] == 5
    assert "onnxruntime-fp32" in result.output and (tmp_path / "report.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/artifact", "--labelled", "jtsc"], "does not exist"),
        (["{artifact}"], "no cells to benchmark"),
        (["{artifact}", "--images", "{empty}"], "no image files found"),
        (["{artifact}", "--labelled", "jtsc", "--batch-sizes", "1,x"], "not a comma-separated list"),
        (["{artifact}", "--labelled", "jtsc", "--batch-sizes", "0,2"], "not a comma-separated list"),
    ],
)
def test_bad_inputs_are_clear_errors(artifact: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    filled = [a.format(artifact=artifact, empty=tmp_path / "empty") for a in args]
    result = invoke(*filled, "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_parse_batch_sizes() -> None:
    assert parse_batch_sizes("8,1,2,2") == (1, 2, 8)
    with pytest.raises(ConfigError):
        parse_batch_sizes("")


def test_the_report_never_goes_into_an_artifact_or_under_a_file(artifact: Path, tmp_path: Path) -> None:
    result = invoke(str(artifact), "--labelled", "jtsc", "-o", str(artifact))
    assert result.exit_code == 1 and "is a dorl onnx folder" in result.output
    assert not (artifact / "report.json").exists()
    (tmp_path / "afile").write_text("x")
    result = invoke(str(artifact), "--labelled", "jtsc", "-o", str(tmp_path / "afile" / "bench"))
    assert result.exit_code == 1 and "is a file, not a folder" in result.output


def test_failed_configurations_set_the_exit_code(artifact: Path, wbc_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:-100])  # truncated, manifest intact
    common = ["--labelled", str(wbc_dir / MASKED), "--max-cells", "2", "--batch-sizes", "1", "--iterations", "1",
              "--warmup", "0", "--threads", "1", "--no-plots"]
    result = invoke(str(broken), *common, "-o", str(tmp_path / "none"))
    assert result.exit_code == 4 and "1 of 1 configurations failed" in result.output
    assert (tmp_path / "none" / "report.json").is_file()  # the report says why
    result = invoke(str(artifact), str(broken), *common, "-o", str(tmp_path / "some"))
    assert result.exit_code == 3 and "1 of 2 configurations failed" in result.output
