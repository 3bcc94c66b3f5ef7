"""`dorl serve` on a loopback port, driven by NVIDIA's tritonclient: answers equal `dorl predict`'s."""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from serving import client_for, infer_input, running
from tiny_artifact import TinyArtifact
from typer.testing import CliRunner

from dorl.artifacts import read_manifest
from dorl.serve.record import rle_to_mask

http_client = pytest.importorskip("tritonclient.http", reason="the tests drive the server with tritonclient[http]")
from tritonclient.utils import InferenceServerException


def predict_records(artifact: Path, cells: list[Path], batch_size: int,
                    check_cells: bool = True) -> list[dict[str, Any]]:
    """`dorl predict --json` on the cells, one record per cell in the given order.

    ONNX Runtime's float sums depend on the batch's shape (up to ~4e-6 in a probability of the
    tiny graph between batches of 1 and 4), so comparisons run the same batches on both sides.
    """
    from dorl.commands.predict import predict

    app = typer.Typer()
    app.command()(predict)
    no_check = [] if check_cells else ["--no-cell-check"]  # /infer serves the raw outputs' labels
    result = CliRunner().invoke(app, [str(artifact), *map(str, cells), "--json", "--batch-size", str(batch_size),
                                      *no_check])
    assert result.exit_code in ((0,) if not check_cells else (0, 3)), result.output  # 3: some hold no cell
    records = {r["source"]: r for r in map(json.loads, result.stdout.splitlines())}
    return [records[str(c)] for c in cells]


