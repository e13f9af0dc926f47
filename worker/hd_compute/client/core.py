"""What the synchronous and the asyncio client share: the operations (one method each, defined once in
Operations), the headers of a call, the read-your-writes version, and the retry decision. The two clients differ
only in how they send a request and how they wait (sync.py, aio.py).

Invariants:
- Retries: a 502, 503 (but from /health and /readyz, where it is the answer) or 504, or a connection refused or
  reset, is retried up to RetryPolicy.attempts in all, after a full-jitter exponential backoff that is at least
  the answer's Retry-After. A call that may have reached the worker (an answer, a reset) is retried only when
  repeating it cannot apply it twice: reads, and writes that carry an Idempotency-Key (every write does, unless
  the client was made with idempotency_keys=False). A refused connection never reached the worker, so any call
  is retried. A timeout is never retried (the caller's time is spent).
- One call, one correlation id (the caller's or a new one) and one idempotency key, the same on every attempt.
- Read-your-writes: the client remembers the highest X-HDC-State-Version of any answer and sends it as
  X-HDC-Min-State-Version on the operations that read memories or classifiers; before it has seen one (a worker
  without shared state) it sends nothing.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from hd_compute.hypervectors import Hypervectors

from . import wire
from .errors import ClientError, WorkerError, WorkerUnreachable, error_from_answer
from .results import Added, ClassifierInfo, Health, MemoryInfo, Prediction, QueryResult, Readiness, Similarities

try:  # W3C trace context from the caller's OpenTelemetry context, where OpenTelemetry is installed
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - opentelemetry-api is a dependency of the worker
    _propagate = None

T = TypeVar("T")
# What an operation returns: the result from Client, an awaitable of it from AsyncClient.
Result = Union[T, Awaitable[T]]

CORRELATION_HEADER = "X-Correlation-ID"
IDEMPOTENCY_HEADER = "Idempotency-Key"
STATE_VERSION_HEADER = "X-HDC-State-Version"
MIN_STATE_VERSION_HEADER = "X-HDC-Min-State-Version"
RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Timeout:
    """Seconds to open a connection, and for a whole attempt (connect, send, answer); None: no limit."""

    connect: float | None = 5.0
    total: float | None = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """attempts: tries in all (1: no retry); the n-th retry waits a random time in [0, min(max_backoff,
    backoff * 2**n)] (full jitter), or the answer's Retry-After when longer; a Retry-After over max_retry_after
    seconds is not waited for (the error is raised)."""

    attempts: int = 4
    backoff: float = 0.05
    max_backoff: float = 2.0
    max_retry_after: float = 30.0


@dataclass(frozen=True)
class Retry:
    """The outcome of an attempt that is to be tried again after `delay` seconds."""

    delay: float


class ConnectionFailure(Exception):
    """A transport's attempt that got no answer: `sent` False when the request cannot have reached the worker
    (connection refused), True when it may have (a reset)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _Token:
    """The bearer token: given, or read from a file, again whenever the file changes (a projected ServiceAccount
    token is replaced in place before it expires)."""

    def __init__(self, token: str | None, token_file: str | os.PathLike[str] | None) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        self._token = token
        self._file = os.fspath(token_file) if token_file is not None else None
        self._seen: tuple[int, int, int] | None = None

    def value(self) -> str | None:
        if self._file is None:
            return self._token
        stat = os.stat(self._file)
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            with open(self._file, encoding="utf-8") as f:
                self._token = f.read().strip()
            self._seen = seen
        return self._token


