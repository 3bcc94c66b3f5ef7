"""What a stored ONNX graph says about itself, read and stamped without the onnx package.

An ONNX file is one protobuf `ModelProto`. Two of its parts matter to an artifact's identity:
its `metadata_props` (key/value strings; dorl stamps the class names there, so a manifest
cannot rename the classes of the graph it describes) and the files its tensors load as
external data (each must be listed, and so hashed, in the manifest). Both are read here by
walking the protobuf's wire format, skipping tensor bytes by their length, so the runtime
needs neither onnx nor to load the weights; a stamp is appended as one more `metadata_props`
field, which protobuf readers merge with the others.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from dorl.errors import ArtifactError

# message -> {field number: message type of that field} (only the paths that reach tensors)
_MESSAGES = {
    "model": {7: "graph", 14: "entry", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_METADATA_FIELD = 14
_WIRE_VARINT, _WIRE_64, _WIRE_LEN, _WIRE_32 = 0, 1, 2, 5


class GraphFacts:
    """The metadata and the external-data locations of one ONNX file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata: list[tuple[str, str]] = []
        self.external: list[str] = []
        with open(self.path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise ArtifactError(f"{self.path} is empty: it is not an ONNX graph; export it again.")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # closed when the last view is gone
        try:
            self._walk(memoryview(data), "model")
        except (IndexError, ValueError) as exc:
            raise ArtifactError(f"{self.path} is not a readable ONNX graph ({exc}): export it again.") from None

    def values(self, key: str) -> list[str]:
        """Every value stored under `key` in the graph's metadata, in file order."""
        return [value for k, value in self.metadata if k == key]

    def _walk(self, data: memoryview, kind: str) -> tuple[str, str]:
        """Read one message; returns (key, value) for a StringStringEntryProto."""
        children = _MESSAGES[kind]
        entry = {1: "", 2: ""}
        pos = 0
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == _WIRE_VARINT:
                _, pos = _varint(data, pos)
            elif wire in (_WIRE_64, _WIRE_32):
                pos += 8 if wire == _WIRE_64 else 4
            elif wire == _WIRE_LEN:
                length, pos = _varint(data, pos)
                if pos + length > len(data):
                    raise ValueError("a field runs past the end of the file")
                body, pos = data[pos:pos + length], pos + length
                if kind == "entry" and number in entry:
                    entry[number] = bytes(body).decode("utf-8", errors="replace")
                elif number in children:
                    self._keep(kind, number, children[number], self._walk(body, children[number]))
            else:
                raise ValueError(f"unknown wire type {wire}")
        return entry[1], entry[2]

    def _keep(self, parent: str, number: int, kind: str, entry: tuple[str, str]) -> None:
        if kind != "entry":
            return
        if parent == "model" and number == _METADATA_FIELD:
            self.metadata.append(entry)
        elif parent == "tensor" and entry[0] == "location":
            self.external.append(entry[1])


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint is longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _WIRE_LEN) + _encode_varint(len(payload)) + payload


def stamp(path: str | Path, key: str, value: str) -> None:
    """Record `key: value` in the graph's metadata (nothing to do when it is there already).

    Raises:
        ArtifactError: the graph already records another value under `key`.
    """
    present = GraphFacts(path).values(key)
    if present and all(v == value for v in present):
        return
    if present:
        raise ArtifactError(f"{path} already records {key} = {present[0]!r}, not {value!r}: export the graph again.")
    entry = _length_field(1, key.encode()) + _length_field(2, value.encode())
    with open(path, "ab") as f:
        f.write(_length_field(_METADATA_FIELD, entry))
