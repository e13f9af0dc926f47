"""Request and response bodies: JSON for small requests, NumPy .npz archives for large ones.

JSON (`application/json`): a hypervector is its element-per-dimension ("dense") form, a batch is a nested list:
    MAP, BSC  +1 / -1 per dimension (BSC: bit 0 -> +1, bit 1 -> -1), ints
    HRR       one real number per dimension
    FHRR      one [re, im] pair per dimension (unit phasors), so a vector is a (D, 2) list

Binary (`application/x-npz`, the format of numpy.savez): the request's fields as named arrays in one archive,
scalar parameters in the query string. Hypervectors travel in their *storage* form, which is what the worker
keeps in memory (MAP int8 or float32 ±1, BSC int64 words with 64 packed bits each, HRR float32/float64,
FHRR complex64/complex128); every array carries its own shape, dtype and byte order in its .npy header,
nothing is ever unpickled (allow_pickle=False), and the unpacked size counts against HDC_MAX_BODY_BYTES.
A response is binary (the response's fields in an .npz) when the Accept header names application/x-npz, or
when the request was binary and Accept does not name application/json.

Every decoding problem raises ApiError naming the field, so the handler can answer 4xx with it.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import orjson
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel, get_model

JSON_TYPE = "application/json"
NPZ_TYPE = "application/x-npz"


class ApiError(Exception):
    """An error to send back: HTTP status, a stable machine-readable code, and a detail naming the field."""

    def __init__(self, status: int, error: str, detail: str, *, field: str | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field


def invalid(field: str, message: str, *, error: str = "invalid_field", status: int = 400) -> ApiError:
    return ApiError(status, error, f"{field}: {message}", field=field)


# ---------------------------------------------------------------------------------------------------------
# reading requests


class Payload:
    """A decoded request: scalar fields (JSON body, or the query string for binary bodies) and arrays."""

    def __init__(self, fields: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, *, binary: bool = False):
        self.fields = fields
        self.arrays = arrays or {}
        self.binary = binary

    def has(self, name: str) -> bool:
        return name in self.fields or name in self.arrays

    def _raw(self, name: str, default: Any, required: bool) -> Any:
        if name in self.fields:
            return self.fields[name]
        if name in self.arrays and self.arrays[name].ndim == 0:
            return self.arrays[name].item()
        if required:
            raise invalid(name, "is required", error="missing_field")
        return default

    def int(self, name: str, default: Any = None, *, required: bool = False, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
        raw = self._raw(name, default, required)
        if raw is None:
            return None
        if isinstance(raw, str) and self.binary:
            try:
                raw = int(raw, 10)
            except ValueError:
                raise invalid(name, f"must be an integer, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
            raise invalid(name, f"must be an integer, got {json.dumps(raw) if _jsonable(raw) else type(raw).__name__}")
        raw = int(raw)
        if minimum is not None and raw < minimum:
            raise invalid(name, f"must be >= {minimum}, got {raw}")
        if maximum is not None and raw > maximum:
            raise invalid(name, f"must be <= {maximum}, got {raw}")
        return raw

    def float(self, name: str, default: Any = None, *, required: bool = False, minimum: float | None = None) -> float | None:
        raw = self._raw(name, default, required)
        if raw is None:
            return None
        if isinstance(raw, str) and self.binary:
            try:
                raw = float(raw)
            except ValueError:
                raise invalid(name, f"must be a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)) or not math.isfinite(raw):
            raise invalid(name, f"must be a finite number, got {raw!r}")
        if minimum is not None and raw < minimum:
            raise invalid(name, f"must be >= {minimum}, got {raw}")
        return float(raw)

    def bool(self, name: str, default: bool = False) -> bool:
        raw = self._raw(name, default, False)
        if isinstance(raw, str) and self.binary:
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
        if not isinstance(raw, (bool, np.bool_)):
            raise invalid(name, f"must be true or false, got {raw!r}")
        return bool(raw)

    def str(self, name: str, default: Any = None, *, required: bool = False, choices: tuple[str, ...] | None = None,
            upper: bool = False) -> str | None:
        raw = self._raw(name, default, required)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise invalid(name, f"must be a string, got {type(raw).__name__}")
        value = raw.upper() if upper else raw
        if choices is not None and value not in choices:
            raise invalid(name, f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    def vsa(self, default: str) -> VSAModel:
        name = self.str("vsa", default, upper=True)
        try:
            return get_model(name)
        except (ValueError, TypeError, KeyError):
            raise invalid("vsa", f"unknown VSA model {name!r}; use MAP, BSC, HRR or FHRR", error="unknown_vsa") from None

    def labels(self, name: str, *, required: bool = True) -> torch.Tensor | None:
        if name in self.arrays:
            arr = self.arrays[name]
            if arr.dtype.kind not in "iu":
                raise invalid(name, f"must hold integer class labels, got dtype {arr.dtype}")
            return torch.from_numpy(np.array(arr, dtype=np.int64))
        raw = self._raw(name, None, required)
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            raise invalid(name, "must be a list of integer class labels")
        return torch.tensor(raw, dtype=torch.int64)

    def vectors(self, name: str, model: VSAModel, dim: int | None, *, required: bool = True,
                default_dim: int | None = None) -> Hypervectors | None:
        """The hypervectors in field `name`: JSON dense form, or storage form in a binary body.

        dim: the dimension they must have (a memory's, another operand's), None to take it from the data;
        default_dim: the dimension assumed for packed BSC words in a binary body when dim is None.
        """
        if name in self.arrays:
            return _from_storage(self.arrays[name], name, model, dim, dim if dim is not None else default_dim)
        if name not in self.fields:
            if required:
                raise invalid(name, "is required", error="missing_field")
            return None
        return _from_json(self.fields[name], name, model, dim)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _dimension_error(name: str, got: int, expected: int) -> ApiError:
    return invalid(name, f"has dimension {got} but {expected} is expected", error="dimension_mismatch")


def _from_json(value: Any, name: str, model: VSAModel, dim: int | None) -> Hypervectors:
    if not isinstance(value, list):
        raise invalid(name, "must be a list of numbers (one hypervector) or a nested list (a batch)")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise invalid(name, "must be a rectangular nested list of numbers (all hypervectors the same length)",
                      error="invalid_shape") from None
    if model.name == "FHRR":
        if arr.ndim < 2 or arr.shape[-1] != 2:
            raise invalid(name, f"FHRR hypervectors are lists of [re, im] pairs (shape (..., D, 2)), got shape {arr.shape}",
                          error="invalid_shape")
        length = arr.shape[-2]
    else:
        if arr.ndim < 1:
            raise invalid(name, "must be a list", error="invalid_shape")
        length = arr.shape[-1]
    if length == 0:
        raise invalid(name, "hypervectors must not be empty", error="invalid_shape")
    if not np.isfinite(arr).all():
        raise invalid(name, "contains NaN or infinity")
    if dim is not None and length != dim:
        raise _dimension_error(name, length, dim)
    if model.name == "FHRR":
        dense = torch.complex(torch.from_numpy(arr[..., 0]).float(), torch.from_numpy(arr[..., 1]).float())
    elif model.name == "HRR":
        dense = torch.from_numpy(arr).float()
    else:
        dense = torch.from_numpy(arr).float()
    try:
        return Hypervectors.from_dense(dense, model)
    except (ValueError, TypeError) as exc:
        raise invalid(name, str(exc)) from None


_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {}


def _torch_dtype(arr: np.ndarray, name: str) -> torch.dtype:
    native = arr.dtype.newbyteorder("=")
    dtype = _TORCH_DTYPES.get(native)
    if dtype is None:
        try:
            dtype = torch.from_numpy(np.zeros(0, dtype=native)).dtype
        except TypeError:
            raise invalid(name, f"unsupported dtype {arr.dtype}") from None
        _TORCH_DTYPES[native] = dtype
    return dtype


def _from_storage(arr: np.ndarray, name: str, model: VSAModel, dim: int | None, assumed_dim: int | None) -> Hypervectors:
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
            raise invalid(name, f"packed BSC words for dimension {vec_dim} have {model.storage_width(vec_dim)} words, "
                                f"got {width} (pass ?dimension= if the dimension differs)", error="dimension_mismatch")
    else:
        vec_dim = width
        if dim is not None and width != dim:
            raise _dimension_error(name, width, dim)
    if width == 0:
        raise invalid(name, "hypervectors must not be empty", error="invalid_shape")
    native = np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True)
    # MAP and BSC: the checks of MAP.validate / BSC.validate, in numpy, which does them several times faster than
    # torch on a CPU (they run on the event loop for every request).
    validate = False
    if model.name == "MAP":
        if not bool((np.abs(native) == 1).all()):
            raise invalid(name, "MAP hypervectors must hold only +1 and -1 values")
    elif model.name == "BSC":
        if vec_dim % 64 and native.size:
            padding = np.uint64(((1 << 64) - 1) ^ ((1 << (vec_dim % 64)) - 1))
            if np.any(native[..., -1].view(np.uint64) & padding):
                raise invalid(name, f"BSC words have padding bits set beyond dimension {vec_dim}")
    else:
        validate = True
    try:
        return Hypervectors(torch.from_numpy(native), model, vec_dim, validate=validate)
    except (ValueError, TypeError) as exc:
        raise invalid(name, str(exc)) from None


async def read_payload(request: web.Request, max_bytes: int) -> Payload:
    """Reads and decodes the body (JSON or npz); raises ApiError for anything malformed or too large."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise ApiError(413, "body_too_large", f"body: {length} bytes exceeds the limit of {max_bytes} bytes "
                                              f"(HDC_MAX_BODY_BYTES)", field="body")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", f"body: exceeds the limit of {max_bytes} bytes (HDC_MAX_BODY_BYTES)",
                       field="body") from None
    if len(raw) > max_bytes:
        raise ApiError(413, "body_too_large", f"body: {len(raw)} bytes exceeds the limit of {max_bytes} bytes", field="body")
    ctype = request.content_type
    if ctype == NPZ_TYPE:
        return Payload(dict(request.query), _read_npz(raw, max_bytes), binary=True)
    if ctype not in (JSON_TYPE, "application/octet-stream", "text/plain") and raw:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type: {ctype!r} is not supported; send {JSON_TYPE} or {NPZ_TYPE}", field="Content-Type")
    if not raw.strip():
        return Payload({})
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, "malformed_json", f"body: not valid JSON ({exc})", field="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", f"body: must be a JSON object, got {type(body).__name__}", field="body")
    return Payload(body)


