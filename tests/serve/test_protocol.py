"""KServe v2 request parsing and response encoding, checked against tritonclient's own encoders and decoders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dorl.runtime.base import TensorSpec
from dorl.serve.protocol import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    classification,
    encode_infer_response,
    parse_infer_request,
)

INPUTS = {"images": TensorSpec("images", "uint8", ("batch", 4, 4, 3))}
OUTPUTS = {"probs": TensorSpec("probs", "float32", ("batch", 3)),
           "mask_logits": TensorSpec("mask_logits", "float32", ("batch", 2, 2, 2))}
CLASSES = ["a", "b", "c"]
http = pytest.importorskip("tritonclient.http", reason="the wire format is checked against tritonclient[http]")


def client_request(images: np.ndarray, binary: bool, outputs: list | None = None, **kwargs) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient sends for `images`."""
    from tritonclient.http._utils import _get_inference_request

    tensor = http.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    body, length = _get_inference_request([tensor], kwargs.get("request_id", ""), outputs, 0, False, False, 0,
                                          kwargs.get("timeout"), None)
    return body, None if length is None else str(length)


def parse(body: bytes, length: str | None, max_batch: int = 4) -> InferRequest:
    return parse_infer_request(body, length, INPUTS, OUTPUTS, max_batch)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_requests_parse_to_the_same_pixels(binary: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    request = parse(*client_request(images, binary, request_id="r1", timeout=2500))
    np.testing.assert_array_equal(request.inputs["images"], images)
    assert request.inputs["images"].dtype == np.uint8
    assert request.id == "r1" and request.timeout_s == pytest.approx(0.0025) and request.batch == 2
    assert [(o.name, o.binary) for o in request.outputs] == [("probs", True), ("mask_logits", True)]


def test_requested_outputs_keep_their_binary_and_classification_choices() -> None:
    images = np.zeros((1, 4, 4, 3), np.uint8)
    outputs = [http.InferRequestedOutput("probs", binary_data=False, class_count=2),
               http.InferRequestedOutput("mask_logits", binary_data=True)]
    request = parse(*client_request(images, True, outputs))
    assert request.outputs == (RequestedOutput("probs", False, 2), RequestedOutput("mask_logits", True, 0))


@pytest.mark.parametrize("binary", [True, False])
def test_responses_decode_with_tritonclient(binary: bool) -> None:
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], np.float32)
    masks = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2) / 3
    request = InferRequest("x", {}, (RequestedOutput("probs", binary), RequestedOutput("mask_logits", binary)), None)
    body, length = encode_infer_response("m", request, {"probs": probs, "mask_logits": masks}, CLASSES)
    assert (length is not None) == binary
    result = http.InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("probs"), probs)  # float32 values survive JSON exactly
    np.testing.assert_array_equal(result.as_numpy("mask_logits"), masks)
    assert result.get_response()["id"] == "x" and result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False])
def test_classification_answers_top_k_labels_as_triton_does(binary: bool) -> None:
    probs = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]], np.float32)
    request = InferRequest(None, {}, (RequestedOutput("probs", binary, 2),), None)
    body, length = encode_infer_response("m", request, {"probs": probs}, CLASSES)
    top = http.InferResult.from_response_body(body, header_length=length).as_numpy("probs")
    assert top.shape == (2, 2)
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in top] == [
        ["0.700000:1:b", "0.200000:0:a"], ["0.500000:0:a", "0.300000:2:c"]]
    assert classification(probs, 1, CLASSES)[1, 0] == b"0.500000:0:a"


def body_of(header: dict, binary: bytes = b"") -> tuple[bytes, str | None]:
    text = json.dumps(header).encode()
    return text + binary, (str(len(text)) if binary else None)


IMAGES_OK = {"name": "images", "datatype": "UINT8", "shape": [1, 4, 4, 3], "data": [0] * 48}


@pytest.mark.parametrize("header, binary, length, message", [
    (None, b"", "x", "not a number of bytes"),
    (None, b"", "999999", "give the length of the JSON part"),
    ({"inputs": []}, b"", None, "has no 'inputs' list"),
    ({"inputs": [{**IMAGES_OK, "name": "pixels"}]}, b"", None, "takes exactly ['images']"),
    ({"inputs": [{**IMAGES_OK, "datatype": "FP32"}]}, b"", None, "must have datatype UINT8"),
    ({"inputs": [{**IMAGES_OK, "shape": [1, 5, 4, 3]}]}, b"", None, "the model takes [-1, 4, 4, 3]"),
    ({"inputs": [{**IMAGES_OK, "shape": [5, 4, 4, 3]}]}, b"", None, "takes 1 to 4 items per request"),
    ({"inputs": [{**IMAGES_OK, "shape": "1x4x4x3"}]}, b"", None, "needs a 'shape' list"),
    ({"inputs": [{**IMAGES_OK, "data": [0] * 47}]}, b"", None, "holds 47 values"),
    ({"inputs": [{**IMAGES_OK, "data": [256] * 48}]}, b"", None, "outside uint8"),
    ({"inputs": [{**IMAGES_OK, "data": [0.5] * 48}]}, b"", None, "must hold integers"),
    ({"inputs": [{**IMAGES_OK, "data": [[0] * 47, [0]]}]}, b"", None, "not a regular array"),
    ({"inputs": [{**IMAGES_OK, "data": {}}]}, b"", None, "not a regular array"),
    ({"inputs": [{**IMAGES_OK, "data": [0] * 47 + [None]}]}, b"", None, "not a regular array"),
    ({"inputs": [IMAGES_OK], "id": {"run": 1}}, b"", None, "'id' must be a string"),
    ({"inputs": [{k: v for k, v in IMAGES_OK.items() if k != "data"}]}, b"", None, "neither 'data' nor"),
    ({"inputs": [{**IMAGES_OK, "parameters": {"binary_data_size": 40}}]}, b"\0" * 40, "", "needs 48 bytes"),
    ({"inputs": [{**IMAGES_OK, "parameters": {"binary_data_size": 48}}]}, b"\0" * 40, "", "the body has 40 left"),
    ({"inputs": [IMAGES_OK]}, b"\0" * 8, "", "no input claims"),
    ({"inputs": [IMAGES_OK], "outputs": [{"name": "nope"}]}, b"", None, "has no output 'nope'"),
    ({"inputs": [IMAGES_OK], "outputs": [{"name": "probs"}, {"name": "probs"}]}, b"", None, "requested twice"),
    ({"inputs": [IMAGES_OK], "outputs": [{"name": "mask_logits", "parameters": {"classification": 1}}]}, b"", None,
     "cannot be classified"),
    ({"inputs": [IMAGES_OK], "outputs": [{"name": "probs", "parameters": {"classification": 4}}]}, b"", None,
     "cannot be classified top-4"),
    ({"inputs": [IMAGES_OK], "parameters": {"timeout": -1}}, b"", None, "positive number of microseconds"),
    ([1, 2], b"", None, "must be an object"),
])
def test_bad_requests_say_what_to_send(header, binary, length, message) -> None:
    if header is None:
        body = b'{"inputs": []}'
    else:
        body, declared = body_of(header, binary)
        length = declared if length == "" else length
    with pytest.raises(ProtocolError, match=None) as caught:
        parse(body, length)
    assert message in str(caught.value) and caught.value.status == 400


def test_invalid_json_is_a_400() -> None:
    with pytest.raises(ProtocolError, match="JSON is invalid") as caught:
        parse(b"{not json", None)
    assert caught.value.status == 400
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ProtocolError, match="nested too deeply") as caught:
        parse(deep, None)
    assert caught.value.status == 400
