"""The external-data files an ONNX file points at, read from its protobuf bytes without the onnx package.

ONNX Runtime opens whatever `location` a tensor's external data names; an untrusted file could name any
path on the machine. The runtime reads those locations first and refuses any that is not one of the
artifact's own hashed files. The walk follows only the messages that can hold tensors (onnx.proto3 field
numbers); everything else is skipped by its wire type. Torch-free, dependency-free.
"""

from __future__ import annotations

from dbunet.errors import ArtifactError

# message -> {field number: message type of that field}
_SCHEMA: dict[str, dict[int, str]] = {
    "Model": {7: "Graph", 20: "Training", 25: "Function"},
    "Training": {1: "Graph", 2: "Graph"},
    "Graph": {1: "Node", 5: "Tensor", 15: "Sparse"},
    "Function": {7: "Node", 11: "Attribute"},
    "Node": {5: "Attribute"},
    "Attribute": {5: "Tensor", 6: "Graph", 10: "Tensor", 11: "Graph", 22: "Sparse", 23: "Sparse"},
    "Sparse": {1: "Tensor", 2: "Tensor"},
    "Tensor": {13: "Entry"},
}
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) for each field; length-delimited values as memoryviews."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise ValueError("truncated field")
            value, pos = data[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


def _walk(data: memoryview, message: str, found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("nesting too deep")
    children = _SCHEMA.get(message, {})
    for number, wire, value in _fields(data):
        if message == "Entry":
            continue
        child = children.get(number)
        if child is None or wire != 2:
            continue
        if child == "Entry":
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            if entry.get(1) == "location":
                found.add(entry.get(2, ""))
        else:
            _walk(value, child, found, depth + 1)


def external_data_locations(onnx_bytes: bytes, name: str = "model") -> set[str]:
    """Every external-data `location` in the model, as written in the file."""
    found: set[str] = set()
    try:
        _walk(memoryview(onnx_bytes), "Model", found, 0)
    except ValueError as exc:
        raise ArtifactError(f"{name} is not a readable ONNX file ({exc})") from None
    return found
