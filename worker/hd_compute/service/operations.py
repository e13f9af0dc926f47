"""The frame every /v1 operation runs in: `@operation(name)` wraps a handler that takes an `Op`.

The wrapper times the request, runs the fault injector (HDC_ADMIN_FAULTS only), maps every failure to a JSON
error {"error", "detail", "correlation_id"} with a status that says whose fault it is (4xx naming the field for a
bad request; 503 for a transient shortage: device or host memory; 500 only for a bug, without its internals), and
reports the outcome once through middleware.record_completed / record_failed. The worker keeps serving in every
case.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import torch
from aiohttp import web

from hd_compute.hypervectors import Hypervectors
from hd_compute.vsa import VSAModel

from .codec import BODIES, LIMITS, ApiError, Held, invalid
from .config import WorkerSettings
from .faults import FAULTS
from .middleware import (
    batch_tag,
    error_response,
    log_exception,
    log_failure,
    op_kernel_span,
    record_completed,
    record_failed,
)
from .openapi import MAX_DIMENSION, NPY_FIELDS
from .payload import Payload, read_payload
from .responses import respond, wants_binary
from .state import check_name
from .worker import WORKER, Worker

OPERATIONS: list[str] = []  # every operation() name: their metric series are exported at zero from the start
# What the engine may hold per element of the hypervectors an operation works on element by element (int64
# counters of a bundle, unpacked BSC bits, float temporaries): the bound of HDC_MAX_ALLOCATION_BYTES for them.
WORKING_BYTES_PER_ELEMENT = 8


class Op:
    """One /v1 request as its handler describes it to the wrapper: the operation's name, its decoded payload,
    and the dimension and number of input hypervectors (for the log line, metrics and kernel spans)."""

    def __init__(self, worker: Worker, request: web.Request, name: str) -> None:
        self.worker = worker
        self.request = request
        self.name = name
        self.payload: Payload | None = None
        self.held: Held | None = None  # what read() took of the worker's BodyBudget; released by the wrapper
        self.dimension: int | None = None
        self.input_count = 0
        # headers every answer of this request carries, its errors included (X-HDC-State-Version, Retry-After)
        self.headers: dict[str, str] = {}

    @property
    def settings(self) -> WorkerSettings:
        return self.worker.settings

    def path_name(self) -> str:
        """The {name} of the route's path."""
        return self.request.match_info["name"]

    async def read(self) -> Payload:
        self.held = self.request.app[BODIES].hold()
        self.payload = await read_payload(self.request, self.request.app[LIMITS], self.held, NPY_FIELDS.get(self.name))
        return self.payload

    @property
    def binary_response(self) -> bool:
        """Whether the response will be an .npz (else JSON); what its size is counted in."""
        return wants_binary(self.request, self.payload)

    def check_allocation(self, field: str, nbytes: int, what: str) -> None:
        """400 naming `field` when the request would make the worker allocate more than HDC_MAX_ALLOCATION_BYTES
        (checked before anything is computed or allocated)."""
        limit = self.settings.max_allocation_bytes
        if nbytes > limit:
            raise invalid(
                field,
                f"{what} would need {nbytes} bytes, over the limit of {limit} bytes one request may "
                "make the worker allocate (HDC_MAX_ALLOCATION_BYTES); request fewer or smaller",
            )

    def check_elements(self, field: str, elements: int, what: str) -> None:
        """check_allocation for an operation that works on `elements` hypervector elements one by one."""
        self.check_allocation(field, elements * WORKING_BYTES_PER_ELEMENT, what)

    async def kernel(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs `fn` on the kernel thread (one call, not batched), inside its kernel span."""
        with op_kernel_span(self):
            return await self.worker.runner.run(fn, *args)

    async def batched(self, key: Hashable, rows: int, item: Any, run_batch: Callable[[list[Any]], list[Any]]) -> Any:
        """Submits `item` to the micro-batcher: one kernel call serves every request of its batch."""
        return await self.worker.batcher.submit(key, rows, item, run_batch, batch_tag(self))

    def on_device(self, hv: Hypervectors) -> Hypervectors:
        return hv if hv.device == self.worker.device else hv.to(self.worker.device)

    async def respond(self, fields: dict[str, Any], status: int = 200) -> web.Response:
        """The response with `fields` in the format the client asked for; over HDC_MAX_RESPONSE_BYTES (worst case)
        it is a 400, and a large one is encoded off the event loop."""
        return await respond(self.request, self.payload, fields, status=status, limit=self.settings.max_response_bytes)


OpHandler = Callable[[Op], Awaitable[web.Response]]


def operation(name: str) -> Callable[[OpHandler], Callable[[web.Request], Awaitable[web.Response]]]:
    """Makes `fn(op)` an aiohttp handler of the /v1 operation `name` (see the module's docstring)."""
    OPERATIONS.append(name)

    def decorate(fn: OpHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.Response:
            op = Op(request.app[WORKER], request, name)
            try:
                response = await _served(op, fn)
                response.headers.update(op.headers)
                return response
            finally:
                if op.held is not None:
                    op.held.release()

        return handler

    return decorate


# The message of the RuntimeError torch's CPU allocator raises when the host cannot give it the memory (it raises
# no MemoryError; its message is the only way to tell this RuntimeError from the others).
CPU_ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory"


def _out_of_memory(exc: Exception) -> bool:
    """The host ran out of memory: a transient shortage (503), not a bad request and not a bug."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and CPU_ALLOCATION_FAILED in str(exc))


async def _served(op: Op, fn: OpHandler) -> web.Response:
    """fn(op)'s response, or the JSON error its failure maps to (see the module's docstring)."""
    name, request = op.name, op.request
    started = time.perf_counter()
    try:
        if (faults := request.app.get(FAULTS)) is not None:
            await faults.before(name)
        response = await fn(op)
    except ApiError as exc:
        failed = _failed(op, started, exc.status, exc.error, exc.detail)
        if exc.close:  # a body refused while it was arriving: do not read the rest of it
            failed.force_close()
        return failed
    except torch.cuda.OutOfMemoryError as exc:
        _log_cuda_oom(op, exc)
        return _failed(
            op,
            started,
            503,
            "cuda_out_of_memory",
            f"{name}: the device ran out of memory; retry later or send a smaller batch",
            log_it=False,
        )
    except (ValueError, TypeError, IndexError) as exc:
        # The engine checks its arguments and names them; the request fields carry the same names.
        return _failed(op, started, 400, "invalid_argument", str(exc))
    except Exception as exc:  # noqa: BLE001 - answer 5xx and keep serving
        if _out_of_memory(exc):
            return _failed(
                op,
                started,
                503,
                "insufficient_memory",
                f"{name}: the worker ran out of memory for this request; retry later or send a smaller one",
            )
        log_exception("request_failed_unexpectedly", operation=name)
        return _failed(
            op,
            started,
            500,
            "internal_error",
            f"{name}: an internal error; the worker's log has it under this correlation id",
        )
    record_completed(op, time.perf_counter() - started, response.status)
    return response


def _failed(op: Op, started: float, status: int, error: str, detail: str, *, log_it: bool = True) -> web.Response:
    record_failed(op, time.perf_counter() - started, status, error, detail, log_it=log_it)
    return error_response(op.request, status, error, detail)


def _log_cuda_oom(op: Op, exc: BaseException) -> None:
    fields: dict[str, Any] = {}
    if torch.cuda.is_available():
        try:
            free, _total = torch.cuda.mem_get_info(op.worker.device)
            fields["available_memory_mb"] = round(free / 2**20, 1)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - the log line matters more than its details
            pass
    log_failure(
        "cuda_memory_allocation_failed",
        operation=op.name,
        dimension=op.dimension,
        input_count=op.input_count,
        error_code="CUDA_OUT_OF_MEMORY",
        device=str(op.worker.device),
        detail=str(exc)[:500],
        **fields,
    )


# -- helpers the routes share -----------------------------------------------------------------------------------


def count(hv: Hypervectors) -> int:
    """The number of hypervectors in `hv` (the product of its batch shape)."""
    n = 1
    for s in hv.shape:
        n *= s
    return n


def empty_like(hv: Hypervectors, shape: tuple[int, ...]) -> Hypervectors:
    """An empty batch of `shape` of hv's model, dimension and dtype: the answer to a request with no hypervectors,
    given without the engine (some of its kernels need at least one)."""
    return Hypervectors(hv.data.new_empty((*shape, hv.data.shape[-1])), hv.vsa, hv.dim)


def vectors_fields(hv: Hypervectors) -> dict[str, Any]:
    """The response fields of an operation that returns hypervectors."""
    return {"vsa": hv.vsa.name, "dimension": hv.dim, "shape": list(hv.shape), "vectors": hv}


def vsa_and_dimension(op: Op, payload: Payload) -> tuple[VSAModel, int | None]:
    """The request's `vsa` (the worker's model by default) and `dimension` (None when not given)."""
    model = payload.vsa(op.settings.vsa)
    dim = payload.integer("dimension", None, minimum=1, maximum=MAX_DIMENSION)
    return model, dim


def entry_name(value: Any, field: str = "name") -> str:
    """A memory's or classifier's name from a request field; 400 naming the field when it is not one."""
    try:
        return check_name(value, field)
    except ValueError as exc:
        raise invalid(field, str(exc).removeprefix(f"{field} ")) from None
