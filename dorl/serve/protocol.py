"""The KServe v2 inference protocol: parse infer requests, encode responses and model metadata.

A request body is JSON, or JSON followed by raw tensor bytes (the binary tensor data extension):
the `Inference-Header-Content-Length` header then gives the JSON's length, and each input whose
`parameters.binary_data_size` is set takes that many bytes, in input order, from what follows.
Responses mirror it: an output requested with `binary_data` (or every output, with the request
parameter `binary_data_output`) is appended as raw bytes. An output requested with
`classification: k` comes back as Triton's classification extension: k strings
"probability:index:label" per item, highest first.

Every problem with a request raises `ProtocolError` with the HTTP status to answer and a sentence
that says what to send instead. Nothing here touches the network or the model.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dorl.errors import DorlError
from dorl.runtime.base import TensorSpec

# v2 datatype <-> numpy dtype name (BYTES is variable-length strings, used for classification outputs).
V2_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}
BYTES = "BYTES"
MODEL_VERSION = "1"


class ProtocolError(DorlError):
    """A request that does not follow the protocol or does not fit the model; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    """One output a client asked for, and how it wants it."""

    name: str
    binary: bool
    classification: int = 0  # k > 0: top-k "probability:index:label" strings instead of the tensor


@dataclass(frozen=True)
class InferRequest:
    """A parsed, validated infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    timeout_s: float | None  # the client's own timeout (v2 `timeout` parameter, microseconds)

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def v2_datatype(dtype: str) -> str:
    """The v2 datatype name of a numpy dtype name ("float32" -> "FP32")."""
    return NUMPY_TO_V2[str(np.dtype(dtype))]


def v2_shape(spec: TensorSpec) -> list[int]:
    """A manifest shape in v2 form: dynamic (named) dimensions become -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape]


# -- requests ----------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header of a request body and the binary data after it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length is {header_length!r}, not a number of bytes.") from None
        if not 0 < length <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes: "
                                "give the length of the JSON part of the body.")
        json_part, binary = body[:length], body[length:]
    try:
        header = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request's JSON is invalid ({exc}): send a KServe v2 infer request.") from None
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply to read: send a KServe v2 infer request "
                            "(its 'data' a flat list or one nested to the tensor's shape).") from None
    if not isinstance(header, dict):
        raise ProtocolError("the request's JSON must be an object with an 'inputs' list.")
    return header, binary


def parse_infer_request(body: bytes, header_length: str | None, inputs: Mapping[str, TensorSpec],
                        outputs: Mapping[str, TensorSpec], max_batch: int) -> InferRequest:
    """Parse and check a v2 infer request against the model's tensors.

    Args:
        body: the whole (decompressed) request body.
        header_length: the Inference-Header-Content-Length header, if any.
        inputs, outputs: the model's tensor specs by name (batch first).
        max_batch: the largest batch one request may carry.

    Raises:
        ProtocolError: anything the client must change.
    """
    header, binary = split_body(body, header_length)
    entries = header.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError(f"the request has no 'inputs' list: send the model's input(s) {sorted(inputs)}.")
    names = [e.get("name") if isinstance(e, dict) else None for e in entries]
    if sorted(map(str, names)) != sorted(inputs):
        raise ProtocolError(f"the request's inputs are {names}, the model takes exactly {sorted(inputs)}.")
    offset, arrays = 0, {}
    for entry in entries:
        array, offset = _input_tensor(entry, inputs[entry["name"]], binary, offset, max_batch)
        arrays[entry["name"]] = array
    if offset != len(binary):
        raise ProtocolError(f"the body carries {len(binary) - offset} bytes of binary data no input claims: "
                            "set each input's binary_data_size to the size of its data.")
    batches = {a.shape[0] for a in arrays.values()}
    if len(batches) != 1:
        raise ProtocolError(f"the inputs have different batch sizes {sorted(batches)}: send one batch size.")
    parameters = _parameters(header)
    if header.get("id") is not None and not isinstance(header["id"], (str, int)):
        raise ProtocolError("the request's 'id' must be a string: it is echoed back as the response's 'id'.")
    return InferRequest(
        id=str(header["id"]) if header.get("id") not in (None, "") else None,
        inputs=arrays,
        outputs=_requested_outputs(header, outputs, bool(parameters.get("binary_data_output", False))),
        timeout_s=_timeout(parameters),
    )


def _parameters(entry: Mapping[str, Any]) -> dict[str, Any]:
    parameters = entry.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be a JSON object.")
    return parameters


def _timeout(parameters: Mapping[str, Any]) -> float | None:
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError(f"the 'timeout' parameter is {value!r}: give a positive number of microseconds.")
    return value / 1e6


