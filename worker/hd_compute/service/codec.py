"""Request and response bodies: JSON for small requests, NumPy .npz archives for large ones.

JSON (`application/json`): a hypervector is its element-per-dimension ("dense") form, a batch is a nested list:
    MAP, BSC  +1 / -1 per dimension (BSC: bit 0 -> +1, bit 1 -> -1), ints
    HRR       one real number per dimension
    FHRR      one [re, im] pair per dimension (unit phasors), so a vector is a (D, 2) list

Binary (`application/x-npz`, the format of numpy.savez): the request's fields as named arrays in one archive,
scalar parameters in the query string. Hypervectors travel in their *storage* form, which is what the worker
keeps in memory (MAP int8 or float32 ±1, BSC int64 words with 64 packed bits each, HRR float32/float64,
FHRR complex64/complex128). A response is binary (the response's fields in an .npz) when the Accept header names
application/x-npz, or when the request was binary and Accept does not name application/json.

Untrusted bytes, so every size is enforced while reading and none is taken on trust: a body is read in chunks
against its limit (HDC_MAX_JSON_BODY_BYTES for JSON, HDC_MAX_BODY_BYTES for .npz) within HDC_BODY_TIMEOUT_SECONDS;
an archive is read with zipfile (CRCs checked) and each member's header with numpy's public .npy format reader
(allow_pickle is never involved: only numeric and text dtypes are accepted); a member's declared shape x itemsize is
checked against what is left of the body's budget before anything is allocated, and its data are read in bounded
chunks and refused as soon as they run past what the header declared. A response's worst-case encoded size is
checked against HDC_MAX_RESPONSE_BYTES before it is encoded.

The event loop: decoding an archive and encoding a large response run in a worker thread (zlib, CRCs, copies and
numpy release the GIL; a large JSON response is encoded in pieces, so the loop gets a turn between them). A JSON
request body cannot be parsed that way - the parser holds the GIL for the whole body - which is why JSON bodies
have their own, smaller limit.

Every problem raises ApiError naming the field, so the handler can answer 4xx with it.
"""

from __future__ import annotations

import asyncio
import io
import json
import lzma
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import orjson
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel, get_model

from .config import WorkerSettings
from .openapi import INT64_MAX, INT64_MIN

JSON_TYPE = "application/json"
NPZ_TYPE = "application/x-npz"
JSON_LIKE_TYPES = (JSON_TYPE, "application/octet-stream", "text/plain")  # what clients send JSON as

# Bodies and responses up to this size are decoded and encoded on the event loop: handing them to a worker thread
# and back costs more than the work itself, and the loop is held only briefly.
INLINE_CODEC_MAX_BYTES = 256 << 10
# An archive member's data are read in pieces of this size, so a member that lies about its size costs no more than
# one piece beyond what its header declared.
NPZ_READ_CHUNK_BYTES = 1 << 20
# More members than any request has fields; bounds the per-member work of one archive.
NPZ_MAX_MEMBERS = 64
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
FLOAT32_MAX = float(np.finfo(np.float32).max)

T = TypeVar("T")


class ApiError(Exception):
    """An error to send back: HTTP status, a stable machine-readable code, and a detail naming the field.

    close: the connection is closed after the answer (a body that was refused while it was still arriving)."""

    def __init__(self, status: int, error: str, detail: str, *, field: str | None = None, close: bool = False):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.close = close


def invalid(field: str, message: str, *, error: str = "invalid_field", status: int = 400) -> ApiError:
    return ApiError(status, error, f"{field}: {message}", field=field)


@dataclass(frozen=True)
class Limits:
    """The byte and time limits of one request (from WorkerSettings)."""

    body_bytes: int  # an .npz body, and separately the unpacked arrays in it
    json_body_bytes: int  # a JSON body (at most body_bytes)
    response_bytes: int  # an encoded response, worst case
    body_timeout: float  # seconds for the whole body to arrive

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> "Limits":
        return cls(
            settings.max_body_bytes,
            min(settings.max_json_body_bytes, settings.max_body_bytes),
            settings.max_response_bytes,
            settings.body_timeout_seconds,
        )


LIMITS = web.AppKey("limits", Limits)  # the app's request limits (create_app sets them from its settings)


