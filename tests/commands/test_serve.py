"""`dorl serve` and `dorl triton` from the command line: a real process, its drain on SIGTERM, its refusals."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import typer
from slow_artifact import build_slow_artifact
from tiny_artifact import build_tiny_artifact
from typer.testing import CliRunner

from dorl.commands.serve import serve
from dorl.commands.triton import triton

pytest.importorskip("onnxruntime", reason="dorl serve runs the test artifacts with onnxruntime")
pytest.importorskip("uvicorn", reason="dorl serve needs the serve extra (starlette, uvicorn)")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx", reason="building the tiny artifact needs the onnx package")
    return build_tiny_artifact(tmp_path_factory.mktemp("serve_cli") / "tiny").folder


def invoke(command, *args: object) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_a_port_in_use_is_said_before_loading_anything(artifact: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, output = invoke(serve, artifact, "--port", port)
    assert code == 1 and f"port {port} on 127.0.0.1 is already in use: stop the other server or choose another --port." \
        in output


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "binding to 0.0.0.0 would expose the analyzer to the network: add --allow-remote"),
    (["--mask", "svg"], "mask format 'svg' is not one of png, rle, none"),
    (["--name", "a/b"], "model name 'a/b' is not allowed"),
    (["--queue-size", "0"], "queue size must be at least 1"),
    (["--backend", "tensorrt"], "which tensorrt cannot run"),
])
def test_bad_options_are_one_sentence(artifact: Path, args: list[str], message: str) -> None:
    code, output = invoke(serve, artifact, "--port", 0, *args)
    assert code == 1 and message in " ".join(output.split())


def test_missing_and_corrupt_artifacts(artifact: Path, tmp_path: Path) -> None:
    code, output = invoke(serve, tmp_path / "nowhere", "--port", 0)
    assert code == 1 and "does not exist: give the path of an artifact folder" in output
    corrupt = tmp_path / "corrupt"
    shutil.copytree(artifact, corrupt)
    data = bytearray((corrupt / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (corrupt / "model.onnx").write_bytes(bytes(data))
    code, output = invoke(serve, corrupt, "--port", 0)
    assert code == 1 and "does not match the sha256 in its manifest" in " ".join(output.split())


def post_cell(url: str, answers: list[int]) -> None:
    """One binary v2 infer request of one cell (body built by tritonclient), sent with http.client."""
    from tritonclient.http import InferInput
    from tritonclient.http._utils import _get_inference_request

    tensor = InferInput("images", [1, 224, 224, 3], "UINT8")
    tensor.set_data_from_numpy(np.full((1, 224, 224, 3), 100, np.uint8))
    body, length = _get_inference_request([tensor], "", None, 0, False, False, 0, None, None)
    connection = http.client.HTTPConnection(url, timeout=120)
    try:
        connection.request("POST", "/v2/models/dorl/infer", body, {"Inference-Header-Content-Length": str(length)})
        response = connection.getresponse()
        response.read()
        answers.append(response.status)
    finally:
        connection.close()


def queue_depth(url: str) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=30).read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("dorl_queue_depth ")))


def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http", reason="the request bodies are built by tritonclient[http]")
    slow = build_slow_artifact(tmp_path / "slow", depth=4)  # a few tenths of a second per cell
    process = subprocess.Popen([sys.executable, "-m", "dorl.cli", "serve", str(slow), "--port", "0",
                                "--max-batch", "1", "--max-delay-ms", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert "ready on http://127.0.0.1:" in line, line + (process.stderr.read() if process.stderr else "")
        url = line.rsplit("http://", 1)[1].strip()
        answers: list[int] = []
        threads = [threading.Thread(target=post_cell, args=(url, answers)) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while (depth := queue_depth(url)) < 3 and time.monotonic() < deadline:  # one running, three queued
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert depth >= 3  # three queued behind the running one, or all four when none has started yet
        for t in threads:
            t.join(120)
        assert answers == [200] * 4  # every request in flight got its answer
        assert process.wait(60) == 0
        assert "stopped after finishing the requests in flight" in (process.stderr.read() if process.stderr else "")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5).close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_sigterm_right_after_ready_still_stops_cleanly(artifact: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "dorl.cli", "serve", str(artifact), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert "ready on http://127.0.0.1:" in line, line
        process.send_signal(signal.SIGTERM)  # before uvicorn has installed its own handlers
        assert process.wait(60) == 0
        assert "stopped after finishing the requests in flight" in (process.stderr.read() if process.stderr else "")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_triton_command_writes_a_repository(artifact: Path, tmp_path: Path) -> None:
    code, output = invoke(triton, artifact, "-o", tmp_path / "repo", "--name", "wbc")
    assert code == 0 and "wrote" in output and "tritonserver --model-repository=" in output
    assert (tmp_path / "repo" / "wbc" / "config.pbtxt").is_file()
    assert (tmp_path / "repo" / "wbc" / "1" / "model.onnx").is_file()
    code, output = invoke(triton, artifact, "-o", tmp_path / "repo", "--name", "wbc")
    assert code == 1 and "already exists" in output
    code, output = invoke(triton, artifact, "-o", tmp_path / "repo", "--device", "tpu")
    assert code == 1 and "device 'tpu' is not one of auto, gpu, cpu" in output


def test_without_the_serve_extra_the_command_says_how_to_install_it(artifact: Path) -> None:
    hide = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'uvicorn':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from dorl.cli import main\n"
            f"sys.argv = ['dorl', 'serve', {str(artifact)!r}, '--port', '0']\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", hide], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "dorl serve needs the Python package 'uvicorn', which is not installed: run `pip install 'dorl[serve]'`" \
        in " ".join(result.stderr.split())
