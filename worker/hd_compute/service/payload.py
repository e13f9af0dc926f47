"""A request's body read into a Payload: the limits and the timeout while it arrives, then JSON or .npz decoding,
and the typed accessors the routes read their fields with.

Invariants: a body is read in the chunks it arrives in and refused (413) as soon as it passes its limit -
HDC_MAX_JSON_BODY_BYTES for JSON, HDC_MAX_BODY_BYTES for .npz - or does not arrive within
HDC_BODY_TIMEOUT_SECONDS (408); the Content-Type decides the limit before a byte is read. JSON is parsed on the
event loop (orjson holds the GIL for the whole body, so a thread would not free the loop: hence its smaller
limit); an archive over INLINE_CODEC_MAX_BYTES is decoded in a worker thread, and so are the checks of its large
arrays. No field is nullable: an explicit null is a 400 naming the field. Vector fields hold numbers only, in a
rectangle, within float32's range, and pass their model's validation; every refusal names the field.

Over 400 lines because a Payload's typed accessors (one per kind of field) each state their own refusals; the
.npz reader and the responses are in their own modules.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Callable

import numpy as np
import orjson
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel, get_model

from .codec import JSON_TYPE, NPY_TYPE, NPZ_TYPE, ApiError, Held, Limits, body_too_large, invalid, off_loop
from .npz import read_npy, read_npz
from .openapi import INT64_MAX, INT64_MIN, MAX_BATCH_AXES

JSON_LIKE_TYPES = (JSON_TYPE, "application/octet-stream", "text/plain")  # what clients send JSON as
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Payload:
    """A decoded request: scalar fields (JSON body, or the query string for binary bodies) and arrays, read with
    typed accessors (integer, number, flag, text, vsa, labels, strings, vectors) that refuse a wrong value with a
    400 naming the field.

    An explicit JSON null is refused for every field (no field is nullable): leaving a field out gives its default."""

    def __init__(self, fields: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, *, binary: bool = False):
        self.fields = fields
        self.arrays = arrays or {}
        self.binary = binary

    def has(self, name: str) -> bool:
        return name in self.fields or name in self.arrays

    def raw(self, name: str, default: Any = None, required: bool = False) -> Any:
        """The field's value as sent (a 0-d array of a binary body as its scalar); `default` when absent."""
        if name in self.fields:
            value = self.fields[name]
            if value is None:
                raise invalid(name, "must not be null (leave the field out for its default)")
            return value
        if name in self.arrays and self.arrays[name].ndim == 0:
            return self.arrays[name].item()
        if required:
            raise invalid(name, "is required", error="missing_field")
        return default

    def _parsed(self, name: str, raw: Any, parse: Callable[[str], Any], kind: str) -> Any:
        """A number from the query string of a binary body (where every value is text); other values as they are."""
        if not (isinstance(raw, str) and self.binary):
            return raw
        try:
            return parse(raw)
        except ValueError:
            raise invalid(name, f"must be {kind}, got {_shown(raw)}") from None

    def integer(
        self,
        name: str,
        default: Any = None,
        *,
        required: bool = False,
        minimum: int = INT64_MIN,
        maximum: int = INT64_MAX,
    ) -> Any:
        raw = self._parsed(name, self.raw(name, default, required), int, "an integer")
        if raw is None:
            return None
        if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, np.integer)):
            raise invalid(name, f"must be an integer, got {_shown(raw)}")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise invalid(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(
        self,
        name: str,
        default: Any = None,
        *,
        required: bool = False,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> Any:
        raw = self._parsed(name, self.raw(name, default, required), float, "a number")
        if raw is None:
            return None
        if (
            isinstance(raw, (bool, np.bool_))
            or not isinstance(raw, (int, float, np.integer, np.floating))
            or not math.isfinite(raw)
        ):
            raise invalid(name, f"must be a finite number, got {_shown(raw)}")
        value = float(raw)
        if minimum is not None and value < minimum:
            raise invalid(name, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise invalid(name, f"must be <= {maximum}, got {value}")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.raw(name, default)
        if isinstance(raw, str) and self.binary:
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
        if not isinstance(raw, (bool, np.bool_)):
            raise invalid(name, f"must be true or false, got {_shown(raw)}")
        return bool(raw)

    def text(
        self,
        name: str,
        default: Any = None,
        *,
        required: bool = False,
        choices: tuple[str, ...] | None = None,
        upper: bool = False,
    ) -> Any:
        raw = self.raw(name, default, required)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise invalid(name, f"must be a string, got {_shown(raw)}")
        value = raw.upper() if upper else raw
        if choices is not None and value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}, got {_shown(raw)}")
        return value

    def vsa(self, default: str) -> VSAModel:
        name = self.text("vsa", default, upper=True)
        try:
            return get_model(name)
        except (ValueError, TypeError, KeyError):
            raise invalid(
                "vsa", f"unknown VSA model {_shown(name)}; use MAP, BSC, HRR or FHRR", error="unknown_vsa"
            ) from None

    def labels(self, name: str, *, required: bool = True) -> torch.Tensor | None:
        """Integer class labels: a list of JSON integers, or an integer array of a binary body."""
        if name in self.arrays:
            arr = self.arrays[name]
            if arr.dtype.kind not in "iu":
                raise invalid(name, f"must hold integer class labels, got dtype {arr.dtype}")
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > INT64_MAX):
                raise invalid(name, "class labels must be between 0 and the number of classes")
            return torch.from_numpy(np.asarray(arr, dtype=np.int64))
        raw = self.raw(name, None, required)
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(type(v) is int for v in raw):
            raise invalid(name, "must be a list of integer class labels")
        if raw and not (0 <= min(raw) and max(raw) <= INT64_MAX):
            raise invalid(name, "class labels must be between 0 and the number of classes")
        return torch.tensor(raw, dtype=torch.int64)

    def strings(self, name: str) -> list[str] | None:
        """A list of strings (a JSON list, or a text array of a binary body); None when absent."""
        if name in self.arrays:
            raw = self.arrays[name].tolist() if self.arrays[name].dtype.kind == "U" else None
        else:
            raw = self.raw(name)
            if raw is None:
                return None
        if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
            raise invalid(name, "must be a list of strings")
        return raw

    def decode_vectors(
        self, name: str, model: VSAModel, dim: int | None, *, required: bool = True, default_dim: int | None = None
    ) -> Hypervectors | None:
        """The hypervectors in field `name`: JSON dense form, or storage form in a binary body.

        dim: the dimension they must have (a memory's, another operand's), None to take it from the data;
        default_dim: the dimension assumed for packed BSC words in a binary body when dim is None.
        """
        if name in self.arrays:
            return _from_storage(self.arrays[name], name, model, dim, dim if dim is not None else default_dim)
        value = self.raw(name, None, required)
        if value is None:
            return None
        return _from_json(value, name, model, dim)

    async def vectors(
        self, name: str, model: VSAModel, dim: int | None, *, required: bool = True, default_dim: int | None = None
    ) -> Any:
        """decode_vectors(), in a worker thread for a large binary array (its checks and copy are numpy work that
        releases the GIL); JSON vectors are converted inline, as their parse was (their size is bounded by
        HDC_MAX_JSON_BODY_BYTES). Typed Any: a required field is never None."""
        nbytes = self.arrays[name].nbytes if name in self.arrays else 0
        return await off_loop(
            nbytes, lambda: self.decode_vectors(name, model, dim, required=required, default_dim=default_dim)
        )


def _shown(value: Any) -> str:
    """A request value as an error detail quotes it: JSON for a scalar (strings cut short), else its kind."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        text = json.dumps(
            value[:80] if isinstance(value, str) else value.item() if isinstance(value, np.generic) else value
        )
        return text if len(text) <= 80 else text[:77] + "..."
    kinds: dict[type, str] = {list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


def _dimension_error(name: str, got: int, expected: int) -> ApiError:
    return invalid(name, f"has dimension {got} but {expected} is expected", error="dimension_mismatch")


def _check_numbers(value: list[Any], name: str) -> None:
    """Every leaf of the nested list is a JSON number (int or float; not a boolean, string, null or object), and
    each level holds only lists or only numbers. numpy would quietly turn booleans and numeric strings into
    numbers; a walk with set(map(type, row)) per row keeps this a C loop over the elements."""
    level: list[list[Any]] = [value]
    while True:
        kinds: set[type] = set()
        for row in level:
            kinds.update(map(type, row))
        if kinds <= {int, float}:
            return
        if kinds != {list}:
            if list in kinds:
                raise invalid(
                    name,
                    "must be a rectangular nested list of numbers (all hypervectors the same length)",
                    error="invalid_shape",
                )
            raise invalid(name, "must hold only numbers")
        level = [item for row in level for item in row]


def _from_json(value: Any, name: str, model: VSAModel, dim: int | None) -> Hypervectors:
    if not isinstance(value, list):
        raise invalid(name, "must be a list of numbers (one hypervector) or a nested list (a batch)")
    _check_numbers(value, name)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise invalid(
            name,
            "must be a rectangular nested list of numbers (all hypervectors the same length)",
            error="invalid_shape",
        ) from None
    if model.name == "FHRR":
        if arr.ndim < 2 or arr.shape[-1] != 2:
            raise invalid(
                name,
                f"FHRR hypervectors are lists of [re, im] pairs (shape (..., D, 2)), got shape {arr.shape}",
                error="invalid_shape",
            )
        length = arr.shape[-2]
    else:
        if arr.ndim < 1:
            raise invalid(name, "must be a list", error="invalid_shape")
        length = arr.shape[-1]
    if length == 0:
        raise invalid(name, "hypervectors must not be empty", error="invalid_shape")
    _check_batch_axes(name, arr.ndim - (2 if model.name == "FHRR" else 1))
    if dim is not None and length != dim:
        raise _dimension_error(name, length, dim)
    if arr.size and not bool(np.isfinite(arr).all()):
        raise invalid(name, "contains NaN or infinity")
    if arr.size and float(np.abs(arr).max()) > FLOAT32_MAX:  # JSON numbers become float32 (complex64 for FHRR)
        raise invalid(name, f"contains a value beyond the float32 range (magnitude over {FLOAT32_MAX:.7g})")
    if model.name == "FHRR":
        dense = torch.complex(torch.from_numpy(arr[..., 0]).float(), torch.from_numpy(arr[..., 1]).float())
    else:
        dense = torch.from_numpy(arr).float()
    if model.name in ("HRR", "FHRR"):  # the dense form is the storage form
        return _validated(dense, name, model, length)
    try:
        return Hypervectors.from_dense(dense, model)
    except (ValueError, TypeError) as exc:
        raise invalid(name, str(exc)) from None


def _check_batch_axes(name: str, axes: int) -> None:
    """At most MAX_BATCH_AXES batch axes: the kernels add axes of their own (unpacked bits, [re, im] pairs) to
    torch's limit of 64."""
    if axes > MAX_BATCH_AXES:
        raise invalid(name, f"has {axes} batch axes, more than {MAX_BATCH_AXES}", error="invalid_shape")


def _validated(data: torch.Tensor, name: str, model: VSAModel, dim: int) -> Hypervectors:
    """Hypervectors over `data` once the model's own validation passed; its message names the field."""
    try:
        model.validate(data, dim, name)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid_field", str(exc), field=name) from None
    return Hypervectors(data, model, dim)


def _from_numpy_dtypes() -> dict[tuple[str, int], torch.dtype]:
    """The numpy dtypes torch.from_numpy takes, by kind and size (byte order aside: arrays are made native first),
    built once so a request's dtype is a dictionary lookup."""
    found = {}
    for code in ("?", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8", "c8", "c16"):
        dtype = np.dtype(code)
        try:
            found[(dtype.kind, dtype.itemsize)] = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
        except TypeError:
            pass
    return found


_TORCH_DTYPES = _from_numpy_dtypes()


def _torch_dtype(arr: np.ndarray, name: str) -> torch.dtype:
    dtype = _TORCH_DTYPES.get((arr.dtype.kind, arr.dtype.itemsize))
    if dtype is None:
        raise invalid(name, f"unsupported dtype {arr.dtype}")
    return dtype


def _from_storage(
    arr: np.ndarray, name: str, model: VSAModel, dim: int | None, assumed_dim: int | None
) -> Hypervectors:
    """Hypervectors over the array's data (converted to native byte order and C order only where needed: the
    payload's arrays are the request's own, read from the archive, never views of another buffer)."""
    if arr.ndim < 1:
        raise invalid(name, "must have at least one axis (the hypervector axis)", error="invalid_shape")
    _check_batch_axes(name, arr.ndim - 1)
    dtype = _torch_dtype(arr, name)
    if dtype not in model.allowed_dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in model.allowed_dtypes)
        raise invalid(name, f"binary {model.name} hypervectors must have dtype {allowed}, got {arr.dtype}")
    width = arr.shape[-1]
    if model.name == "BSC":
        if assumed_dim is None:
            raise invalid("dimension", "is required for packed BSC words", error="missing_field")
        vec_dim = assumed_dim
        if width != model.storage_width(vec_dim):
            raise invalid(
                name,
                f"packed BSC words for dimension {vec_dim} have {model.storage_width(vec_dim)} words, "
                f"got {width} (pass ?dimension= if the dimension differs)",
                error="dimension_mismatch",
            )
    else:
        vec_dim = width
        if dim is not None and width != dim:
            raise _dimension_error(name, width, dim)
    if width == 0:
        raise invalid(name, "hypervectors must not be empty", error="invalid_shape")
    native = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    data = torch.from_numpy(native)
    # MAP and BSC: the checks of MAP.validate / BSC.validate, in numpy, which does them faster than torch on a CPU.
    if model.name == "MAP":
        if not bool((np.abs(native) == 1).all()):
            raise invalid(name, "MAP hypervectors must hold only +1 and -1 values")
    elif model.name == "BSC":
        if vec_dim % 64 and native.size:
            padding = np.uint64(((1 << 64) - 1) ^ ((1 << (vec_dim % 64)) - 1))
            if np.any(native[..., -1].view(np.uint64) & padding):
                raise invalid(name, f"BSC words have padding bits set beyond dimension {vec_dim}")
    else:
        return _validated(data, name, model, vec_dim)
    return Hypervectors(data, model, vec_dim)


async def read_body(request: web.Request, limit: int, setting: str, timeout: float, held: Held | None) -> bytes:
    """The request body, read in the chunks it arrives in: 413 as soon as it passes `limit` (or declares more),
    408 when it has not arrived within `timeout` seconds, 503 when `held` cannot take a chunk from the worker's
    BodyBudget. All three close the connection after the answer."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise body_too_large(f"{declared} bytes exceeds the limit of {limit} bytes ({setting})")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise body_too_large(f"exceeds the limit of {limit} bytes ({setting})")
                if held is not None:
                    held.take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"body: not received within {timeout:g} s (HDC_BODY_TIMEOUT_SECONDS)",
            field="body",
            close=True,
        ) from None
    except web.RequestPayloadError as exc:
        raise ApiError(400, "malformed_body", f"body: not received whole ({exc})", field="body", close=True) from None
    return b"".join(chunks)


async def read_payload(
    request: web.Request, limits: Limits, held: Held | None = None, npy_field: str | None = None
) -> Payload:
    """Reads and decodes the body (JSON, .npz, or .npy when the operation has one vector field, `npy_field`);
    raises ApiError for anything malformed, too large or too slow.

    The Content-Type decides the limit before a byte is read: JSON bodies are parsed on the event loop (no thread
    frees it from a parser that holds the GIL), so they have the smaller one."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding: {encoding!r} is not supported; send the body uncompressed (an .npz archive may "
            "compress its members)",
            field="Content-Encoding",
            close=True,
        )
    ctype = request.content_type
    if ctype == NPY_TYPE and npy_field is None:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type: {NPY_TYPE} carries one array, and this operation takes several fields or none; send "
            f"{NPZ_TYPE} or {JSON_TYPE}",
            field="Content-Type",
            close=True,
        )
    if ctype in (NPZ_TYPE, NPY_TYPE):
        raw = await read_body(request, limits.body_bytes, "HDC_MAX_BODY_BYTES", limits.body_timeout, held)
        if ctype == NPY_TYPE:
            assert npy_field is not None
            arrays = {npy_field: await off_loop(len(raw), read_npy, raw, npy_field, limits.body_bytes)}
        else:
            arrays = await off_loop(len(raw), read_npz, raw, limits.body_bytes)
        if held is not None:  # the decoded arrays are held too, until the answer
            held.take(sum(array.nbytes for array in arrays.values()))
        return Payload(dict(request.query), arrays, binary=True)
    if ctype not in JSON_LIKE_TYPES and request.body_exists:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type: {ctype!r} is not supported; send {JSON_TYPE} or {NPZ_TYPE}"
            + (f" (or {NPY_TYPE}: the {npy_field!r} array alone)" if npy_field is not None else ""),
            field="Content-Type",
        )
    raw = await read_body(
        request,
        limits.json_body_bytes,
        f"HDC_MAX_JSON_BODY_BYTES; send bulk vectors as {NPZ_TYPE}",
        limits.body_timeout,
        held,
    )
    if not raw.strip():
        return Payload({})
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body: not valid JSON ({exc})", field="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", f"body: must be a JSON object, got {_shown(body)}", field="body")
    return Payload(body)
