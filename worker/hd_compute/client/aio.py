"""AsyncClient: the worker API for asyncio, over one aiohttp session (a pool of keep-alive connections), made
on the first call inside the running event loop and closed by close() or `async with`."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import aiohttp

from . import wire
from .core import ConnectionFailure, Operations, Retry, Timeout
from .errors import WorkerTimeout

T = TypeVar("T")


class AsyncClient(Operations):
    """The worker API over HTTP for asyncio: every operation is a coroutine. `pool_size`: the most connections
    open at once (more concurrent calls wait for one). See Operations for the other options."""

    def __init__(self, url: str, *, pool_size: int = 100, **options: Any) -> None:
        super().__init__(url, **options)
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeout, aiohttp.ClientTimeout] = {}

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.pool_size))
        return self._session

    async def _call(self, request: wire.Request[T], **options: Any) -> T:
        headers, limits = self._prepare(request, **options)
        attempt = 0
        while isinstance(
            outcome := self._outcome(request, headers, attempt, await self._send(request, headers, limits)), Retry
        ):
            await asyncio.sleep(outcome.delay)
            attempt += 1
        return outcome

    async def _send(
        self, request: wire.Request[Any], headers: dict[str, str], limits: Timeout
    ) -> wire.Answer | ConnectionFailure:
        """One attempt: the answer, or the failure to get one (a timeout is raised: it is never retried)."""
        client_timeout = self._timeouts.get(limits)
        if client_timeout is None:
            client_timeout = self._timeouts[limits] = aiohttp.ClientTimeout(
                total=limits.total, sock_connect=limits.connect
            )
        try:
            async with self._session_now().request(
                request.route.method,
                self.url + request.target,
                data=request.body,
                headers=headers,
                timeout=client_timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return wire.Answer(response.status, response.headers, body)
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable: nothing was sent
            if isinstance(exc.os_error, TimeoutError):
                raise WorkerTimeout(f"{request.route.method} {request.target}: {exc}") from exc
            return ConnectionFailure(f"{type(exc).__name__}: {exc}", sent=False)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            return ConnectionFailure(f"{type(exc).__name__}: {exc}", sent=True)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise WorkerTimeout(f"{request.route.method} {request.target}: no answer within {limits}") from exc