def run_locally(artifact: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The artifact's outputs from a runner in this process, for the same batch."""
    from dorl.runtime.loader import load_runner

    with load_runner(artifact) as runner:
        return runner.infer({"images": images})


def post(server: Any, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    """A raw HTTP POST with Python's http.client (for what tritonclient does not send)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.request("POST", path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        connection.close()


def get(server: Any, path: str, method: str = "GET") -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.getheader("content-type", "").startswith(
            "application/json") else body.decode()
    finally:
        connection.close()


# -- health, metadata, config ---------------------------------------------------------------
def test_health_and_readiness(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dorl")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "classification",
                                                          "model_configuration"]


def test_model_metadata_comes_from_the_manifest(client: Any, tiny_artifact: TinyArtifact) -> None:
    manifest = read_manifest(tiny_artifact.folder)
    meta = client.get_model_metadata("dorl")
    assert meta["name"] == "dorl" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}]
    assert [(o["name"], o["datatype"], o["shape"][1:]) for o in meta["outputs"]] == [
        (o["name"], "FP32", o["shape"][1:]) for o in manifest["outputs"]]
    params = meta["parameters"]
    assert params["class_names"] == manifest["class_names"] and params["precision"] == "fp32"
    assert params["sha256"] == manifest["files"]["model.onnx"]["sha256"] and params["max_batch_size"] == "8"
    assert params["site_profile"] is None
    config = client.get_model_config("dorl")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [224, 224, 3]
    assert client.get_model_metadata("dorl", model_version="1") == meta


# -- inference -------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_infer_returns_the_graphs_outputs(client: Any, tiny_artifact: TinyArtifact, sample_batch: np.ndarray,
                                          binary: bool) -> None:
    images = sample_batch[:5]
    outputs = [http_client.InferRequestedOutput(n, binary_data=binary) for n in ("probs", "feature", "mask_logits")]
    result = client.infer("dorl", [infer_input(images, binary)], outputs=outputs, request_id="cells-1")
    local = run_locally(tiny_artifact.folder, images)
    reference = tiny_artifact.reference(images)
    for name in ("probs", "feature", "mask_logits"):
        np.testing.assert_allclose(result.as_numpy(name), local[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.as_numpy(name), reference[name], atol=1e-4)  # float32 vs float64
    assert result.get_response()["id"] == "cells-1"


def test_served_probabilities_equal_dorl_predict(client: Any, tiny_artifact: TinyArtifact,
                                                 sample_cells: list[Path], sample_batch: np.ndarray) -> None:
    records = predict_records(tiny_artifact.folder, sample_cells, batch_size=3, check_cells=False)
    names = tiny_artifact.class_names
    served = np.concatenate([client.infer("dorl", [infer_input(sample_batch[i:i + 3])]).as_numpy("probs")
                             for i in range(0, len(sample_batch), 3)])
    for record, probs in zip(records, served):
        assert names[int(np.argmax(probs))] == record["label"]
        expected = np.array([record["probs"][n] for n in names])
        assert np.abs(probs - expected).max() <= 1e-6  # predict prints 6 decimals
    top = client.infer("dorl", [infer_input(sample_batch[:2])],
                       outputs=[http_client.InferRequestedOutput("probs", class_count=1)]).as_numpy("probs")
    assert [row[0].decode().split(":")[2] for row in top] == [r["label"] for r in records[:2]]


def test_cell_endpoint_answers_predicts_record(tiny_server: Any, tiny_artifact: TinyArtifact,
                                               sample_cells: list[Path]) -> None:
    records = predict_records(tiny_artifact.folder, sample_cells[:4], batch_size=1)
    for cell, expected in zip(sample_cells[:4], records):
        status, _, record = post(tiny_server, "/v2/models/dorl/analyze?mask=rle", cell.read_bytes(),
                                 {"Content-Type": "image/jpeg", "X-Dorl-Source": str(cell)})
        assert status == 200
        assert {k: record[k] for k in expected if k != "mask"} == {k: v for k, v in expected.items() if k != "mask"}
        mask = rle_to_mask(record["mask"])
        from PIL import Image

        with Image.open(cell) as image:
            assert mask.shape == (image.height, image.width) and 0 < mask.mean() < 1
        assert record["site_profile"] is None


def test_concurrent_requests_share_batches(tiny_artifact: TinyArtifact, sample_batch: np.ndarray) -> None:
    with running(tiny_artifact.folder, max_batch=8, max_delay_ms=300) as server:
        client = client_for(server, concurrency=8)
        pending = [client.async_infer("dorl", [infer_input(sample_batch[i:i + 1])]) for i in range(8)]
        results = [p.get_result().as_numpy("probs") for p in pending]
        reference = tiny_artifact.reference(sample_batch[:8])["probs"]
        np.testing.assert_allclose(np.concatenate(results), reference, atol=2e-6)
        batches = server.service.metrics.batch_size.series[("tensor",)]
        count, total = batches[-1], batches[-2]
        assert total == 8 + 1 - 1 and count < 8  # 8 cells in fewer than 8 batches: requests were batched
        client.close()


# -- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize("images, datatype, model, status, message", [
    (np.zeros((1, 224, 224, 3), np.uint8), "UINT8", "other", "404", "unknown model 'other'"),
    (np.zeros((1, 224, 224, 3), np.float32), "FP32", "dorl", "400", "must have datatype UINT8"),
    (np.zeros((1, 200, 224, 3), np.uint8), "UINT8", "dorl", "400", "the model takes [-1, 224, 224, 3]"),
    (np.zeros((9, 224, 224, 3), np.uint8), "UINT8", "dorl", "400", "takes 1 to 8 items per request"),
])
def test_wrong_requests_get_a_clear_error(client: Any, images: np.ndarray, datatype: str, model: str, status: str,
                                          message: str) -> None:
    tensor = http_client.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor])
    assert caught.value.status() == status and message in caught.value.message()


def test_unknown_version_output_and_path(client: Any, tiny_server: Any) -> None:
    with pytest.raises(InferenceServerException, match="has only version 1"):
        client.get_model_metadata("dorl", model_version="2")
    with pytest.raises(InferenceServerException, match="has no output 'scores'"):
        client.infer("dorl", [infer_input(np.zeros((1, 224, 224, 3), np.uint8))],
                     outputs=[http_client.InferRequestedOutput("scores")])
    assert get(tiny_server, "/v2/nowhere") == (404, {"error": "GET /v2/nowhere is not an endpoint of this server: "
                                                     "see GET /v2/models/<name> for this server's model."})
    status, body = get(tiny_server, "/v2/models/dorl/infer")
    assert status == 405 and "check the HTTP method" in body["error"]


def test_compressed_requests_are_accepted_and_unknown_encodings_refused(client: Any, tiny_server: Any,
                                                                        tiny_artifact: TinyArtifact,
                                                                        sample_batch: np.ndarray) -> None:
    for algorithm in ("gzip", "deflate"):
        result = client.infer("dorl", [infer_input(sample_batch[:2])], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("probs"), tiny_artifact.reference(sample_batch[:2])["probs"],
                                   atol=2e-6)
    status, _, body = post(tiny_server, "/v2/models/dorl/infer", b"{}", {"Content-Encoding": "br"})
    assert status == 415 and "send identity, gzip or deflate" in body["error"]
    status, _, body = post(tiny_server, "/v2/models/dorl/infer", gzip.compress(b"{}")[:-6],
                           {"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in body["error"]


def test_bad_bodies_and_images(tiny_server: Any) -> None:
    status, _, body = post(tiny_server, "/v2/models/dorl/infer", b"{oops")
    assert status == 400 and "JSON is invalid" in body["error"]
    status, _, body = post(tiny_server, "/v2/models/dorl/analyze", b"")
    assert status == 400 and "body is empty" in body["error"]
    status, _, record = post(tiny_server, "/v2/models/dorl/analyze", b"not an image at all")
    assert status == 422 and record["label"] is None and "not an image" in record["error"]
    status, _, body = post(tiny_server, "/v2/models/dorl/analyze?mask=svg", b"x")
    assert status == 400 and "mask='svg'" in body["error"]


def test_oversize_requests_are_refused_before_inference(tiny_artifact: TinyArtifact, sample_batch: np.ndarray) -> None:
    with running(tiny_artifact.folder, max_request_bytes=200_000) as server:
        client = client_for(server)
        assert client.infer("dorl", [infer_input(sample_batch[:1])]).as_numpy("probs").shape == (1, 5)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("dorl", [infer_input(sample_batch[:4])])
        assert caught.value.status() == "413" and "limit of 200000" in caught.value.message()
        bomb = gzip.compress(b"0" * 1_000_000)  # 1 kB on the wire, 1 MB inflated
        status, _, body = post(server, "/v2/models/dorl/infer", bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "decompresses to more than" in body["error"]
        assert server.service.metrics.rejected[("too_large",)] == 2
        client.close()


def test_serving_never_loads_torch(tiny_artifact: TinyArtifact, sample_cells: list[Path]) -> None:
    code = ("import sys, threading, urllib.request\n"
            "from dorl.serve.config import ServeConfig\nfrom dorl.serve.server import Server\n"
            f"server = Server({str(tiny_artifact.folder)!r}, ServeConfig(port=0))\n"
            "thread = threading.Thread(target=server.run); thread.start()\n"
            f"body = open({str(sample_cells[0])!r}, 'rb').read()\n"
            "request = urllib.request.Request(server.url + '/v2/models/dorl/analyze', data=body, method='POST')\n"
            "assert urllib.request.urlopen(request).status == 200\n"
            "server.stop(30); thread.join(30)\n"
            "print(','.join(m for m in ('torch', 'torchvision', 'segment_anything') if m in sys.modules) or 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CLEAN"
