"""Responses: their worst-case sizes, checked against HDC_MAX_RESPONSE_BYTES before anything is encoded (and, by
the routes, before anything is computed), and their encoding as JSON or .npz.

Invariants: response_size() is never below the encoded size; a response over INLINE_CODEC_MAX_BYTES (worst case)
is encoded in a worker thread, JSON in pieces of at most JSON_PIECE_ELEMENTS elements so that the event loop gets
a turn between them; real numbers are written as the doubles they equal, as Python's float repr writes them.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import orjson
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel

from .codec import JSON_TYPE, NPZ_TYPE, ApiError, dense_array, invalid, off_loop
from .payload import Payload

# The most elements one orjson call encodes: a worker thread encoding a large JSON response lets the event loop run
# between two calls (orjson holds the GIL for the whole of each).
JSON_PIECE_ELEMENTS = 1 << 16
# Worst-case JSON bytes of one element, its separator included: "-1," for a ±1 element (MAP, BSC), 24 characters
# for the longest shortest-repr of a double ("-2.2250738585072014e-308") for a real number or an int64, and
# "[re,im]," for an FHRR element.
JSON_SIGN_BYTES = 3
JSON_NUMBER_BYTES = 25
JSON_PHASOR_BYTES = 2 * JSON_NUMBER_BYTES + 2
# An .npz member's bytes besides its data: the .npy header (numpy pads it to a multiple of 64, 128 for short
# headers) and the zip local and central headers with the member's name twice and a zip64 extra field.
NPZ_MEMBER_OVERHEAD_BYTES = 512


def wants_binary(request: web.Request, payload: Payload | None) -> bool:
    accept = request.headers.get("Accept", "")
    if NPZ_TYPE in accept:
        return True
    return bool(payload is not None and payload.binary and JSON_TYPE not in accept)


def hypervector_bytes(model: VSAModel, dim: int, binary: bool, dtype: torch.dtype | None = None) -> int:
    """Worst-case encoded bytes of one hypervector: its storage in an .npz, its dense form in JSON."""
    if binary:
        storage = model.storage_dtype(dtype)
        return model.storage_width(dim) * storage.itemsize
    per_element = {"MAP": JSON_SIGN_BYTES, "BSC": JSON_SIGN_BYTES, "FHRR": JSON_PHASOR_BYTES}.get(
        model.name, JSON_NUMBER_BYTES
    )
    return dim * per_element + 3  # "[", "]," around it


def number_bytes(binary: bool, itemsize: int = 8) -> int:
    """Worst-case encoded bytes of one number of a result (a similarity, an index, a probability)."""
    return itemsize if binary else JSON_NUMBER_BYTES


def check_response_size(field: str, nbytes: int, limit: int, what: str) -> None:
    """400 naming `field` when a response of `nbytes` (worst case) would exceed HDC_MAX_RESPONSE_BYTES; called
    before computing, where the request says how large the result will be."""
    if nbytes > limit:
        raise invalid(
            field,
            f"{what} would make a response of up to {nbytes} bytes, over the limit of {limit} "
            "bytes (HDC_MAX_RESPONSE_BYTES); request fewer",
            error="response_too_large",
        )


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, Hypervectors):
        return value.data.detach().cpu().numpy()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    return None


def _json_size(value: Any) -> int:
    """Worst-case bytes of `value` in JSON, without encoding large arrays."""
    if isinstance(value, Hypervectors):
        count = math.prod(value.shape)
        return count * hypervector_bytes(value.vsa, value.dim, False) + 2 * len(value.shape) + 2
    array = _as_array(value)
    if array is not None:
        return array.size * JSON_NUMBER_BYTES + 2 * array.ndim + 2
    if isinstance(value, str):
        return 6 * len(value) + 3  # every character escaped as \\uXXXX at worst
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return 6 * sum(map(len, value)) + 3 * len(value) + 2
        return sum(map(_json_size, value)) + len(value) + 2
    if isinstance(value, dict):
        return sum(_json_size(k) + _json_size(v) + 2 for k, v in value.items()) + 2
    return JSON_NUMBER_BYTES


def _npz_size(value: Any) -> int:
    array = _as_array(value)
    if array is not None:
        return array.nbytes + NPZ_MEMBER_OVERHEAD_BYTES
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return 4 * max(map(len, value)) * len(value) + NPZ_MEMBER_OVERHEAD_BYTES  # numpy's UCS-4 text
    return (
        8 * max(len(value), 1) + NPZ_MEMBER_OVERHEAD_BYTES
        if isinstance(value, (list, tuple))
        else 8 + NPZ_MEMBER_OVERHEAD_BYTES
    )


def response_size(fields: dict[str, Any], binary: bool) -> int:
    """Worst-case encoded bytes of a response with `fields` (what HDC_MAX_RESPONSE_BYTES is checked against)."""
    if binary:
        return sum(_npz_size(v) for v in fields.values() if v is not None) + 22  # + the end of central directory
    return sum(_json_size(k) + _json_size(v) + 2 for k, v in fields.items()) + 2


def _json_array(array: np.ndarray) -> bytes:
    """JSON of a numeric array in pieces of at most JSON_PIECE_ELEMENTS elements per orjson call. Real numbers
    are written as the doubles they equal (float32 values widened exactly), as Python's float repr would."""
    if array.dtype.kind == "f" and array.dtype != np.float64:
        array = array.astype(np.float64)
    elif array.dtype.kind not in "biuf":
        raise TypeError(f"cannot write a {array.dtype} array as JSON")
    if array.ndim == 0:  # orjson writes arrays, not 0-d ones
        return orjson.dumps(array.item())
    array = np.ascontiguousarray(array)
    if array.size <= JSON_PIECE_ELEMENTS:
        return orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    row = array[0].size
    if row > JSON_PIECE_ELEMENTS:
        return b"[" + b",".join(_json_array(part) for part in array) + b"]"
    step = max(JSON_PIECE_ELEMENTS // max(row, 1), 1)
    pieces = (
        orjson.dumps(array[i : i + step], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        for i in range(0, array.shape[0], step)
    )
    return b"[" + b",".join(pieces) + b"]"


def _json_value(value: Any) -> bytes:
    if isinstance(value, Hypervectors):
        return _json_array(dense_array(value))
    array = _as_array(value)
    if array is not None:
        return _json_array(array)
    if isinstance(value, list) and len(value) > JSON_PIECE_ELEMENTS:
        pieces = (
            orjson.dumps(value[i : i + JSON_PIECE_ELEMENTS])[1:-1] for i in range(0, len(value), JSON_PIECE_ELEMENTS)
        )
        return b"[" + b",".join(pieces) + b"]"
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_json(fields: dict[str, Any]) -> bytes:
    """The JSON object of `fields` (Hypervectors in their dense form, tensors and arrays as nested lists)."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + _json_value(v) for k, v in fields.items()) + b"}"


def encode_npz(fields: dict[str, Any]) -> bytes:
    """An .npz of `fields` (Hypervectors in their storage form); None values are left out."""
    buffer = io.BytesIO()
    arrays = {k: a if (a := _as_array(v)) is not None else np.asarray(v) for k, v in fields.items() if v is not None}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _encode(fields: dict[str, Any], binary: bool) -> tuple[bytes, str]:
    return (encode_npz(fields), NPZ_TYPE) if binary else (encode_json(fields), JSON_TYPE)


def _checked_size(fields: dict[str, Any], binary: bool, limit: int | None) -> int:
    """The response's worst-case size; the final guard: over `limit` (HDC_MAX_RESPONSE_BYTES) it is a 400, never
    encoded (the routes check what they can before computing, naming the request's field)."""
    size = response_size(fields, binary)
    if limit is not None and size > limit:
        raise ApiError(
            400,
            "response_too_large",
            f"response: up to {size} bytes, over the limit of {limit} bytes (HDC_MAX_RESPONSE_BYTES); request fewer",
            field="response",
        )
    return size


async def respond(
    request: web.Request,
    payload: Payload | None,
    fields: dict[str, Any],
    *,
    status: int = 200,
    limit: int | None = None,
) -> web.Response:
    """The JSON or npz response with `fields`; one over INLINE_CODEC_MAX_BYTES (worst case) is encoded in a worker
    thread."""
    binary = wants_binary(request, payload)
    size = _checked_size(fields, binary, limit)
    body, content_type = await off_loop(size, _encode, fields, binary)
    return web.Response(body=body, status=status, content_type=content_type)
