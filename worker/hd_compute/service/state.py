"""The worker's state: the state store of docs/state.md opened from the settings, and the follower whose cache
every read serves. One persistence path: PostgreSQL (HDC_STATE_DATABASE_URL, shared by every replica) or else SQLite
in HDC_STATE_DIR (one process); the snapshot files earlier workers wrote there are imported once, into an empty
store, and never written again.

Invariants:
- A write is acknowledged only after its transaction committed (`SharedState.write`); the cache changes only by
  the follower applying committed entries, on the kernel thread (the cache's one writer, where searches and
  predictions read it), so a write whose commit failed leaves no trace in any replica.
- A write's answer leaves once this replica applied it (bounded by HDC_READ_WAIT_SECONDS), so a client that
  reads from the replica it wrote to sees its write without a token.
- A keyed write (Idempotency-Key) records its answer in its own transaction; a retry anywhere gets that answer.
- Ready only after the follower caught up with the store as it stood at start, and while the store answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from hd_compute.monitoring.logging import get_logger
from hd_compute.monitoring.metrics import StateMetrics
from hd_compute.state import (
    Answered,
    CachedClassifier,
    CachedMemory,
    Committed,
    Follower,
    IdempotentRequest,
    ImportResult,
    NotCaughtUp,
    StateStore,
    StoreUnavailable,
    Transaction,
    import_snapshot_files,
)

from .batching import KernelRunner
from .config import WorkerSettings

if TYPE_CHECKING:  # payload.py imports openapi.py, which imports NAME_RE from here
    from .payload import Payload

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STATE_VERSION_HEADER = "X-HDC-State-Version"  # on every write and read answer: the state version it is from
MIN_STATE_VERSION_HEADER = "X-HDC-Min-State-Version"  # a read's token: serve from at least this version
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
RETRY_AFTER_SECONDS = 1  # what a 503 of the state (not caught up, store unavailable) asks a client to wait
OPEN_RETRY_SECONDS = 1.0  # between attempts to reach the store at start
STORE_STALE_SECONDS = 5.0  # the follower has not read the log this long: the store counts as unreachable
EXPIRE_EVERY_SECONDS = 60.0  # how often a worker deletes expired idempotency keys


def log():  # noqa: ANN201 - structlog's bound logger
    return get_logger("hd_compute.service")


def check_name(name: Any, field_name: str = "name") -> str:
    """1-128 letters, digits, '_', '.', '-', starting with a letter or digit (names appear in URL paths)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{field_name} must be 1-128 letters, digits, '_', '.' or '-' starting with a letter or digit, got {name!r}"
        )
    return name


def request_digest(operation: str, path: str, query: str, payload: Payload | None) -> str:
    """sha256 (hex) of a write request as decoded: the operation, path and query string, the body's fields (JSON,
    keys sorted: the same object in another spacing or order is the same request) and arrays (dtype, shape,
    bytes). What an idempotency key is bound to."""
    digest = hashlib.sha256()
    for part in (operation, path, query):
        digest.update(part.encode() + b"\0")
    if payload is not None:
        digest.update(orjson.dumps(payload.fields, option=orjson.OPT_SORT_KEYS) + b"\0")
        for name in sorted(payload.arrays):
            array = np.ascontiguousarray(payload.arrays[name])
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            digest.update(array.data)
    return digest.hexdigest()


