"""The worker's wire format: what every request and response module shares.

JSON (`application/json`): a hypervector is its element-per-dimension ("dense") form, a batch is a nested list:
    MAP, BSC  +1 / -1 per dimension (BSC: bit 0 -> +1, bit 1 -> -1), ints
    HRR       one real number per dimension
    FHRR      one [re, im] pair per dimension (unit phasors), so a vector is a (D, 2) list

Binary (`application/x-npz`, the format of numpy.savez): the request's fields as named arrays in one archive,
scalar parameters in the query string. An operation with one vector field (openapi.NPY_FIELDS) also takes that
field alone as one .npy array (`application/x-npy`, the format of numpy.save): no archive to open, no CRC to
check, which is most of the decoding cost of a single query. Hypervectors travel in their *storage* form, which
is what the worker keeps in memory (MAP int8 or float32 ±1, BSC int64 words with 64 packed bits each, HRR
float32/float64, FHRR complex64/complex128). A response is binary (the response's fields in an .npz) when the
Accept header names application/x-npz, or when the request was binary and Accept does not name application/json.

The rest lives by concern: payload.py reads a request body into a Payload (limits, timeouts, JSON and storage
forms), npz.py reads .npz archives without trusting their sizes, responses.py sizes and encodes responses. Every
problem is an ApiError naming the field, so the handler can answer 4xx with it.

The event loop: work on a large body or response runs in a worker thread (off_loop), small ones inline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors

from .config import WorkerSettings

JSON_TYPE = "application/json"
NPZ_TYPE = "application/x-npz"
NPY_TYPE = "application/x-npy"

# Bodies and responses up to this size are decoded and encoded on the event loop: handing them to a worker thread
# and back costs more than the work itself, and the loop is held only briefly.
INLINE_CODEC_MAX_BYTES = 256 << 10

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


def body_too_large(detail: str) -> ApiError:
    """413: a body (or what an archive unpacks to) over its limit; the connection closes after the answer."""
    return ApiError(413, "body_too_large", f"body: {detail}", field="body", close=True)


@dataclass(frozen=True)
class Limits:
    """The byte and time limits of one request (from WorkerSettings)."""

    body_bytes: int  # an .npz body, and separately the unpacked arrays in it
    json_body_bytes: int  # a JSON body (at most body_bytes)
    response_bytes: int  # an encoded response, worst case
    body_timeout: float  # seconds for the whole body to arrive
    inflight_body_bytes: int  # the bodies of all requests being served together (at least body_bytes)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> "Limits":
        return cls(
            settings.max_body_bytes,
            min(settings.max_json_body_bytes, settings.max_body_bytes),
            settings.max_response_bytes,
            settings.body_timeout_seconds,
            max(settings.max_inflight_body_bytes, settings.max_body_bytes),
        )


LIMITS = web.AppKey("limits", Limits)  # the app's request limits (create_app sets them from its settings)


class BodyBudget:
    """The bytes of request bodies the worker holds at once: each request's body as it arrives and the arrays
    decoded from it, until the request is answered. Over `limit` (HDC_MAX_INFLIGHT_BODY_BYTES) a request gets a
    503 insufficient_memory, a transient shortage to retry, instead of every request sharing the host's memory.
    Event-loop only (no lock): takes and releases happen in the requests' coroutines."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def hold(self) -> "Held":
        return Held(self)


class Held:
    """What one request holds of the BodyBudget; released once, when the request is answered."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.nbytes = 0

    def take(self, nbytes: int) -> None:
        budget = self.budget
        if budget.held + nbytes > budget.limit:
            raise ApiError(
                503,
                "insufficient_memory",
                f"body: the worker holds {budget.held} bytes of request bodies, {nbytes} more would pass "
                f"HDC_MAX_INFLIGHT_BODY_BYTES ({budget.limit}); retry shortly",
                field="body",
                close=True,
            )
        budget.held += nbytes
        self.nbytes += nbytes

    def release(self) -> None:
        self.budget.held -= self.nbytes
        self.nbytes = 0


BODIES = web.AppKey("bodies", BodyBudget)  # the app's BodyBudget (create_app sets it)


async def off_loop(nbytes: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) inline when it handles at most INLINE_CODEC_MAX_BYTES, else in a worker thread."""
    if nbytes <= INLINE_CODEC_MAX_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def hv_to_json(hv: Hypervectors) -> Any:
    """The dense JSON form of hypervectors (ints for MAP and BSC, [re, im] pairs for FHRR): nested lists."""
    return dense_array(hv).tolist()


def dense_array(hv: Hypervectors) -> np.ndarray:
    """The dense form as an array: int8 ±1 for MAP and BSC, reals for HRR, (..., D, 2) [re, im] pairs for FHRR."""
    if hv.data.numel() == 0:  # an empty batch: nothing to convert
        pair = (2,) if hv.vsa.name == "FHRR" else ()
        return np.zeros((*hv.shape, hv.dim, *pair), dtype=np.int8 if hv.vsa.name in ("MAP", "BSC") else np.float32)
    dense = hv.dense().cpu()
    if hv.vsa.name in ("MAP", "BSC"):
        return dense.to(torch.int8).numpy()
    if hv.vsa.name == "FHRR":
        return torch.stack([dense.real, dense.imag], dim=-1).numpy()
    return dense.numpy()


def error_body(error: str, detail: str, correlation_id: str) -> dict[str, str]:
    return {"error": error, "detail": detail, "correlation_id": correlation_id}
