"""Create, list, get and delete of a kind of named entry (item memories, classifiers): one set of handlers for both,
and the two doors to the state every /v1/memories and /v1/classifiers handler goes through:

- `read_state(op)`: waits for the request's X-HDC-Min-State-Version (bounded; 503 not_caught_up) and stamps the
  answer, error or not, with the X-HDC-State-Version it is served from;
- `write_state(op, write, answer)`: commits `write` through the state store with the request's Idempotency-Key
  and answers the committed (or recorded) answer with its X-HDC-State-Version.

A kind differs only in how its create request becomes a write and how an entry is described; the rest (name
checks, 404 and 409 answers, the store as the one way to change the state) is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web

from hd_compute.state import (
    AlreadyExists,
    Committed,
    IdempotencyKeyReused,
    IdempotentRequest,
    NotCaughtUp,
    NotFound,
    StoreUnavailable,
    Transaction,
)

from ..codec import ApiError, off_loop
from ..entries import NamedEntries
from ..operations import Op, entry_name, operation
from ..payload import Payload
from ..state import (
    IDEMPOTENCY_KEY_HEADER,
    IDEMPOTENCY_KEY_RE,
    MIN_STATE_VERSION_HEADER,
    RETRY_AFTER_SECONDS,
    STATE_VERSION_HEADER,
    request_digest,
)
from ..worker import Worker

T = TypeVar("T")

Write = Callable[[Transaction], Committed]


@dataclass(frozen=True)
class NamedKind(Generic[T]):
    """What the shared handlers need to know about one kind of entry."""

    kind: str  # "memory": operations memory_create, memory_list, ...; state store kind
    collection: str  # "/v1/memories"
    list_field: str  # "memories": the list's field in GET <collection>
    entries: Callable[[Worker], NamedEntries[T]]
    # parses a create request named `name`: the store write that creates it, and what create answers about it
    build: Callable[[Op, Payload, str], tuple[Write, dict[str, Any]]]
    info: Callable[[str, T], dict[str, Any]]  # what get and list answer about an entry
    details: Callable[[T], dict[str, Any]] = lambda entry: {}  # what GET <collection>/{name} adds to info


def _header_error(header: str, message: str, *, status: int = 400, error: str = "invalid_header") -> ApiError:
    return ApiError(status, error, f"{header}: {message}", field=header)


def _unavailable(op: Op, error: str, detail: str) -> ApiError:
    op.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ApiError(503, error, detail)


def min_state_version(op: Op) -> int | None:
    """The request's X-HDC-Min-State-Version, or None; 400 naming the header when it is not an integer >= 0."""
    raw = op.request.headers.get(MIN_STATE_VERSION_HEADER)
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise _header_error(MIN_STATE_VERSION_HEADER, f"must be a state version (an integer >= 0), got {raw!r}")
    return int(text)


async def loaded(op: Op) -> None:
    """The worker keeps state (else 400 naming spec.state) and it is loaded (else 503, retryable)."""
    if not op.worker.store.enabled:
        raise ApiError(
            400,
            "state_disabled",
            "spec.state: this worker keeps no item memories or classifiers (HDC_STATE_BACKEND=none, the default of "
            "an HDCWorkload); set spec.state.backend to local (one replica) or postgres (any number)",
            field="spec.state",
        )
    try:
        await op.worker.wait_state()
    except ApiError as exc:
        if exc.status == 503:
            op.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        raise


async def read_state(op: Op) -> None:
    """Before a read: the state is loaded and at least at the request's X-HDC-Min-State-Version (waiting up to
    HDC_READ_WAIT_SECONDS, else 503 not_caught_up); the answer carries the version it is served from."""
    token = min_state_version(op)
    await loaded(op)
    state = op.worker.store
    if token is not None and token > state.applied_version:
        try:
            head = await state.head_version(at_least=token)
        except StoreUnavailable as exc:
            raise _unavailable(op, "state_unavailable", f"state: {exc}") from None
        if token > head:  # a write's answer leaves after its commit, so a token a client was given is <= head
            raise _header_error(
                MIN_STATE_VERSION_HEADER,
                f"state version {token} was never committed (the state store's newest is {head})",
                error="unknown_state_version",
            )
        try:
            await state.wait_for(token)
        except NotCaughtUp as exc:
            op.headers[STATE_VERSION_HEADER] = str(exc.applied)
            raise _unavailable(
                op,
                "not_caught_up",
                f"{MIN_STATE_VERSION_HEADER}: this replica applied state version {exc.applied}, not {token}, "
                f"within {exc.timeout:g} s (HDC_READ_WAIT_SECONDS); retry, here or on another replica",
            ) from None
    op.headers[STATE_VERSION_HEADER] = str(state.applied_version)