def _input_tensor(entry: dict[str, Any], spec: TensorSpec, binary: bytes, offset: int,
                  max_batch: int) -> tuple[np.ndarray, int]:
    """One input as a numpy array (and the offset into the binary data after it)."""
    name, datatype = spec.name, v2_datatype(spec.dtype)
    if entry.get("datatype") != datatype:
        raise ProtocolError(f"input {name!r} must have datatype {datatype}, got {entry.get('datatype')!r}: "
                            f"send the {spec.dtype} tensor the graph takes.")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r} needs a 'shape' list of non-negative integers, got {shape!r}.")
    expected = v2_shape(spec)
    if len(shape) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, shape)):
        raise ProtocolError(f"input {name!r} has shape {shape}, the model takes {expected} (-1: the batch).")
    if not 1 <= shape[0] <= max_batch:
        raise ProtocolError(f"input {name!r} carries a batch of {shape[0]}; this server takes 1 to {max_batch} "
                            "items per request: split the batch.")
    dtype = np.dtype(spec.dtype)
    count = math.prod(shape)
    size = _parameters(entry).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r} declares binary_data_size {size!r}, but shape {shape} of "
                                f"{datatype} needs {count * dtype.itemsize} bytes.")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r} needs {size} bytes of binary data, the body has "
                                f"{len(binary) - offset} left: send the whole tensor.")
        array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        return array.astype(dtype).reshape(shape), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter.")
    return _json_tensor(entry["data"], name, dtype, shape), offset


def _json_tensor(data: Any, name: str, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {name!r} 'data' is not a regular array of numbers.") from None
    if values.dtype == object or isinstance(data, (dict, str)):
        raise ProtocolError(f"input {name!r} 'data' is not a regular array of numbers.")
    if values.size != math.prod(shape):
        raise ProtocolError(f"input {name!r} 'data' holds {values.size} values, shape {shape} needs {math.prod(shape)}.")
    if values.size and values.dtype.kind not in "iub" + ("f" if dtype.kind == "f" else ""):
        raise ProtocolError(f"input {name!r} 'data' must hold {'numbers' if dtype.kind == 'f' else 'integers'}.")
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(f"input {name!r} 'data' has values outside {dtype} ({info.min}..{info.max}).")
    return values.astype(dtype).reshape(shape)


def _requested_outputs(header: Mapping[str, Any], outputs: Mapping[str, TensorSpec],
                       binary_default: bool) -> tuple[RequestedOutput, ...]:
    entries = header.get("outputs")
    if entries is None:
        return tuple(RequestedOutput(name, binary_default) for name in outputs)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'.")
    requested: list[RequestedOutput] = []
    for entry in entries:
        name = entry.get("name")
        if name not in outputs:
            raise ProtocolError(f"the model has no output {name!r}: ask for some of {sorted(outputs)}.")
        if any(r.name == name for r in requested):
            raise ProtocolError(f"output {name!r} is requested twice: ask for each output once.")
        parameters = _parameters(entry)
        k = parameters.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ProtocolError(f"output {name!r}: 'classification' must be a non-negative integer, got {k!r}.")
        spec = outputs[name]
        if k and (len(spec.shape) != 2 or (isinstance(spec.shape[1], int) and k > spec.shape[1])):
            raise ProtocolError(f"output {name!r} of shape {list(spec.shape)} cannot be classified top-{k}: "
                                "ask classification of the [batch, classes] output, with k at most the class count.")
        requested.append(RequestedOutput(str(name), bool(parameters.get("binary_data", binary_default)), k))
    return tuple(requested)


# -- responses ---------------------------------------------------------------------------------
def classification(values: np.ndarray, k: int, class_names: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: the top-k "value:index:label" strings of each row."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    rows = [[f"{values[b, i]:f}:{i}:{class_names[i] if i < len(class_names) else ''}".encode() for i in row]
            for b, row in enumerate(order)]
    out = np.empty((values.shape[0], k), dtype=object)
    out[:] = rows
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor in the binary extension's layout: each element as a uint32 length + its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def encode_infer_response(model_name: str, request: InferRequest, outputs: Mapping[str, np.ndarray],
                          class_names: Sequence[str]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else None)."""
    entries, chunks = [], []
    for wanted in request.outputs:
        array = outputs[wanted.name]
        if wanted.classification:
            array = classification(array, wanted.classification, class_names)
        datatype = BYTES if array.dtype == object else v2_datatype(str(array.dtype))
        entry: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": list(array.shape)}
        if wanted.binary:
            raw = serialize_bytes(array) if datatype == BYTES else np.ascontiguousarray(array).astype(
                array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = array.reshape(-1)
            entry["data"] = [v.decode() for v in flat] if datatype == BYTES else flat.tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """A tensor as v2 model metadata describes it."""
    return {"name": spec.name, "datatype": v2_datatype(spec.dtype), "shape": v2_shape(spec)}


def error_body(message: str) -> bytes:
    """The v2 error response: {"error": message}."""
    return json.dumps({"error": message}).encode()
