"""What the client raises: one class per kind of failure, so a caller catches what it can handle.

An HTTP error answer becomes a WorkerError subclass chosen by its status, carrying the worker's JSON error body
(`error`, `detail`, `correlation_id`; `field` when the body names it, else the field `detail` starts with, as the
worker's details do). A request that got no answer is WorkerUnreachable (connection refused or reset, after the
retries) or WorkerTimeout (the call's timeout passed; never retried, the caller's time is spent).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# A detail starts with the name of the field at fault ("queries: has dimension 128 ..."): a name, then ": ".
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.-]*): ")
MAX_DETAIL_CHARS = 500  # of a non-JSON error body (a proxy's HTML page, say)


class ClientError(Exception):
    """Everything the worker client raises."""


class WorkerUnreachable(ClientError, ConnectionError):
    """No answer: the connection was refused or reset (after the client's retries)."""


class WorkerTimeout(ClientError, TimeoutError):
    """No answer within the call's timeout (connect or total)."""


class ProtocolError(ClientError):
    """An answer the client cannot read (not the worker's format)."""


class WorkerError(ClientError):
    """An HTTP error answer of the worker: its status and its JSON error body's fields."""

    def __init__(
        self, status: int, error: str, detail: str, correlation_id: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(
            f"HTTP {status} {error}: {detail}" + (f" (correlation id {correlation_id})" * bool(correlation_id))
        )
        self.status = status
        self.error = error
        self.detail = detail
        self.correlation_id = correlation_id
        self.field = field


class BadRequest(WorkerError):
    """400 or 422: the request is wrong (a field named in `field`/`detail`); sending it again will not help."""


class NotFound(WorkerError):
    """404: no memory or classifier of that name (or no such route)."""


class Conflict(WorkerError):
    """409: already exists, an empty memory, a classifier not fitted."""


class PayloadTooLarge(WorkerError):
    """413: the body (or what its arrays unpack to) is over the worker's limit; send smaller batches."""


class UnsupportedMediaType(WorkerError):
    """415: a Content-Type or Content-Encoding the operation does not take."""


class ServerError(WorkerError):
    """5xx: the worker (or a proxy in front of it) failed."""


class Unavailable(ServerError):
    """503: a transient shortage (memory, not ready, a replica not caught up); retried before it is raised."""


_BY_STATUS: dict[int, type[WorkerError]] = {
    400: BadRequest,
    422: BadRequest,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: Unavailable,
}


def error_class(status: int) -> type[WorkerError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else WorkerError


def error_from_answer(status: int, body: bytes, correlation_id: str | None) -> WorkerError:
    """The WorkerError of an error answer; a body that is not the worker's JSON error keeps its text as detail."""
    fields: dict[str, Any] = {}
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        fields = parsed
    error = fields.get("error") or "http_error"
    detail = fields.get("detail") if isinstance(fields.get("detail"), str) else None
    if detail is None:
        detail = body.decode("utf-8", "replace")[:MAX_DETAIL_CHARS] if body else f"HTTP {status}"
    field = fields.get("field")
    if not isinstance(field, str):
        match = _FIELD_PREFIX.match(detail)
        field = match.group(1) if match else None
    cid = fields.get("correlation_id") if isinstance(fields.get("correlation_id"), str) else correlation_id
    return error_class(status)(status, error, detail, cid, field)