class SharedState:
    """The state store and its follower in one worker (opened by `start`, closed by `stop`)."""

    def __init__(self, settings: WorkerSettings, device: Any, metrics: StateMetrics) -> None:
        self.settings = settings
        self.device = device
        self.metrics = metrics
        self.state_dir = os.path.abspath(settings.state_dir)
        self.backend = {"postgres": "postgresql", "local": "sqlite", "none": "none"}[settings.state_backend]
        self.state_store: StateStore | None = None
        self.follower: Follower | None = None
        self.caught_up = False  # the follower applied the store as it stood at start
        self.imported: ImportResult | None = None
        self.last_error: str | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """False for HDC_STATE_BACKEND=none: no store, and no memories or classifiers."""
        return self.backend != "none"

    # -- start and stop -------------------------------------------------------------------------------------------
    async def start(self, runner: KernelRunner) -> None:
        """Opens the store (retrying while it is unreachable), imports old snapshot files into an empty store,
        catches up on the kernel thread, then follows the log in the background. StateDirLocked and
        SchemaMismatch propagate: this worker must not serve that store."""
        if not self.enabled:
            self.caught_up = True
            return
        store: StateStore = await self._retrying("open", lambda: asyncio.to_thread(self._open))
        follower = Follower(store, self.device)
        self.follower = follower
        await self._retrying("catch_up", lambda: runner.run(follower.catch_up))
        loop = asyncio.get_running_loop()

        def apply_in(step: Callable[[], None]) -> None:  # the follower's thread: run the step on the kernel thread
            asyncio.run_coroutine_threadsafe(runner.run(step), loop).result()

        follower.start(apply_in=apply_in)
        self.caught_up = True
        self._expiry_task = loop.create_task(self._expire_keys())

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """await call(), again every OPEN_RETRY_SECONDS while the store is unavailable."""
        while True:
            try:
                return await call()
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                self.metrics.count_store_error("unavailable")
                log().warning("state_store_unavailable", during=what, error=str(exc))
                await asyncio.sleep(OPEN_RETRY_SECONDS)

    def _open(self) -> StateStore:
        store = StateStore.open(database_url=self.settings.database_url, state_dir=self.state_dir)
        try:
            if store.head_version() == 0:
                self.imported = import_snapshot_files(store, self.state_dir)
        except BaseException:
            store.close()
            raise
        self.state_store = store
        return store

    async def stop(self) -> None:
        """Stops following (in a thread: the follower's thread may be waiting for the kernel thread, which needs
        the event loop) and closes the store."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            await asyncio.gather(self._expiry_task, return_exceptions=True)
        if self.follower is not None:
            await asyncio.to_thread(self.follower.stop)
        if self.state_store is not None:
            await asyncio.to_thread(self.state_store.close)

    async def _expire_keys(self) -> None:
        """Deletes expired idempotency keys now and then (a lookup ignores them anyway: expiry does not depend on
        this running)."""
        while True:
            await asyncio.sleep(EXPIRE_EVERY_SECONDS)
            if self.state_store is None:
                continue
            try:
                await asyncio.to_thread(self.state_store.expire_idempotency_keys)
            except StoreUnavailable as exc:
                self.metrics.count_store_error("unavailable")
                log().warning("idempotency_expiry_failed", error=str(exc))

    # -- readiness and status -------------------------------------------------------------------------------------
    def reachable(self) -> bool:
        """Whether the follower read the log lately (it polls it every second while it can)."""
        if self.follower is None:
            return False
        since = self.follower.status().seconds_since_check
        return since is not None and since < STORE_STALE_SECONDS

    def not_ready_reason(self) -> str | None:
        if not self.enabled:
            return None
        if not self.caught_up:
            waiting = f" ({self.last_error})" if self.last_error else ""
            return f"catching up with the state store{waiting}"
        if not self.reachable():
            return f"the state store is unreachable ({self.follower_error() or 'no answer'})"
        return None

    def follower_error(self) -> str | None:
        return None if self.follower is None else self.follower.status().last_error

    @property
    def applied_version(self) -> int:
        return 0 if self.follower is None else self.follower.applied_version

    def status(self) -> dict[str, Any]:
        """What /health reports about the state (and what the gauges show)."""
        out: dict[str, Any] = {"backend": self.backend, "caught_up": self.caught_up, "reachable": self.reachable()}
        if self.follower is not None:
            status = self.follower.status()
            out.update(
                version=status.applied_version,
                head_version=status.head_version,
                lag_versions=status.lag_versions,
                lag_seconds=round(status.lag_seconds, 3),
            )
            self.metrics.set_follower(
                status.applied_version,
                status.lag_versions,
                status.lag_seconds,
                out["reachable"],
                status.last_catch_up_seconds,
            )
        return out

    # -- reads ----------------------------------------------------------------------------------------------------
    def memory(self, name: str) -> CachedMemory:
        assert self.follower is not None, "read before the state was loaded"
        return self.follower.memory(name)

    def memories(self) -> dict[str, CachedMemory]:
        return {} if self.follower is None else self.follower.memories()

    def classifier(self, name: str) -> CachedClassifier:
        assert self.follower is not None, "read before the state was loaded"
        return self.follower.classifier(name)

    def classifiers(self) -> dict[str, CachedClassifier]:
        return {} if self.follower is None else self.follower.classifiers()

    async def wait_for(self, version: int) -> int:
        """Returns once this replica applied `version` (the applied version); NotCaughtUp after
        HDC_READ_WAIT_SECONDS."""
        assert self.follower is not None
        if self.follower.applied_version >= version:
            return self.follower.applied_version
        started = time.perf_counter()
        try:
            applied = await self.follower.wait_for_async(version, self.settings.read_wait_seconds)
        except NotCaughtUp:
            self.metrics.count_store_error("not_caught_up")
            raise
        finally:
            self.metrics.observe_catch_up_wait(time.perf_counter() - started)
        return applied

    async def head_version(self, at_least: int = 0) -> int:
        """The newest committed version: what this replica has heard of when that is already `at_least`, else
        asked from the store (which raises StoreUnavailable when it does not answer)."""
        assert self.follower is not None and self.state_store is not None
        heard = self.follower.status().head_version
        if heard >= at_least:
            return heard
        return await asyncio.to_thread(self.state_store.head_version)

    async def sync(self) -> None:
        """Waits until this replica applied what the store holds now (bounded): for a write that names an
        object this replica has not seen yet, which may have been created on another replica a moment ago."""
        assert self.state_store is not None
        head = await asyncio.to_thread(self.state_store.head_version)
        await self.wait_for(head)

    # -- writes ---------------------------------------------------------------------------------------------------
    async def write(
        self,
        request: IdempotentRequest | None,
        write: Callable[[Transaction], Committed],
        answer: Callable[[Committed], tuple[int, bytes]],
    ) -> Answered:
        """Commits `write` (in a thread: it waits for the database), with its answer under the request's key, then
        waits (bounded) until this replica applied it. Raises the store's errors (NotFound, AlreadyExists,
        IdempotencyKeyReused, StoreUnavailable, ValueError)."""
        assert self.state_store is not None
        started = time.perf_counter()
        try:
            answered = await asyncio.to_thread(self.state_store.write_once, request, write, answer)
        except StoreUnavailable:
            self.metrics.count_store_error("unavailable")
            raise
        self.metrics.observe_commit(time.perf_counter() - started)
        try:
            await self.wait_for(answered.version)
        except NotCaughtUp as exc:  # committed all the same: the answer's version lets the client wait for it
            log().warning("state_write_not_applied_in_time", version=answered.version, error=str(exc))
        return answered
