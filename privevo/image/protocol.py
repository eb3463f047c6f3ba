"""The wire format of a foundation model behind an API: the KServe v2 / Open Inference Protocol.

Both sides use this module: the ``remote`` backend (:mod:`privevo.image.models.remote`) and
``pipeline.py serve`` (:mod:`privevo.serve`). It never imports torch.

A request is ``POST /v2/models/{model}/infer`` with a JSON body
``{"id", "parameters": {"call": "random" | "variation"}, "inputs": [...], "outputs": [...]}``;
each input is ``{"name", "shape", "datatype", "data"}`` (``data`` flat, row-major). With the
binary tensor extension (what Triton and KServe call ``binary_data``) a tensor's ``data`` is
left out, its ``parameters`` say ``{"binary_data_size": N}``, and its raw little-endian bytes
follow the JSON header in the body, in input order; the header ``Inference-Header-Content-Length``
gives the JSON header's length. Responses take the same form (``outputs`` instead of
``inputs``); an output is sent in binary when the request asked for it with
``{"name": "images", "parameters": {"binary_data": true}}``.

The two calls (docs/remote.md):

- ``random``: inputs ``count`` INT64 [1], ``seed`` INT64 [1], ``first_index`` INT64 [1],
  optional ``labels`` INT64 [count];
- ``variation``: inputs ``images`` UINT8 [n, H, W, C], ``degree`` FP64 [1], ``seed`` INT64 [1],
  ``first_index`` INT64 [1], optional ``labels`` INT64 [n];
- both answer one output ``images`` UINT8 [n, H, W, C]. Sample ``i`` is drawn with the
  generator of ``(seed, first_index + i)``, as in-process backends do.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from privevo.remote_calls import ProtocolError as ProtocolError  # the shared client retries on it

#: The HTTP header that gives the length of the JSON part of a binary-extension body.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Content type of a body carrying binary tensors; plain JSON bodies are application/json.
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

CALLS = ("random", "variation")

DATATYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype("uint8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array."""
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype or array.dtype == dtype.newbyteorder("="):
            return name
    raise ProtocolError(f"dtype {array.dtype} has no v2 datatype here: use one of {', '.join(DATATYPES)}")


def _tensor_entries(tensors: dict[str, np.ndarray], binary: bool) -> tuple[list[dict[str, Any]], list[bytes]]:
    entries, blobs = [], []
    for name, array in tensors.items():
        array = np.asarray(array)
        datatype = datatype_of(array)
        raw = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
        entry: dict[str, Any] = {"name": name, "shape": list(raw.shape), "datatype": datatype}
        if binary:
            blob = raw.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = raw.reshape(-1).tolist()
        entries.append(entry)
    return entries, blobs


def _encode(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([head, *blobs]), {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(head))}


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail of a body."""
    if header_length is None:
        head, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}") from None
        if not 0 <= length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        head, tail = body[:length], body[length:]
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the body is not valid JSON ({err.__class__.__name__} at byte {getattr(err, 'pos', 0)})") from None
    if not isinstance(header, dict):
        raise ProtocolError("the body must be a JSON object")
    return header, tail


def _decode_tensors(entries: Any, tail: bytes, what: str) -> dict[str, np.ndarray]:
    """Tensors from a list of v2 tensor entries and the binary tail that holds their bytes."""
    if not isinstance(entries, list):
        raise ProtocolError(f"'{what}' must be a list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"every entry of '{what}' must be an object with a name")
        name, datatype, shape = entry["name"], entry.get("datatype"), entry.get("shape")
        if datatype not in DATATYPES:
            raise ProtocolError(f"tensor {name!r} has datatype {datatype!r}: use one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"tensor {name!r} needs a shape of non-negative integers")
        dtype = DATATYPES[datatype]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        parameters = entry.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(tail):
                raise ProtocolError(f"tensor {name!r}: binary_data_size does not match its shape or the body")
            array = np.frombuffer(tail, dtype=dtype, count=count, offset=offset)
            offset += size
        else:
            data = entry.get("data")
            if not isinstance(data, list):
                raise ProtocolError(f"tensor {name!r} has neither data nor binary_data_size")
            try:
                array = np.asarray(data, dtype=dtype)
            except (ValueError, TypeError, OverflowError):
                raise ProtocolError(f"tensor {name!r}: data are not {datatype} values") from None
            if array.ndim != 1 or array.size != count:
                raise ProtocolError(f"tensor {name!r}: data hold {array.size} values, its shape needs {count}")
        tensors[name] = array.reshape(shape)
    if offset != len(tail):
        raise ProtocolError(f"the body has {len(tail) - offset} bytes that no tensor claims")
    return tensors


# ------------------------------------------------------------------------- requests


def encode_request(call: str, inputs: dict[str, np.ndarray], binary: bool = True,
                   request_id: str = "") -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer request for ``call`` (``random`` or ``variation``)."""
    entries, blobs = _tensor_entries(inputs, binary)
    header: dict[str, Any] = {"id": request_id, "parameters": {"call": call}, "inputs": entries,
                              "outputs": [{"name": "images", "parameters": {"binary_data": binary}}]}
    return _encode(header, blobs)


def decode_request(body: bytes, header_length: str | None) -> tuple[str, dict[str, np.ndarray], bool, str]:
    """``(call, inputs, binary_output, request id)`` of an infer request."""
    header, tail = _split_body(body, header_length)
    parameters = header.get("parameters") or {}
    call = parameters.get("call") if isinstance(parameters, dict) else None
    if call not in CALLS:
        raise ProtocolError(f"parameters.call must be one of {', '.join(CALLS)}, got {str(call)[:40]!r}")
    inputs = _decode_tensors(header.get("inputs"), tail, "inputs")
    binary = False
    for output in header.get("outputs") or []:
        if isinstance(output, dict) and output.get("name") == "images":
            binary = bool((output.get("parameters") or {}).get("binary_data", False))
    request_id = header.get("id")
    return call, inputs, binary, request_id if isinstance(request_id, str) else ""


# ------------------------------------------------------------------------ responses


def encode_response(model_name: str, images: np.ndarray, binary: bool, request_id: str = "") -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer response holding ``images`` (uint8 NHWC)."""
    entries, blobs = _tensor_entries({"images": images}, binary)
    header = {"model_name": model_name, "id": request_id, "outputs": entries}
    return _encode(header, blobs)


def decode_response(body: bytes, header_length: str | None) -> np.ndarray:
    """The ``images`` output of an infer response."""
    header, tail = _split_body(body, header_length)
    outputs = _decode_tensors(header.get("outputs"), tail, "outputs")
    if "images" not in outputs:
        raise ProtocolError("the response has no 'images' output")
    return outputs["images"]


def scalar(inputs: dict[str, np.ndarray], name: str, kind: type, required: bool = True) -> Any:
    """One scalar input (shape [1] or []) as a Python ``kind``; None when absent and not required."""
    if name not in inputs:
        if required:
            raise ProtocolError(f"input {name!r} is missing")
        return None
    array = inputs[name]
    if array.size != 1:
        raise ProtocolError(f"input {name!r} must hold one value, got shape {list(array.shape)}")
    return kind(array.reshape(-1)[0])