class Operations:
    """The worker API, one method per operation (routes.ROUTES); the transport is the subclass's `_call`.

    Every method takes, besides its fields, `timeout` (seconds, or a Timeout) and `correlation_id`; the writes
    also `idempotency_key` (default: a new uuid4 per call, the same on its retries)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: Timeout | float = Timeout(),
        retry: RetryPolicy = RetryPolicy(),
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        read_your_writes: bool = True,
        idempotency_keys: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = _timeout(timeout, Timeout())
        self.retry = retry
        self.read_your_writes = read_your_writes
        self.idempotency_keys = idempotency_keys
        self.headers = dict(headers or {})
        self._token = _Token(token, token_file)
        self._state_version: int | None = None
        self._version_lock = threading.Lock()
        self._random = random.Random()

    # -- what both transports share -------------------------------------------------------------------------------
    @property
    def state_version(self) -> int | None:
        """The highest X-HDC-State-Version seen so far (None: the worker sends none)."""
        return self._state_version

    def _call(self, request: wire.Request[T], **options: Any) -> Result[T]:
        """Sends `request` (retrying it by the rules above) and decodes its answer: the transport's part."""
        raise NotImplementedError

    def _prepare(
        self,
        request: wire.Request[Any],
        *,
        timeout: Timeout | float | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, str], Timeout]:
        """The headers of one call (the same on each of its attempts) and its timeout."""
        if idempotency_key is not None and not request.route.write:
            raise TypeError(f"{request.operation} is no write: it takes no idempotency_key")
        headers = dict(self.headers)
        headers["Accept"] = request.accept
        if request.content_type is not None:
            headers["Content-Type"] = request.content_type
        headers[CORRELATION_HEADER] = correlation_id or str(uuid.uuid4())
        if request.route.write and (idempotency_key is not None or self.idempotency_keys):
            headers[IDEMPOTENCY_HEADER] = idempotency_key or str(uuid.uuid4())
        if request.route.reads_state and self.read_your_writes and self._state_version is not None:
            headers[MIN_STATE_VERSION_HEADER] = str(self._state_version)
        token = self._token.value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if _propagate is not None:
            _propagate.inject(headers)
        return headers, (self.timeout if timeout is None else _timeout(timeout, self.timeout))

    def _outcome(
        self,
        request: wire.Request[T],
        headers: dict[str, str],
        attempt: int,
        answer: wire.Answer | ConnectionFailure,
    ) -> T | Retry:
        """The call's result after attempt number `attempt` (0 the first), a Retry, or the error raised (see the
        module's docstring for the rules)."""
        repeatable = not request.route.write or IDEMPOTENCY_HEADER in headers
        last = attempt + 1 >= self.retry.attempts
        if isinstance(answer, ConnectionFailure):
            failure = answer
            if last or (failure.sent and not repeatable):
                raise WorkerUnreachable(f"{request.route.method} {request.target}: {failure}") from failure
            return Retry(self._backoff(attempt))
        self._observe_version(answer)
        if answer.status < 400 or (answer.status == 503 and request.route.answers_503):
            return request.decode(answer)
        error = error_from_answer(answer.status, answer.body, answer.headers.get(CORRELATION_HEADER))
        if last or answer.status not in RETRYABLE_STATUSES or not repeatable:
            raise error
        wait = _retry_after(answer.headers.get("Retry-After"))
        if wait is not None and wait > self.retry.max_retry_after:
            raise error
        return Retry(max(wait or 0.0, self._backoff(attempt)))

    def _backoff(self, attempt: int) -> float:
        return self._random.uniform(0, min(self.retry.max_backoff, self.retry.backoff * 2**attempt))

    def _observe_version(self, answer: wire.Answer) -> None:
        raw = answer.headers.get(STATE_VERSION_HEADER)
        if raw is None:
            return
        try:
            version = int(raw)
        except ValueError:
            return
        with self._version_lock:
            if self._state_version is None or version > self._state_version:
                self._state_version = version

    # -- hypervectors and operations --------------------------------------------------------------------------------
    def random(
        self,
        num: int | list[int],
        *,
        dimension: int | None = None,
        vsa: str | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> Result[Hypervectors]:
        """`num` random hypervectors (or a batch shape); the same seed gives the same vectors on every device."""
        values = {"num": num, "dimension": dimension, "vsa": vsa, "seed": seed}
        return self._call(wire.request("random", values, wire.hypervectors, binary_answer=True), **options)

    def bind(
        self,
        a: Any,
        b: Any,
        *,
        vsa: str | None = None,
        dimension: int | None = None,
        unbind: bool | None = None,
        **options: Any,
    ) -> Result[Hypervectors]:
        """a bound with b (batch shapes broadcast); unbind=True unbinds a by b."""
        values = {"a": a, "b": b, "vsa": vsa, "dimension": dimension, "unbind": unbind}
        return self._call(wire.request("bind", values, wire.hypervectors, binary_answer=True), **options)

    def bundle(
        self, vectors: Any, *, vsa: str | None = None, dimension: int | None = None, **options: Any
    ) -> Result[Hypervectors]:
        """The multiset of `vectors` (..., n, D) over their last batch axis: (..., D)."""
        values = {"vectors": vectors, "vsa": vsa, "dimension": dimension}
        return self._call(wire.request("bundle", values, wire.hypervectors, binary_answer=True), **options)

    def permute(
        self,
        vectors: Any,
        *,
        shifts: int | None = None,
        vsa: str | None = None,
        dimension: int | None = None,
        **options: Any,
    ) -> Result[Hypervectors]:
        values = {"vectors": vectors, "vsa": vsa, "dimension": dimension, "shifts": shifts}
        return self._call(wire.request("permute", values, wire.hypervectors, binary_answer=True), **options)

    def similarity(
        self,
        queries: Any,
        others: Any,
        *,
        metric: str | None = None,
        vsa: str | None = None,
        dimension: int | None = None,
        **options: Any,
    ) -> Result[Similarities]:
        """(..., N) similarities of each query with each of `others` (cosine unless `metric`: dot, hamming)."""
        values = {"queries": queries, "others": others, "vsa": vsa, "dimension": dimension, "metric": metric}
        numbers = wire.rows(queries) * wire.rows(others)
        request = wire.request("similarity", values, wire.similarities, binary_answer=wire.wants_binary(numbers))
        return self._call(request, **options)

    # -- item memories ----------------------------------------------------------------------------------------------
    def memory_create(
        self, name: str, *, dimension: int | None = None, vsa: str | None = None, **options: Any
    ) -> Result[MemoryInfo]:
        values = {"name": name, "dimension": dimension, "vsa": vsa}
        return self._call(wire.request("memory_create", values, wire.memory_info), **options)

    def memory_list(self, **options: Any) -> Result[list[MemoryInfo]]:
        return self._call(wire.request("memory_list", {}, wire.memory_list), **options)

    def memory_get(self, name: str, **options: Any) -> Result[MemoryInfo]:
        return self._call(wire.request("memory_get", {}, wire.memory_info, name=name), **options)

    def memory_delete(self, name: str, **options: Any) -> Result[str]:
        return self._call(wire.request("memory_delete", {}, wire.deleted, name=name), **options)

    def memory_add(self, name: str, vectors: Any, *, keys: list[str] | None = None, **options: Any) -> Result[Added]:
        """Adds one hypervector or a batch (N, D), with one key per item if given; ids in insertion order."""
        values = {"vectors": vectors, "keys": keys}
        binary = wire.wants_binary(wire.rows(vectors))
        return self._call(wire.request("memory_add", values, wire.added, name=name, binary_answer=binary), **options)

    def memory_query(self, name: str, queries: Any, *, k: int | None = None, **options: Any) -> Result[QueryResult]:
        """The k (default 1) most cosine-similar items of each query, best first."""
        values = {"queries": queries, "k": k}
        binary = wire.wants_binary(wire.rows(queries) * 2 * (k or 1))
        request = wire.request("memory_query", values, wire.query_result, name=name, binary_answer=binary)
        return self._call(request, **options)

    # -- classifiers ------------------------------------------------------------------------------------------------
    def classifier_create(
        self,
        name: str,
        num_classes: int,
        *,
        dimension: int | None = None,
        vsa: str | None = None,
        temperature: float | None = None,
        **options: Any,
    ) -> Result[ClassifierInfo]:
        values = {
            "name": name,
            "num_classes": num_classes,
            "dimension": dimension,
            "vsa": vsa,
            "temperature": temperature,
        }
        return self._call(wire.request("classifier_create", values, wire.classifier_info), **options)

    def classifier_list(self, **options: Any) -> Result[list[ClassifierInfo]]:
        return self._call(wire.request("classifier_list", {}, wire.classifier_list), **options)

    def classifier_get(self, name: str, **options: Any) -> Result[ClassifierInfo]:
        return self._call(wire.request("classifier_get", {}, wire.classifier_info, name=name), **options)

    def classifier_delete(self, name: str, **options: Any) -> Result[str]:
        return self._call(wire.request("classifier_delete", {}, wire.deleted, name=name), **options)

    def classifier_fit(
        self,
        name: str,
        x: Any,
        y: Any,
        *,
        partial: bool | None = None,
        adaptive: bool | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        **options: Any,
    ) -> Result[ClassifierInfo]:
        """Fits on samples x (N, D) with integer labels y (N,); partial=True adds to the prototypes instead."""
        values = {"x": x, "y": y, "partial": partial, "adaptive": adaptive, "epochs": epochs, "lr": lr}
        return self._call(wire.request("classifier_fit", values, wire.classifier_info, name=name), **options)

    def classifier_predict(self, name: str, x: Any, **options: Any) -> Result[Prediction]:
        binary = wire.wants_binary(wire.rows(x))
        request = wire.request("classifier_predict", {"x": x}, wire.prediction, name=name, binary_answer=binary)
        return self._call(request, **options)

    # -- probes and documents ---------------------------------------------------------------------------------------
    def health(self, **options: Any) -> Result[Health]:
        return self._call(wire.request("health", {}, wire.health), **options)

    def live(self, **options: Any) -> Result[bool]:
        return self._call(wire.request("livez", {}, wire.alive), **options)

    def ready(self, **options: Any) -> Result[Readiness]:
        return self._call(wire.request("readyz", {}, wire.readiness), **options)

    def metrics(self, **options: Any) -> Result[str]:
        """The Prometheus exposition text."""
        return self._call(wire.request("metrics", {}, wire.text), **options)

    def openapi(self, **options: Any) -> Result[dict[str, Any]]:
        return self._call(wire.request("openapi", {}, wire.document), **options)


def _timeout(value: Timeout | float, default: Timeout) -> Timeout:
    if isinstance(value, Timeout):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Timeout(connect=default.connect, total=float(value))
    raise TypeError(f"timeout must be a Timeout or a number of seconds, got {type(value).__name__}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


__all__ = [
    "ClientError",
    "ConnectionFailure",
    "Operations",
    "Retry",
    "RetryPolicy",
    "Timeout",
    "WorkerError",
]
