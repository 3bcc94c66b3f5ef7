"""Records: JSON-ready, never NaN, printable names with exact bytes, and what the exit code says."""

from __future__ import annotations

import base64
import json
import os

import numpy as np

from dorl.runtime.cell_result import CellResult
from dorl.runtime.records import (
    CSV_COLUMNS,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_PARTIAL,
    Tally,
    cell_record,
    csv_header,
    csv_row,
    printable_source,
)

NAMES = ["basophil", "neutrophil"]


def result(**changes: object) -> CellResult:
    fields: dict[str, object] = {
        "source": "cells/a.jpg", "label": "neutrophil", "probs": {"basophil": 0.1, "neutrophil": 0.9},
        "feature": np.zeros(4), "mask_lowres": np.ones((4, 4), bool), "size_hw": (40, 30), "uncertain": False}
    fields.update(changes)
    return CellResult(**fields)  # type: ignore[arg-type]


def test_a_labelled_cell() -> None:
    record = cell_record(result(distance=1.23456, site="bccd"), mask_file="masks/a.png")
    assert record["status"] == "ok" and record["label"] == "neutrophil" and record["confidence"] == 0.9
    assert record["size"] == [40, 30] and record["mask"] == "masks/a.png" and record["site"] == "bccd"
    assert record["distance"] == 1.2346 and "source_b64" not in record
    assert json.loads(json.dumps(record, allow_nan=False)) == record


def test_no_cell_and_non_finite_values_never_leak() -> None:
    record = cell_record(result(label=None, uncertain=True, no_cell=("the mask is empty",),
                                probs={"basophil": float("nan"), "neutrophil": float("inf")}, distance=float("nan")))
    assert record["status"] == "no_cell" and record["label"] is None and record["confidence"] is None
    assert record["probs"] == {"basophil": None, "neutrophil": None} and record["distance"] is None
    json.dumps(record, allow_nan=False)  # strict JSON: raises on NaN


def test_non_utf8_names_are_printable_and_recoverable() -> None:
    name = os.fsdecode(b"cells/caf\xe9.jpg")
    shown, raw = printable_source(name)
    assert shown == "cells/caf\\xe9.jpg" and base64.b64decode(raw or "") == b"cells/caf\xe9.jpg"
    record = cell_record(CellResult.failed(name, "cannot be read"))
    assert record["source"] == shown and json.dumps(record).isascii()
    assert printable_source("cells/café.jpg") == ("cells/café.jpg", None)


def test_csv_row_follows_the_header() -> None:
    record = cell_record(result(no_cell=("a", "b"), label=None, uncertain=True))
    header, row = csv_header(NAMES), csv_row(record, NAMES)
    assert header[: len(CSV_COLUMNS)] == list(CSV_COLUMNS) and header[len(CSV_COLUMNS):] == NAMES
    values = dict(zip(header, row))
    assert values["status"] == "no_cell" and values["label"] == "" and values["uncertain"] == "1"
    assert values["no_cell"] == "a; b" and values["neutrophil"] == "0.9"


def test_exit_codes() -> None:
    def tally(*statuses: str) -> Tally:
        t = Tally()
        for status in statuses:
            t.counts[status] += 1
        return t

    assert tally("ok", "uncertain").exit_code() == EXIT_OK
    assert tally("ok", "failed").exit_code() == EXIT_PARTIAL
    assert tally("ok", "no_cell").exit_code() == EXIT_PARTIAL
    assert tally("failed", "no_cell").exit_code() == EXIT_NOTHING
    masked = tally("ok")
    masked.add(cell_record(result(), mask_error="disk full"))
    assert masked.exit_code() == EXIT_PARTIAL and "1 masks not written" in masked.summary()
    stopped = tally("ok")
    stopped.signal = 15
    assert stopped.exit_code() == 143 and "stopped early by signal 15" in stopped.summary()
    assert tally().exit_code() == EXIT_NOTHING
