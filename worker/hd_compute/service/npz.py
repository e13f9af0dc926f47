"""The .npz and .npy readers for untrusted request bodies: zipfile for the archive (CRCs checked), numpy's public
.npy format reader (numpy.lib.format) for each array's header, and every size enforced while reading, none taken on
trust.

Invariants: only numeric arrays and text arrays (keys) are accepted, so nothing is ever unpickled; a member's
declared shape x itemsize is checked against what is left of the body's budget (HDC_MAX_BODY_BYTES) before
anything is allocated; its data are read in chunks of NPZ_READ_CHUNK_BYTES into a buffer of exactly the declared
size and refused as soon as they run past (or stop short of) it, so an archive costs no more memory and
decompression than the sizes its headers declare, whatever its central directory claims.
"""

from __future__ import annotations

import io
import lzma
import math
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from .codec import ApiError, body_too_large, invalid

# An archive member's data are read in pieces of this size, so a member that lies about its size costs no more than
# one piece beyond what its header declared.
NPZ_READ_CHUNK_BYTES = 1 << 20
# More members than any request has fields; bounds the per-member work of one archive.
NPZ_MAX_MEMBERS = 64
# The most zipfile may read at once while it opens an archive: its search for the end record (at most 64 KiB of
# comment and the record) and the central directory, which for NPZ_MAX_MEMBERS members is a few KiB. zipfile
# builds an object per central-directory entry before anyone can count them, so a body of nothing but entries
# would cost seconds of CPU and hundreds of MiB; the cap refuses it after one read.
NPZ_MAX_OPENING_READ_BYTES = 128 << 10


class _Body(io.BytesIO):
    """The body as zipfile's file object; while `opening`, a read of more than NPZ_MAX_OPENING_READ_BYTES (a
    central directory no request needs) is refused."""

    opening = True

    def read(self, size: int | None = -1) -> bytes:
        wanted = len(self.getbuffer()) - self.tell() if size is None or size < 0 else size
        if self.opening and wanted > NPZ_MAX_OPENING_READ_BYTES:
            raise ApiError(
                400,
                "malformed_body",
                f"body: the archive's directory is larger than {NPZ_MAX_OPENING_READ_BYTES} bytes; a request has "
                f"at most {NPZ_MAX_MEMBERS} members",
                field="body",
            )
        return super().read(size)


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
    body = _Body(raw)
    try:
        archive = zipfile.ZipFile(body)
    except _ARCHIVE_ERRORS as exc:
        raise ApiError(400, "malformed_body", f"body: not a valid .npz archive ({exc})", field="body") from None
    body.opening = False
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


def read_npy(raw: bytes, key: str, budget: int) -> np.ndarray:
    """A body that is one .npy array (application/x-npy), the value of field `key`; at most `budget` bytes
    unpacked (413 otherwise). The same reader as an archive's members, so the same refusals."""
    return _read_npy(io.BytesIO(raw), key, budget)


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