def _read_npz(raw: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """The archive's arrays. Archives as numpy.savez writes them (stored members, no comment) are read straight
    from the body by `_stored_members`; anything else (compressed, zip64 directories, ...) by zipfile. CRCs are
    checked either way; each member's .npy header is parsed by `_read_npy` (a regex for the header numpy
    writes, numpy's own parser for anything else); nothing is ever unpickled."""
    members = _stored_members(raw)
    if members is not None:
        unpacked = sum(len(data) for _, data in members)
        if unpacked > max_bytes:
            raise ApiError(413, "body_too_large", f"body: the archive unpacks to {unpacked} bytes, over the limit "
                                                  f"of {max_bytes} bytes (HDC_MAX_BODY_BYTES)", field="body")
        return {_member_key(name): _read_npy(data, _member_key(name)) for name, data in members}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            unpacked = sum(info.file_size for info in infos)
            if unpacked > max_bytes:
                raise ApiError(413, "body_too_large", f"body: the archive unpacks to {unpacked} bytes, over the limit "
                                                      f"of {max_bytes} bytes (HDC_MAX_BODY_BYTES)", field="body")
            arrays = {}
            for info in infos:
                key = _member_key(info.filename)
                arrays[key] = _read_npy(archive.read(info), key)
            return arrays
    except ApiError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise ApiError(400, "malformed_body", f"body: not a valid .npz archive ({exc})", field="body") from None


def _member_key(filename: str) -> str:
    return filename[:-4] if filename.endswith(".npy") else filename


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes


def _stored_members(raw: bytes) -> list[tuple[str, memoryview]] | None:
    """(name, data) of each member when `raw` is a plain zip of stored members with intact CRCs, as
    numpy.savez writes it; None for anything else (zipfile then reads it, or says what is wrong with it).

    Every offset and size is checked against the body before it is used; the data are views of `raw`.
    """
    view = memoryview(raw)
    end = len(raw) - _EOCD.size
    if end < 0:
        return None
    sig, disk, cd_disk, _, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(raw, end)
    if sig != b"PK\x05\x06" or disk or cd_disk or comment or entries == 0xFFFF or cd_offset + cd_size != end:
        return None
    members, pos = [], cd_offset
    for _ in range(entries):
        if pos + _CENTRAL.size > end:
            return None
        (sig, _, needed, flags, method, _, _, crc, csize, size, name_len, extra_len, comment_len, _, _, _,
         local) = _CENTRAL.unpack_from(raw, pos)
        name_end = pos + _CENTRAL.size + name_len
        if sig != b"PK\x01\x02" or method != 0 or flags & 0x41 or csize != size or 0xFFFFFFFF in (size, local) \
                or needed > 63 or name_end > end:  # 63: the newest zip version zipfile reads
            return None
        raw_name = bytes(view[pos + _CENTRAL.size : name_end])
        pos = name_end + extra_len + comment_len
        if local + _LOCAL.size > cd_offset:
            return None
        lsig, *_, lname_len, lextra_len = _LOCAL.unpack_from(raw, local)
        start = local + _LOCAL.size + lname_len + lextra_len
        if lsig != b"PK\x03\x04" or start + size > cd_offset \
                or bytes(view[local + _LOCAL.size : local + _LOCAL.size + lname_len]) != raw_name:
            return None
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        data = view[start : start + size]
        if zlib.crc32(data) != crc:
            return None  # zipfile reports the bad CRC
        members.append((name, data))
    return members if pos == end else None


# The header numpy.save writes: {'descr': '<i1', 'fortran_order': False, 'shape': (64, 10000), } + padding.
_NPY_HEADER = re.compile(r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \} *\n?")


def _read_npy(data: bytes | memoryview, key: str) -> np.ndarray:
    """One .npy member as a read-only array over `data` (no copy)."""
    if len(data) < 10 or bytes(data[:6]) != b"\x93NUMPY":
        raise ApiError(400, "invalid_field", f"{key}: not a .npy array", field=key)
    major = data[6]
    if major == 1:
        start, length = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, length = 12, int.from_bytes(data[8:12], "little")
    else:
        raise ApiError(400, "invalid_field", f"{key}: unsupported .npy format version {major}", field=key)
    header = bytes(data[start : start + length])
    match = _NPY_HEADER.fullmatch(header.decode("latin1"))
    if match is None:  # anything unusual (structured dtypes, other spellings): numpy's own reader
        try:
            return np.lib.format.read_array(io.BytesIO(bytes(data)), allow_pickle=False)
        except ValueError as exc:
            raise ApiError(400, "invalid_field", f"{key}: cannot be read ({exc})", field=key) from None
    try:
        dtype = np.dtype(match.group(1))
    except TypeError as exc:
        raise ApiError(400, "invalid_field", f"{key}: cannot be read ({exc})", field=key) from None
    if dtype.hasobject:
        raise ApiError(400, "invalid_field", f"{key}: cannot be read (object arrays are refused)", field=key)
    shape = tuple(int(n) for n in match.group(3).replace(" ", "").split(",") if n)
    count = math.prod(shape)
    offset = start + length
    if len(data) - offset != count * dtype.itemsize:
        raise ApiError(400, "invalid_field", f"{key}: cannot be read (the data does not match shape {shape} and dtype "
                                             f"{dtype})", field=key)
    order = "F" if match.group(2) == "True" else "C"
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order=order)


