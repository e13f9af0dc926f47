"""The worker's HTTP API (aiohttp): routes -> micro-batcher / kernel thread -> the functional API.

Every request gets a correlation id (X-Correlation-ID, or a new uuid4; echoed in the response), a server span
(W3C traceparent honoured; without an exporter only its ids, see light_span_ids), the request scope its log lines
take their ids from, and for the /v1 operations one metrics.observe_operation call and one
hypervector_operation_completed log line. Errors are JSON
{"error", "detail", "correlation_id"} with a 4xx status naming the field; a CUDA out-of-memory is a 503 and the
cuda_memory_allocation_failed log line; the worker keeps serving in both cases. HDC_OBSERVABILITY=false skips the
span, log context, metrics and log line of successful requests (hdc-bench --service measures what they cost). docs/worker-api.md is the
reference for every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import re
import time
from typing import Any, Awaitable, Callable

import torch
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

import hd_compute.functional as F
from hd_compute.device import resolve_device
from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.monitoring.health import HealthChecker, HealthThresholds, http_status
from hd_compute.monitoring.logging import (OPERATION_COMPLETED, REQUEST_SCOPE, LoggerCache, RequestScope,
                                           log_request_line)
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.monitoring.tracing import kernel_span, light_span_ids, records_spans, server_span
from hd_compute.structures import ItemMemory
from hd_compute.vsa import get_model

from . import openapi
from .batching import KernelRunner, MicroBatcher
from .codec import ApiError, Payload, error_body, invalid, read_payload, respond
from .config import WorkerSettings
from .faults import FAULTS, install as install_faults
from .state import ClassifierEntry, MemoryEntry, StateStore, check_name

CORRELATION_HEADER = "X-Correlation-ID"
_CID_RE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


log = LoggerCache("hd_compute.service")  # log().info(...): bound once per logging set-up


class Worker:
    """Everything one worker process holds: settings, metrics, the kernel thread, the batcher, the state."""

    def __init__(self, settings: WorkerSettings, *, metrics: MetricsCollector | None = None,
                 health: HealthChecker | None = None) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.device_name = str(self.device)
        self.metrics = metrics if metrics is not None else MetricsCollector()
        self.metrics.declare_operations(OPERATIONS)
        self.health = health if health is not None else HealthChecker(
            HealthThresholds(cuda_memory_mb=settings.health_cuda_memory_mb, memory_percent=settings.health_memory_percent,
                             disk_percent=settings.health_disk_percent, disk_path=_existing_parent(settings.state_dir)),
            require_cuda=self.device.type == "cuda")
        self.runner = KernelRunner()
        self.batcher = MicroBatcher(self.runner, max_size=settings.batch_max_size,
                                    max_wait=settings.batch_max_wait_seconds, on_batch=self.metrics.observe_batch_size,
                                    around_batch=_batch_span)
        self.store = StateStore(settings.state_dir)
        self.memories: dict[str, MemoryEntry] = {}
        self.classifiers: dict[str, ClassifierEntry] = {}
        self.state_loaded = asyncio.Event()
        self.warmed_up = False
        self.shutting_down = False
        self.startup_error: str | None = None
        self.in_flight = 0  # requests being served (all routes): shutdown waits for them
        self.in_flight_ops = 0  # /v1 requests only: the benchmark yields to these, not to probes and scrapes
        self._start_task: asyncio.Task | None = None
        self._periodic_task: asyncio.Task | None = None

    # -- readiness --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state_loaded.is_set() and self.warmed_up and not self.shutting_down and self.startup_error is None

    def is_busy(self) -> bool:
        return self.in_flight_ops > 0

    async def start(self) -> None:
        """Loads the snapshots, then warms the kernels up; /readyz turns 200 after both."""
        try:
            memories, classifiers = await self.runner.run(self.store.load_all, self.device)
            self.memories.update(memories)
            self.classifiers.update(classifiers)
            self.state_loaded.set()
            log().info("state_loaded", memories=len(memories), classifiers=len(classifiers),
                       state_dir=self.store.state_dir)
            started = time.perf_counter()
            await self.runner.run(self.warm_up)
            self.warmed_up = True
            self._update_state_gauges()
            log().info("worker_ready", warmup_ms=round((time.perf_counter() - started) * 1000, 2),
                       vsa=self.settings.vsa, dimension=self.settings.dimension, device=str(self.device))
            if self.settings.snapshot_interval_seconds > 0:
                self._periodic_task = asyncio.get_running_loop().create_task(self._periodic_snapshots())
        except Exception as exc:  # the worker stays alive but never ready; /readyz says why
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log().error("worker_startup_failed", error=self.startup_error)
            self.state_loaded.set()

    def warm_up(self) -> None:
        """Runs each kernel once on the configured model, dimension and device (lazy init, allocator, caches)."""
        s = self.settings
        x = F.random(8, s.dimension, s.vsa, device=self.device, seed=0)
        y = F.random(8, s.dimension, s.vsa, device=self.device, seed=1)
        F.bind(x, y)
        F.multiset(x)
        F.permute(x, 1)
        F.cosine_similarity(x, y)
        F.dot_similarity(x, y)
        memory = ItemMemory(s.dimension, s.vsa, device=self.device, initial_capacity=8)
        memory.add(x)
        memory.search(y, k=2)
        for entry in list(self.memories.values()):
            if len(entry.memory):
                entry.memory.search(entry.memory.get([0]), k=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- state -------------------------------------------------------------------------------------------------
    async def _periodic_snapshots(self) -> None:
        while not self.shutting_down:
            await asyncio.sleep(self.settings.snapshot_interval_seconds)
            try:
                await self.runner.run(self.snapshot_all)
            except Exception as exc:  # noqa: BLE001 - a failed periodic snapshot must not stop the worker
                log().error("snapshot_failed", error=str(exc))

    def snapshot_all(self) -> int:
        """Writes every memory and classifier (kernel thread); returns how many files were written."""
        count = 0
        for name, entry in list(self.memories.items()):
            self.store.save_memory(name, entry)
            count += 1
        for name, entry in list(self.classifiers.items()):
            self.store.save_classifier(name, entry)
            count += 1
        return count

    async def stop(self) -> None:
        """After the in-flight requests: flush the batcher, stop periodic snapshots, write the final snapshot."""
        self.shutting_down = True
        await self.batcher.drain()
        if self._periodic_task is not None:
            self._periodic_task.cancel()
            await asyncio.gather(self._periodic_task, return_exceptions=True)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        if self.state_loaded.is_set() and self.startup_error is None:
            started = time.perf_counter()
            written = await self.runner.run(self.snapshot_all)
            log().info("state_snapshotted", files=written, duration_ms=round((time.perf_counter() - started) * 1000, 2))
        self.runner.shutdown()

    def _update_state_gauges(self) -> None:
        items = sum(len(e.memory) for e in self.memories.values())
        nbytes = sum(e.memory.vectors.nbytes for e in self.memories.values())
        self.metrics.set_gauge("active_hypervectors", items)
        self.metrics.record_memory_usage("item_memories", nbytes)

    async def wait_state(self) -> None:
        if not self.state_loaded.is_set():
            await self.state_loaded.wait()
        if self.startup_error is not None:
            raise ApiError(503, "not_ready", f"state: the worker failed to start ({self.startup_error})")


def _existing_parent(path: str) -> str:
    import os

    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


WORKER = web.AppKey("worker", Worker)
CORRELATION_ID = web.RequestKey("correlation_id", str)


# ---------------------------------------------------------------------------------------------------------
# request plumbing


class Op:
    """What a handler tells the wrapper about its request (for the log line, metrics and kernel spans)."""

    def __init__(self, worker: Worker, request: web.Request, name: str):
        self.worker = worker
        self.request = request
        self.name = name
        self.payload: Payload | None = None
        self.dimension: int | None = None
        self.input_count = 0

    async def read(self) -> Payload:
        self.payload = await read_payload(self.request, self.worker.settings.max_body_bytes)
        return self.payload

    def _span(self):
        # Without an exporter there is no current span to be a child of (the request's ids live in its scope),
        # and nothing would record a kernel span.
        if not (self.worker.settings.observability and records_spans()):
            return contextlib.nullcontext()
        return kernel_span(self.name, self.input_count, self.dimension or 0)

    async def kernel(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._span():
            return await self.worker.runner.run(fn, *args)

    async def batched(self, key: Any, rows: int, item: Any, run_batch: Callable[[list], list]) -> Any:
        # One kernel call serves every request of its batch: its span is opened once per call (_batch_span),
        # not once per request, and only when spans are recorded (an exporter is configured).
        tag = None
        if self.worker.settings.observability and records_spans():
            tag = (self.name, self.dimension or 0, trace.get_current_span().get_span_context())
        return await self.worker.batcher.submit(key, rows, item, run_batch, tag)

    def respond(self, fields: dict[str, Any], status: int = 200) -> web.Response:
        return respond(self.request, self.payload, fields, status=status)


OPERATIONS: list[str] = []  # every operation() name: their metric series are exported at zero from the start


def operation(name: str) -> Callable[[Callable[[Op], Awaitable[web.Response]]], Callable[[web.Request], Awaitable[web.Response]]]:
    OPERATIONS.append(name)

    def decorate(fn):
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.Response:
            worker = request.app[WORKER]
            op = Op(worker, request, name)
            started = time.perf_counter()
            try:
                if (faults := request.app.get(FAULTS)) is not None:  # HDC_ADMIN_FAULTS=true only
                    await faults.before(name)
                response = await fn(op)
            except ApiError as exc:
                return _failed(op, started, exc.status, exc.error, exc.detail)
            except torch.cuda.OutOfMemoryError as exc:
                _log_oom(op, exc)
                return _failed(op, started, 503, "cuda_out_of_memory",
                               f"{name}: the device ran out of memory; retry later or send a smaller batch", log_it=False)
            except (ValueError, TypeError, IndexError) as exc:
                # The engine checks its arguments and names them; the request fields carry the same names.
                return _failed(op, started, 400, "invalid_argument", str(exc))
            except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
                log().exception("request_failed_unexpectedly", operation=name)
                return _failed(op, started, 500, "internal_error", f"{type(exc).__name__}: {exc}")
            if not worker.settings.observability:
                return response
            seconds = time.perf_counter() - started
            worker.metrics.observe_operation(name, seconds, hypervectors=max(op.input_count, 1))
            log_request_line(log.name, OPERATION_COMPLETED, {
                "operation": name, "dimension": op.dimension, "input_count": op.input_count,
                "duration_ms": round(seconds * 1000, 3), "device": worker.device_name, "status": response.status})
            return response

        return handler

    return decorate


def _batch_span(tags: list, rows: int):
    """The kernel span of one micro-batched kernel call: a child of the first request's span, linked to the
    spans of all the requests it computed, with hdc.input_count = the rows of the call. None without tags
    (observability off, or no exporter: nothing would record it)."""
    first = tags[0]
    if first is None:
        return contextlib.nullcontext()
    operation, dimension, parent = first
    return kernel_span(operation, rows, dimension, parent=parent, links=[t[2] for t in tags if t is not None],
                       attributes={"hdc.batch_requests": len(tags)})


def _failed(op: Op, started: float, status: int, error: str, detail: str, *, log_it: bool = True) -> web.Response:
    op.worker.metrics.observe_operation(op.name, time.perf_counter() - started, hypervectors=max(op.input_count, 1),
                                        error=error)
    if log_it:
        log().warning("request_failed", operation=op.name, status=status, error=error, detail=detail)
    return error_response(op.request, status, error, detail)


def _log_oom(op: Op, exc: BaseException) -> None:
    fields: dict[str, Any] = {}
    if torch.cuda.is_available():
        try:
            free, _total = torch.cuda.mem_get_info(op.worker.device)
            fields["available_memory_mb"] = round(free / 2**20, 1)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - the log line matters more than its details
            pass
    log().error("cuda_memory_allocation_failed", operation=op.name, dimension=op.dimension,
                input_count=op.input_count, error_code="CUDA_OUT_OF_MEMORY", device=str(op.worker.device),
                detail=str(exc)[:500], **fields)


def correlation_id(request: web.Request) -> str:
    return request.get(CORRELATION_ID) or "unknown"


def error_response(request: web.Request, status: int, error: str, detail: str) -> web.Response:
    return web.json_response(error_body(error, detail, correlation_id(request)), status=status)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def _new_correlation_id() -> str:
    """A random (version 4) UUID from Python's PRNG: no getrandom syscall per request; not a secret. Written
    with one "%x" instead of str(uuid.UUID(...)): half the cost (3 us) on every request."""
    h = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@web.middleware
async def observability_middleware(request: web.Request, handler):
    worker = request.app[WORKER]
    given = request.headers.get(CORRELATION_HEADER, "")
    cid = given if _CID_RE.fullmatch(given) else _new_correlation_id()
    request[CORRELATION_ID] = cid
    is_op = request.path.startswith("/v1/")
    worker.in_flight += 1
    worker.in_flight_ops += is_op
    if not worker.settings.observability:  # HDC_OBSERVABILITY=false: no server span, no log context
        try:
            response = await _handle(request, handler)
            response.headers[CORRELATION_HEADER] = cid
            return response
        finally:
            worker.in_flight -= 1
            worker.in_flight_ops -= is_op
    light_ids = light_span_ids(request.headers)  # None when spans are recorded (or tracing is off)
    token = REQUEST_SCOPE.set(RequestScope(cid, *light_ids) if light_ids is not None else RequestScope(cid))
    try:
        if light_ids is not None:  # nothing records a span: the scope carries its ids to the log lines
            response = await _handle(request, handler)
            response.headers[CORRELATION_HEADER] = cid
            return response
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        attributes = {"http.request.method": request.method, "http.route": route, "hdc.correlation_id": cid}
        with server_span(f"{request.method} {route}", request.headers, attributes=attributes) as span:
            response = await _handle(request, handler)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            response.headers[CORRELATION_HEADER] = cid
            return response
    finally:
        worker.in_flight -= 1
        worker.in_flight_ops -= is_op
        REQUEST_SCOPE.reset(token)


async def _handle(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # router 404/405 and friends: JSON like every other error
        if exc.status < 400:
            raise
        return error_response(request, exc.status, _http_error_code(exc.status), f"{request.method} {request.path}: {exc.reason}")


def _http_error_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(status, "http_error")


# ---------------------------------------------------------------------------------------------------------
# helpers for the handlers


def _vsa_and_dim(op: Op, payload: Payload) -> tuple[Any, int]:
    s = op.worker.settings
    model = payload.vsa(s.vsa)
    dim = payload.int("dimension", None, minimum=1, maximum=1 << 24)
    return model, dim


def _on_device(op: Op, hv: Hypervectors) -> Hypervectors:
    return hv if hv.device == op.worker.device else hv.to(op.worker.device)


def _count(hv: Hypervectors) -> int:
    n = 1
    for s in hv.shape:
        n *= s
    return n


def _vectors_fields(hv: Hypervectors) -> dict[str, Any]:
    return {"vsa": hv.vsa.name, "dimension": hv.dim, "shape": list(hv.shape), "vectors": hv}


def _memory(op: Op, name: str) -> MemoryEntry:
    entry = op.worker.memories.get(name)
    if entry is None:
        raise ApiError(404, "memory_not_found", f"name: no item memory named {name!r}", field="name")
    return entry


def _classifier(op: Op, name: str) -> ClassifierEntry:
    entry = op.worker.classifiers.get(name)
    if entry is None:
        raise ApiError(404, "classifier_not_found", f"name: no classifier named {name!r}", field="name")
    return entry


def _name(value: Any, field: str = "name") -> str:
    try:
        return check_name(value, field)
    except ValueError as exc:
        raise invalid(field, str(exc).removeprefix(f"{field} ")) from None


# ---------------------------------------------------------------------------------------------------------
# /v1/hypervectors and /v1/ops


@operation("random")
async def random_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = _vsa_and_dim(op, p)
    dim = dim or op.worker.settings.dimension
    raw = p._raw("num", None, True)
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw):
            raise invalid("num", "must be a non-negative int or a non-empty list of them (a batch shape)")
        shape = tuple(raw)
    else:
        shape = (p.int("num", required=True, minimum=0),)
    count = 1
    for s in shape:
        count *= s
    limit = op.worker.settings.max_body_bytes
    if count * dim > limit:
        raise invalid("num", f"{count} hypervectors x dimension {dim} exceeds the response limit of {limit} elements "
                             f"(HDC_MAX_BODY_BYTES); request fewer")
    seed = p.int("seed", None, minimum=0)
    op.dimension, op.input_count = dim, count
    hv = await op.kernel(lambda: F.random(shape, dim, model, device=op.worker.device, seed=seed))
    return op.respond(_vectors_fields(hv))


@operation("bind")
async def bind_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = _vsa_and_dim(op, p)
    a = p.vectors("a", model, dim, default_dim=op.worker.settings.dimension)
    b = p.vectors("b", model, a.dim)
    op.dimension, op.input_count = a.dim, _count(a) + _count(b)
    unbind = p.bool("unbind", False)
    fn = F.unbind if unbind else F.bind
    hv = await op.kernel(lambda: fn(_on_device(op, a), _on_device(op, b)))
    return op.respond(_vectors_fields(hv))


@operation("bundle")
async def bundle_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = _vsa_and_dim(op, p)
    x = p.vectors("vectors", model, dim, default_dim=op.worker.settings.dimension)
    if x.data.dim() < 2 or x.data.shape[-2] == 0:
        raise invalid("vectors", f"must be a non-empty batch (..., n, D) to bundle over its last batch axis, "
                                 f"got batch shape {list(x.shape)}", error="invalid_shape")
    op.dimension, op.input_count = x.dim, _count(x)
    hv = await op.kernel(lambda: F.multiset(_on_device(op, x)))
    return op.respond(_vectors_fields(hv))


@operation("permute")
async def permute_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = _vsa_and_dim(op, p)
    x = p.vectors("vectors", model, dim, default_dim=op.worker.settings.dimension)
    shifts = p.int("shifts", 1)
    op.dimension, op.input_count = x.dim, _count(x)
    hv = await op.kernel(lambda: F.permute(_on_device(op, x), shifts))
    return op.respond(_vectors_fields(hv))


_METRICS = {"cosine": F.cosine_similarity, "dot": F.dot_similarity, "hamming": F.hamming_similarity}


def _similarity_batch(metric: str, others: Hypervectors, items: list[Hypervectors]) -> list[torch.Tensor]:
    """One kernel call for all queries of the coalesced requests; each gets its rows back."""
    flat = [q.data.reshape(-1, q.data.shape[-1]) for q in items]
    queries = Hypervectors(torch.cat(flat) if len(flat) > 1 else flat[0], others.vsa, others.dim)
    scores = _METRICS[metric](queries, others)  # (total, *others.shape)
    out, start = [], 0
    for q, rows in zip(items, flat):
        n = rows.shape[0]
        out.append(scores[start : start + n].reshape(*q.shape, *others.shape).cpu())
        start += n
    return out


@operation("similarity")
async def similarity_route(op: Op) -> web.Response:
    p = await op.read()
    model, dim = _vsa_and_dim(op, p)
    metric = p.str("metric", "cosine", choices=tuple(_METRICS))
    queries = p.vectors("queries", model, dim, default_dim=op.worker.settings.dimension)
    others = p.vectors("others", model, queries.dim)
    if others.data.dim() > 2:
        raise invalid("others", f"must be one hypervector or a list of them, got batch shape {list(others.shape)}",
                      error="invalid_shape")
    if metric == "hamming" and not model.supports_hamming:
        raise invalid("metric", f"hamming is defined for MAP and BSC, not {model.name}")
    if queries.dtype != others.dtype:
        raise invalid("others", f"has dtype {others.dtype} but queries have {queries.dtype}")
    op.dimension, op.input_count = queries.dim, _count(queries)
    queries, others = _on_device(op, queries), _on_device(op, others)
    digest = hashlib.blake2b(others.data.cpu().numpy().tobytes(), digest_size=16).hexdigest()
    key = ("similarity", metric, model.name, others.dim, str(others.dtype), tuple(others.shape), digest)
    scores = await op.batched(key, max(_count(queries), 1), queries,
                              functools.partial(_similarity_batch, metric, others))
    return op.respond({"metric": metric, "similarities": scores})


# ---------------------------------------------------------------------------------------------------------
# /v1/memories


def _memory_info(name: str, entry: MemoryEntry) -> dict[str, Any]:
    return {"name": name, "vsa": entry.memory.vsa.name, "dimension": entry.memory.dim, "size": len(entry.memory)}


@operation("memory_create")
async def memory_create(op: Op) -> web.Response:
    p = await op.read()
    name = _name(p.str("name", required=True))
    model, dim = _vsa_and_dim(op, p)
    dim = dim or op.worker.settings.dimension
    op.dimension = dim
    await op.worker.wait_state()

    def create() -> MemoryEntry:
        if name in op.worker.memories:
            raise ApiError(409, "already_exists", f"name: an item memory named {name!r} exists; delete it first", field="name")
        entry = MemoryEntry(ItemMemory(dim, model, device=op.worker.device))
        op.worker.store.save_memory(name, entry)
        op.worker.memories[name] = entry
        return entry

    entry = await op.kernel(create)
    return op.respond(_memory_info(name, entry), status=201)


@operation("memory_list")
async def memory_list(op: Op) -> web.Response:
    await op.worker.wait_state()
    return op.respond({"memories": [_memory_info(n, e) for n, e in sorted(op.worker.memories.items())]})


@operation("memory_get")
async def memory_get(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    entry = _memory(op, name)
    info = _memory_info(name, entry)
    if any(entry.keys):
        info["keys"] = list(entry.keys)
    return op.respond(info)


@operation("memory_delete")
async def memory_delete(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    _memory(op, name)

    def delete() -> None:
        _memory(op, name)
        op.worker.store.delete("memory", name)
        del op.worker.memories[name]

    await op.kernel(delete)
    op.worker._update_state_gauges()
    return op.respond({"deleted": name})


@operation("memory_add")
async def memory_add(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    p = await op.read()
    entry = _memory(op, name)
    memory = entry.memory
    items = p.vectors("vectors", memory.vsa, memory.dim)
    if items.data.dim() > 2:
        raise invalid("vectors", f"must be one hypervector or a list of them, got batch shape {list(items.shape)}",
                      error="invalid_shape")
    if items.dtype != memory.dtype:
        items = Hypervectors(items.data.to(memory.dtype), memory.vsa, memory.dim)
    count = _count(items)
    keys = None
    if p.has("keys"):
        keys = p.arrays["keys"].tolist() if "keys" in p.arrays else p.fields["keys"]
        if not isinstance(keys, list) or len(keys) != count or not all(isinstance(k, str) for k in keys):
            raise invalid("keys", f"must be a list of {count} strings, one per item")
    op.dimension, op.input_count = memory.dim, count

    def add() -> torch.Tensor:
        current = _memory(op, name)
        ids = current.memory.add(_on_device(op, items))
        current.keys.extend(keys if keys is not None else [""] * count)
        op.worker.store.save_memory(name, current)
        return ids

    ids = await op.kernel(add)
    op.worker._update_state_gauges()
    return op.respond({"name": name, "ids": ids, "size": len(memory)})


def _query_batch(worker: Worker, name: str, items: list[tuple[Hypervectors, int]]) -> list[tuple]:
    entry = worker.memories.get(name)
    if entry is None:
        raise ApiError(404, "memory_not_found", f"name: no item memory named {name!r}", field="name")
    memory = entry.memory
    k_max = max(k for _, k in items)
    if k_max > len(memory):
        raise ApiError(400, "invalid_field", f"k: {k_max} is larger than the number of items ({len(memory)})", field="k")
    flat = [q.data.reshape(-1, q.data.shape[-1]) for q, _ in items]
    queries = Hypervectors(torch.cat(flat) if len(flat) > 1 else flat[0], memory.vsa, memory.dim)
    result = memory.search(queries, k=k_max)
    # One device-to-host copy for the whole batch; each request's rows are numpy views of it.
    all_sims = result.similarities.reshape(-1, k_max).cpu().numpy()
    all_ids = result.indices.reshape(-1, k_max).cpu().numpy()
    has_keys = any(entry.keys)
    out, start = [], 0
    for (q, k), rows in zip(items, flat):
        n = rows.shape[0]
        sims = all_sims[start : start + n, :k].reshape(*q.shape, k)
        ids = all_ids[start : start + n, :k].reshape(*q.shape, k)
        keys = [entry.keys[i] for i in ids.reshape(-1).tolist()] if has_keys else None
        out.append((sims, ids, keys))
        start += n
    return out


@operation("memory_query")
async def memory_query(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    p = await op.read()
    entry = _memory(op, name)
    memory = entry.memory
    queries = p.vectors("queries", memory.vsa, memory.dim)
    k = p.int("k", 1, minimum=1)
    if len(memory) == 0:
        raise ApiError(409, "memory_empty", f"name: item memory {name!r} is empty; add items before querying", field="name")
    if k > len(memory):
        raise invalid("k", f"{k} is larger than the number of items ({len(memory)})")
    if queries.dtype != memory.dtype:
        queries = Hypervectors(queries.data.to(memory.dtype), memory.vsa, memory.dim)
    op.dimension, op.input_count = memory.dim, _count(queries)
    sims, ids, keys = await op.batched(("memory", name), max(_count(queries), 1), (_on_device(op, queries), k),
                                       functools.partial(_query_batch, op.worker, name))
    fields: dict[str, Any] = {"name": name, "k": k, "similarities": sims, "indices": ids}
    if keys is not None:
        fields["keys"] = keys
    return op.respond(fields)


# ---------------------------------------------------------------------------------------------------------
# /v1/classifiers


def _classifier_info(name: str, entry: ClassifierEntry) -> dict[str, Any]:
    return {"name": name, "vsa": entry.vsa, "dimension": entry.model.dim, "num_classes": entry.model.num_classes,
            "fitted": entry.model.weights is not None, "samples_seen": entry.samples_seen}


@operation("classifier_create")
async def classifier_create(op: Op) -> web.Response:
    p = await op.read()
    name = _name(p.str("name", required=True))
    model, dim = _vsa_and_dim(op, p)
    dim = dim or op.worker.settings.dimension
    num_classes = p.int("num_classes", required=True, minimum=1, maximum=1_000_000)
    temperature = p.float("temperature", 0.05, minimum=1e-9)
    op.dimension = dim
    await op.worker.wait_state()

    def create() -> ClassifierEntry:
        if name in op.worker.classifiers:
            raise ApiError(409, "already_exists", f"name: a classifier named {name!r} exists; delete it first", field="name")
        entry = ClassifierEntry(Centroid(num_classes, dim, device=op.worker.device, temperature=temperature), model.name)
        op.worker.store.save_classifier(name, entry)
        op.worker.classifiers[name] = entry
        return entry

    entry = await op.kernel(create)
    return op.respond(_classifier_info(name, entry), status=201)


@operation("classifier_list")
async def classifier_list(op: Op) -> web.Response:
    await op.worker.wait_state()
    return op.respond({"classifiers": [_classifier_info(n, e) for n, e in sorted(op.worker.classifiers.items())]})


@operation("classifier_get")
async def classifier_get(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    return op.respond(_classifier_info(name, _classifier(op, name)))


@operation("classifier_delete")
async def classifier_delete(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    _classifier(op, name)

    def delete() -> None:
        _classifier(op, name)
        op.worker.store.delete("classifier", name)
        del op.worker.classifiers[name]

    await op.kernel(delete)
    return op.respond({"deleted": name})


def _samples(op: Op, p: Payload, entry: ClassifierEntry) -> Hypervectors:
    x = p.vectors("x", get_model(entry.vsa), entry.model.dim)
    if x.data.dim() == 1:
        x = x.reshape(1)
    if x.data.dim() != 2 or x.shape[0] == 0:
        raise invalid("x", f"must be a non-empty list of hypervectors (batch, D), got batch shape {list(x.shape)}",
                      error="invalid_shape")
    return _on_device(op, x)


@operation("classifier_fit")
async def classifier_fit(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    p = await op.read()
    entry = _classifier(op, name)
    x = _samples(op, p, entry)
    y = p.labels("y")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise invalid("y", f"must hold {x.shape[0]} labels, one per sample of x, got {y.shape[0] if y.dim() else 0}",
                      error="invalid_shape")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= entry.model.num_classes):
        raise invalid("y", f"labels must be in [0, {entry.model.num_classes}), got {int(y.min())}..{int(y.max())}")
    partial = p.bool("partial", False)
    adaptive = p.bool("adaptive", False)
    epochs = p.int("epochs", 1, minimum=1, maximum=1000)
    lr = p.float("lr", 1.0, minimum=0.0)
    op.dimension, op.input_count = entry.model.dim, x.shape[0]

    def fit() -> ClassifierEntry:
        current = _classifier(op, name)
        if partial:
            current.model.partial_fit(x, y, adaptive=adaptive, lr=lr)
            current.samples_seen += x.shape[0]
        else:
            current.model.fit(x, y, epochs=epochs, adaptive=adaptive, lr=lr)
            current.samples_seen = x.shape[0]
        op.worker.store.save_classifier(name, current)
        return current

    entry = await op.kernel(fit)
    return op.respond(_classifier_info(name, entry))


@operation("classifier_predict")
async def classifier_predict(op: Op) -> web.Response:
    await op.worker.wait_state()
    name = op.request.match_info["name"]
    p = await op.read()
    entry = _classifier(op, name)
    if entry.model.weights is None:
        raise ApiError(409, "not_fitted", f"name: classifier {name!r} is not fitted; POST .../fit first", field="name")
    x = _samples(op, p, entry)
    op.dimension, op.input_count = entry.model.dim, x.shape[0]

    def predict() -> tuple[torch.Tensor, torch.Tensor]:
        proba = entry.model.predict_proba(x)
        return proba.argmax(dim=1).cpu(), proba.cpu()

    labels, probabilities = await op.kernel(predict)
    return op.respond({"name": name, "labels": labels, "probabilities": probabilities})


# ---------------------------------------------------------------------------------------------------------
# probes, health, metrics, OpenAPI


async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    if worker.ready:
        return web.json_response({"ready": True})
    if worker.shutting_down:
        reason = "shutting down"
    elif worker.startup_error:
        reason = f"start-up failed: {worker.startup_error}"
    elif not worker.state_loaded.is_set():
        reason = "loading snapshots"
    else:
        reason = "warming up kernels"
    return web.json_response({"ready": False, "reason": reason}, status=503)


async def health(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    result = await asyncio.to_thread(worker.health.check_all)
    return web.json_response(result, status=http_status(result))


async def metrics_route(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    body, content_type = await asyncio.to_thread(worker.metrics.exposition)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi_route(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec(request.app[WORKER].settings))


# ---------------------------------------------------------------------------------------------------------
# the application


ROUTES: list[tuple[str, str, Callable]] = [
    ("POST", "/v1/hypervectors/random", random_route),
    ("POST", "/v1/ops/bind", bind_route),
    ("POST", "/v1/ops/bundle", bundle_route),
    ("POST", "/v1/ops/permute", permute_route),
    ("POST", "/v1/ops/similarity", similarity_route),
    ("POST", "/v1/memories", memory_create),
    ("GET", "/v1/memories", memory_list),
    ("GET", "/v1/memories/{name}", memory_get),
    ("DELETE", "/v1/memories/{name}", memory_delete),
    ("POST", "/v1/memories/{name}/items", memory_add),
    ("POST", "/v1/memories/{name}/query", memory_query),
    ("POST", "/v1/classifiers", classifier_create),
    ("GET", "/v1/classifiers", classifier_list),
    ("GET", "/v1/classifiers/{name}", classifier_get),
    ("DELETE", "/v1/classifiers/{name}", classifier_delete),
    ("POST", "/v1/classifiers/{name}/fit", classifier_fit),
    ("POST", "/v1/classifiers/{name}/predict", classifier_predict),
    ("GET", "/health", health),
    ("GET", "/livez", livez),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics_route),
    ("GET", "/openapi.json", openapi_route),
]


def create_app(settings: WorkerSettings | None = None, *, metrics: MetricsCollector | None = None,
               health: HealthChecker | None = None) -> web.Application:
    """The aiohttp application. Start-up loads the snapshots and warms up in the background (/livez answers
    at once, /readyz once both are done); clean-up (after in-flight requests) writes the final snapshot."""
    settings = settings or WorkerSettings.from_env()
    worker = Worker(settings, metrics=metrics, health=health)
    # client_max_size: aiohttp's own guard; read_payload turns it into the JSON 413.
    app = web.Application(middlewares=[observability_middleware], client_max_size=settings.max_body_bytes)
    app[WORKER] = worker
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    install_faults(app, settings.admin_faults)

    async def on_startup(app: web.Application) -> None:
        worker._start_task = asyncio.get_running_loop().create_task(worker.start())

    async def on_shutdown(app: web.Application) -> None:
        worker.shutting_down = True  # /readyz turns 503 at once

    async def on_cleanup(app: web.Application) -> None:
        await worker.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