async def off_loop(nbytes: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) inline when it handles at most INLINE_CODEC_MAX_BYTES, else in a worker thread."""
    if nbytes <= INLINE_CODEC_MAX_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


# ---------------------------------------------------------------------------------------------------------
# reading requests


class Payload:
    """A decoded request: scalar fields (JSON body, or the query string for binary bodies) and arrays.

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

    def int(
        self,
        name: str,
        default: Any = None,
        *,
        required: bool = False,
        minimum: int = INT64_MIN,
        maximum: int = INT64_MAX,
    ) -> Any:
        raw = self.raw(name, default, required)
        if raw is None:
            return None
        if isinstance(raw, str) and self.binary:
            try:
                raw = int(raw, 10)
            except ValueError:
                raise invalid(name, f"must be an integer, got {_shown(raw)}") from None
        if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (int, np.integer)):
            raise invalid(name, f"must be an integer, got {_shown(raw)}")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise invalid(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def float(
        self,
        name: str,
        default: Any = None,
        *,
        required: bool = False,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
    ) -> Any:
        raw = self.raw(name, default, required)
        if raw is None:
            return None
        if isinstance(raw, str) and self.binary:
            try:
                raw = float(raw)
            except ValueError:
                raise invalid(name, f"must be a number, got {_shown(raw)}") from None
        if (
            isinstance(raw, (bool, np.bool_))
            or not isinstance(raw, (int, float, np.integer, np.floating))
            or not math.isfinite(raw)
        ):
            raise invalid(name, f"must be a finite number, got {_shown(raw)}")
        value = float(raw)
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            raise invalid(name, f"must be {'>' if exclusive_minimum else '>='} {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise invalid(name, f"must be <= {maximum}, got {value}")
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        raw = self.raw(name, default)
        if isinstance(raw, str) and self.binary:
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
        if not isinstance(raw, (bool, np.bool_)):
            raise invalid(name, f"must be true or false, got {_shown(raw)}")
        return bool(raw)

    def str(
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
        name = self.str("vsa", default, upper=True)
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
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _dimension_error(name: str, got: int, expected: int) -> ApiError:
    return invalid(name, f"has dimension {got} but {expected} is expected", error="dimension_mismatch")


def _check_numbers(value: list, name: str) -> None:
    """Every leaf of the nested list is a JSON number (int or float; not a boolean, string, null or object), and
    each level holds only lists or only numbers. numpy would quietly turn booleans and numeric strings into
    numbers; a walk with set(map(type, row)) per row keeps this a C loop over the elements."""
    level: list[list] = [value]
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


def _validated(data: torch.Tensor, name: str, model: VSAModel, dim: int) -> Hypervectors:
    """Hypervectors over `data` once the model's own validation passed; its message names the field."""
    try:
        model.validate(data, dim, name)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid_field", str(exc), field=name) from None
    return Hypervectors(data, model, dim)


def _torch_dtype(arr: np.ndarray, name: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.zeros(0, dtype=arr.dtype.newbyteorder("="))).dtype
    except TypeError:
        raise invalid(name, f"unsupported dtype {arr.dtype}") from None


def _from_storage(
    arr: np.ndarray, name: str, model: VSAModel, dim: int | None, assumed_dim: int | None
) -> Hypervectors:
    """Hypervectors over the array's data (converted to native byte order and C order only where needed: the
    payload's arrays are the request's own, read from the archive, never views of another buffer)."""
    if arr.ndim < 1:
        raise invalid(name, "must have at least one axis (the hypervector axis)", error="invalid_shape")
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


def body_too_large(detail: str) -> ApiError:
    return ApiError(413, "body_too_large", f"body: {detail}", field="body", close=True)


async def read_body(request: web.Request, limit: int, setting: str, timeout: float) -> bytes:
    """The request body, read in the chunks it arrives in: 413 as soon as it passes `limit` (or declares more),
    408 when it has not arrived within `timeout` seconds. Both close the connection after the answer."""
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


async def read_payload(request: web.Request, limits: Limits | int) -> Payload:
    """Reads and decodes the body (JSON or npz); raises ApiError for anything malformed, too large or too slow.

    The Content-Type decides the limit before a byte is read: JSON bodies are parsed on the event loop (no thread
    frees it from a parser that holds the GIL), so they have the smaller one."""
    if isinstance(limits, int):  # the body limit alone; the others at their defaults
        limits = Limits.from_settings(WorkerSettings(max_body_bytes=limits))
    ctype = request.content_type
    if ctype == NPZ_TYPE:
        raw = await read_body(request, limits.body_bytes, "HDC_MAX_BODY_BYTES", limits.body_timeout)
        arrays = await off_loop(len(raw), read_npz, raw, limits.body_bytes)
        return Payload(dict(request.query), arrays, binary=True)
    if ctype not in JSON_LIKE_TYPES and request.body_exists:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type: {ctype!r} is not supported; send {JSON_TYPE} or {NPZ_TYPE}",
            field="Content-Type",
        )
    raw = await read_body(
        request,
        limits.json_body_bytes,
        f"HDC_MAX_JSON_BODY_BYTES; send bulk vectors as {NPZ_TYPE}",
        limits.body_timeout,
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


# What zipfile and the decompressors raise for a damaged or unsupported archive (RuntimeError: an encrypted member).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    ValueError,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
)


def read_npz(raw: bytes, budget: int) -> dict[str, np.ndarray]:
    """The archive's arrays, their unpacked sizes together at most `budget` bytes (413 otherwise)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except _ARCHIVE_ERRORS as exc:
        raise ApiError(400, "malformed_body", f"body: not a valid .npz archive ({exc})", field="body") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > NPZ_MAX_MEMBERS:
            raise ApiError(
                400,
                "malformed_body",
                f"body: the archive has {len(infos)} members, more than the {NPZ_MAX_MEMBERS} a request can use",
                field="body",
            )
        arrays: dict[str, np.ndarray] = {}
        for info in infos:
            key = info.filename.removesuffix(".npy")
            if key in arrays:
                raise invalid(key, "appears twice in the archive")
            try:
                with archive.open(info) as member:
                    array = _read_npy(member, key, budget)
            except ApiError:
                raise
            except _ARCHIVE_ERRORS as exc:
                raise ApiError(
                    400, "malformed_body", f"body: member {key!r} of the archive cannot be read ({exc})", field="body"
                ) from None
            budget -= array.nbytes
            arrays[key] = array
    return arrays


# .npy dtypes a request can carry: booleans, integers, reals and complex numbers, and text (keys); nothing that
# needs pickle (objects), nothing structured.
_NPY_KINDS = "biufcU"


def _read_npy(stream: Any, key: str, budget: int) -> np.ndarray:
    """One .npy member: its header through numpy.lib.format, its data read in chunks of NPZ_READ_CHUNK_BYTES into
    a buffer of exactly the declared size, which must fit in `budget`; data shorter or longer than declared is
    refused (reading to the end is also what makes zipfile check the member's CRC)."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise invalid(key, f"unsupported .npy format version {version[0]}.{version[1]}")
    except ValueError as exc:
        raise invalid(key, f"not a readable .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in _NPY_KINDS or dtype.itemsize == 0:
        raise invalid(key, f"dtype {dtype} is not accepted (numbers, or text for keys; object arrays are refused)")
    if any(n < 0 for n in shape):
        raise invalid(key, f"shape {shape} has a negative length")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > budget:
        raise body_too_large(
            f"the archive unpacks to more than its limit ({key}: {nbytes} bytes, {max(budget, 0)} "
            "left of HDC_MAX_BODY_BYTES)"
        )
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    filled = 0
    while filled < nbytes:
        got = stream.readinto(view[filled : filled + NPZ_READ_CHUNK_BYTES])
        if not got:
            raise invalid(
                key, f"the data end after {filled} of the {nbytes} bytes that shape {shape} and dtype {dtype} declare"
            )
        filled += got
    if stream.read(1):
        raise invalid(key, f"holds more data than shape {shape} and dtype {dtype} declare")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


# ---------------------------------------------------------------------------------------------------------
# writing responses


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


def hv_to_json(hv: Hypervectors) -> list:
    """The dense JSON form of hypervectors (ints for MAP and BSC, [re, im] pairs for FHRR)."""
    return _dense_array(hv).tolist()


def _dense_array(hv: Hypervectors) -> np.ndarray:
    if hv.data.numel() == 0:  # an empty batch: nothing to convert
        pair = (2,) if hv.vsa.name == "FHRR" else ()
        return np.zeros((*hv.shape, hv.dim, *pair), dtype=np.int8 if hv.vsa.name in ("MAP", "BSC") else np.float32)
    dense = hv.dense().cpu()
    if hv.vsa.name in ("MAP", "BSC"):
        return dense.to(torch.int8).numpy()
    if hv.vsa.name == "FHRR":
        return torch.stack([dense.real, dense.imag], dim=-1).numpy()
    return dense.numpy()


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
        return _json_array(_dense_array(value))
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


def error_body(error: str, detail: str, correlation_id: str) -> dict[str, str]:
    return {"error": error, "detail": detail, "correlation_id": correlation_id}
