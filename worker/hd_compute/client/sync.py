"""Client: the worker API, synchronous, over a urllib3 connection pool (thread-safe: one Client can serve many
threads, each request on its own pooled keep-alive connection)."""

from __future__ import annotations

import time
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from . import wire
from .core import ConnectionFailure, Operations, Retry, Timeout
from .errors import WorkerTimeout

T = TypeVar("T")


class Client(Operations):
    """The worker API over HTTP, synchronous. `url` is the worker's (or its Service's) base URL; see Operations
    for the options. Use as a context manager, or close() it, to close its connections."""

    def __init__(self, url: str, *, pool_size: int = 10, **options: Any) -> None:
        super().__init__(url, **options)
        parts = urlsplit(self.url)
        self._prefix = parts.path  # a base path in front of the API (a proxy's route), "" for a worker
        self._pool = urllib3.connection_from_url(self.url, maxsize=pool_size, block=False)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def _call(self, request: wire.Request[T], **options: Any) -> T:
        headers, limits = self._prepare(request, **options)
        attempt = 0
        while isinstance(
            outcome := self._outcome(request, headers, attempt, self._send(request, headers, limits)), Retry
        ):
            time.sleep(outcome.delay)
            attempt += 1
        return outcome

    def _send(
        self, request: wire.Request[Any], headers: dict[str, str], limits: Timeout
    ) -> wire.Answer | ConnectionFailure:
        """One attempt: the answer, or the failure to get one (a timeout is raised: it is never retried)."""
        try:
            response = self._pool.urlopen(
                request.route.method,
                self._prefix + request.target,
                body=request.body,
                headers=headers,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=limits.connect, total=limits.total),
                preload_content=True,
            )
        except NewConnectionError as exc:  # refused, unreachable (a subclass of ConnectTimeoutError: first)
            return ConnectionFailure(f"{type(exc).__name__}: {exc}", sent=False)
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise WorkerTimeout(f"{request.route.method} {request.target}: {exc}") from exc
        except ProtocolError as exc:  # reset, or closed before the answer
            return ConnectionFailure(f"{type(exc).__name__}: {exc}", sent=True)
        return wire.Answer(response.status, response.headers, response.data)
