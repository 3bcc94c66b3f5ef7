"""A real TinyViT export (bundled pretrained weights) served and compared with `dorl predict` (slow: one export)."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from serving import client_for, infer_input, running
from typer.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tinyvit_artifact(tmp_path_factory: pytest.TempPathFactory, sample_cells: list[Path]) -> Path:
    torch = pytest.importorskip("torch", reason="exporting TinyViT needs the train extra")
    pytest.importorskip("onnxscript", reason="exporting TinyViT needs the export extra")
    from dorl.config import ModelConfig
    from dorl.export.onnx_export import export_onnx
    from dorl.pretrained import build_pretrained

    torch.manual_seed(0)
    model, _ = build_pretrained(ModelConfig(cae_depth=1, cae_decoder_depth=1))
    folder = tmp_path_factory.mktemp("serve_tinyvit") / "fp32"
    export_onnx(model.eval(), folder, images=[str(c) for c in sample_cells[:4]])
    return folder


def predict_records(artifact: Path, cells: list[Path]) -> list[dict[str, Any]]:
    from dorl.commands.predict import predict

    app = typer.Typer()
    app.command()(predict)
    result = CliRunner().invoke(app, [str(artifact), *map(str, cells), "--json"])
    assert result.exit_code in (0, 3), result.output  # 3: the untrained model's masks may say "no cell"
    records = {r["source"]: r for r in map(json.loads, result.stdout.splitlines())}
    return [records[str(c)] for c in cells]


def analyze(server: Any, cell: Path, out: dict[str, dict[str, Any]]) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=300)
    connection.request("POST", "/v2/models/dorl/analyze?mask=none", cell.read_bytes(), {"X-Dorl-Source": str(cell)})
    response = connection.getresponse()
    out[str(cell)] = json.loads(response.read())
    connection.close()


def test_tinyvit_served_equals_predict(tinyvit_artifact: Path, sample_cells: list[Path],
                                       sample_batch: np.ndarray) -> None:
    records = predict_records(tinyvit_artifact, sample_cells)  # batches of 8 and 4
    names = list(records[0]["probs"])
    with running(tinyvit_artifact, max_delay_ms=200) as server:
        client = client_for(server)
        probs = np.concatenate([client.infer("dorl", [infer_input(sample_batch[i:i + 5])]).as_numpy("probs")
                                for i in range(0, len(sample_batch), 5)])  # batches of 5, 5, 2
        served: dict[str, dict[str, Any]] = {}
        threads = [threading.Thread(target=analyze, args=(server, cell, served)) for cell in sample_cells]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        batches = server.service.metrics.batch_size.series[("cell",)]
    for record, row in zip(records, probs):
        assert int(np.argmax(row)) == int(np.argmax([record["probs"][n] for n in names]))
        assert np.abs(row - np.array([record["probs"][n] for n in names])).max() <= 1e-6
    for cell, record in zip(sample_cells, records):
        answer = served[str(cell)]
        assert answer["label"] == record["label"] and answer["uncertain"] == record["uncertain"]
        assert answer["status"] == record["status"] and answer["no_cell"] == record["no_cell"]
        assert max(abs(answer["probs"][n] - record["probs"][n]) for n in names) <= 1e-6
    assert batches[-1] < len(sample_cells)  # the twelve concurrent cells were batched