async def current(op: Op, entries: NamedEntries[T], name: str) -> T:
    """The entry a write refers to: from this replica's cache, or, when it is not there, after this replica
    applied what the store holds now (it may have been created on another replica a moment ago)."""
    try:
        return entries.get(name)
    except ApiError:
        try:
            await op.worker.store.sync()
        except NotCaughtUp:
            pass
        except StoreUnavailable as exc:
            raise _unavailable(op, "state_unavailable", f"state: {exc}") from None
        return entries.get(name)


def _idempotent_request(op: Op, digest: str) -> IdempotentRequest | None:
    key = op.request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise _header_error(
            IDEMPOTENCY_KEY_HEADER, f"must be 1-128 letters, digits, '.', '_', ':' or '-', got {key[:200]!r}"
        )
    return IdempotentRequest(key, op.name, op.request.path, digest, op.settings.idempotency_ttl_seconds)


def _store_error(op: Op, exc: Exception) -> ApiError:
    if isinstance(exc, NotFound):
        return _entries_of(op, exc.kind).not_found(exc.name)
    if isinstance(exc, AlreadyExists):
        return _entries_of(op, exc.kind).already_exists(exc.name)
    if isinstance(exc, IdempotencyKeyReused):
        return _header_error(IDEMPOTENCY_KEY_HEADER, str(exc), status=422, error="idempotency_key_reused")
    return _unavailable(op, "state_unavailable", f"state: {exc}; the write was not acknowledged, retry it")


def _entries_of(op: Op, kind: str) -> NamedEntries[Any]:
    return op.worker.memories if kind == "memory" else op.worker.classifiers


async def write_state(
    op: Op, write: Write, answer: Callable[[Committed], dict[str, Any]], status: int = 200
) -> web.Response:
    """Commits `write` through the state store and answers `answer(committed)` with `status` and the committed
    X-HDC-State-Version. With an Idempotency-Key the answer is recorded in the same transaction, and a retry of
    the same request answers the recorded answer without writing again."""
    await loaded(op)
    payload = op.payload
    size = 0 if payload is None else sum(a.nbytes for a in payload.arrays.values())
    query = op.request.query_string
    digest = await off_loop(size, request_digest, op.name, op.request.path, query, payload)
    request = _idempotent_request(op, digest)

    def answered(committed: Committed) -> tuple[int, bytes]:
        return status, orjson.dumps(answer(committed))

    try:
        result = await op.worker.store.write(request, write, answered)
    except (NotFound, AlreadyExists, IdempotencyKeyReused, StoreUnavailable) as exc:
        raise _store_error(op, exc) from None
    op.headers[STATE_VERSION_HEADER] = str(result.version)
    if result.replayed:
        op.headers["Idempotent-Replayed"] = "true"
    return await op.respond(orjson.loads(result.body), status=result.status)


def add_named_routes(routes: web.RouteTableDef, named: NamedKind[T]) -> None:
    """Adds POST/GET <collection> and GET/DELETE <collection>/{name} for `named` to `routes`."""

    @routes.post(named.collection)
    @operation(f"{named.kind}_create")
    async def create(op: Op) -> web.Response:
        p = await op.read()
        name = entry_name(p.text("name", required=True))
        write, info = named.build(op, p, name)
        return await write_state(op, write, lambda committed: info, status=201)

    @routes.get(named.collection, allow_head=False)
    @operation(f"{named.kind}_list")
    async def list_entries(op: Op) -> web.Response:
        await read_state(op)
        listed = [named.info(name, entry) for name, entry in named.entries(op.worker).sorted_items()]
        return await op.respond({named.list_field: listed})

    @routes.get(named.collection + "/{name}", allow_head=False)
    @operation(f"{named.kind}_get")
    async def get(op: Op) -> web.Response:
        await read_state(op)
        name = op.path_name()
        entry = named.entries(op.worker).get(name)
        return await op.respond({**named.info(name, entry), **named.details(entry)})

    @routes.delete(named.collection + "/{name}")
    @operation(f"{named.kind}_delete")
    async def delete(op: Op) -> web.Response:
        name = op.path_name()
        return await write_state(
            op, lambda tx: tx.delete(named.kind, name), lambda committed: {"deleted": committed.name}
        )