# ---------------------------------------------------------------------------------------------------------
# writing responses


def wants_binary(request: web.Request, payload: Payload | None) -> bool:
    accept = request.headers.get("Accept", "")
    if NPZ_TYPE in accept:
        return True
    return bool(payload is not None and payload.binary and JSON_TYPE not in accept)


def hv_to_json(hv: Hypervectors) -> list:
    dense = hv.dense().cpu()
    if hv.vsa.name in ("MAP", "BSC"):
        return dense.to(torch.int8).tolist()
    if hv.vsa.name == "FHRR":
        return torch.stack([dense.real, dense.imag], dim=-1).tolist()
    return dense.tolist()


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Hypervectors):
        return value.data.detach().cpu().numpy()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _to_json(value: Any) -> Any:
    if isinstance(value, Hypervectors):
        return hv_to_json(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def dumps(value: Any) -> str:
    """JSON text of a response body (orjson: Python floats keep their exact shortest repr, as json.dumps)."""
    return orjson.dumps(value).decode()


def respond(request: web.Request, payload: Payload | None, fields: dict[str, Any], *, status: int = 200) -> web.Response:
    """JSON or npz response with `fields` (Hypervectors -> dense JSON / storage arrays)."""
    if wants_binary(request, payload):
        buffer = io.BytesIO()
        np.savez(buffer, **{k: _to_numpy(v) for k, v in fields.items() if v is not None})
        return web.Response(body=buffer.getvalue(), status=status, content_type=NPZ_TYPE)
    return web.json_response({k: _to_json(v) for k, v in fields.items()}, status=status, dumps=dumps)


def error_body(error: str, detail: str, correlation_id: str) -> dict[str, str]:
    return {"error": error, "detail": detail, "correlation_id": correlation_id}
