"""`Follower`: this process's in-memory copy (CPU or GPU) of every memory and classifier, a cache of the log.

    follower = Follower(store, device="cuda")
    follower.catch_up()                 # at start: applied >= the head as it stood (readiness)
    follower.start(apply_in=run_on_kernel_thread)   # then follow: LISTEN wake-ups and a periodic poll
    follower.memory("animals").memory.search(...)
    follower.wait_for(written.version, timeout=5.0)  # read-your-writes; NotCaughtUp when it takes longer

Invariants:
- The cache changes only by applying committed entries in version order (`StateCache`); catching up twice, or
  from two threads, applies each version once.
- Applying is separate from fetching: the database is read in the calling (or background) thread, and the cache
  is changed by `apply_in(step)`, the caller's way to run a step where the cache's readers run (the service's
  kernel thread), so a reader never sees a half-applied entry. Without `apply_in` the step runs in place.
- Correctness never depends on a notification: the background thread polls every `poll_interval` seconds
  whatever happens to the LISTEN connection; a notification or a local commit only wakes it sooner.
- While the store is unreachable the cache keeps serving what it has; `status()` shows the lag and errors.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hd_compute.device import resolve_device

from .cache import CachedClassifier, CachedMemory, Diverged, StateCache
from .errors import NotCaughtUp, NotFound, StoreUnavailable
from .reader import LogSlice
from .schema import Kind
from .store import StateStore

if TYPE_CHECKING:
    from .wakeup import Listener

DEFAULT_POLL_SECONDS = 1.0  # the longest a follower goes without looking at the log
DEFAULT_LISTEN_RETRY_SECONDS = 1.0  # pause before reconnecting a dropped LISTEN connection
READ_ENTRIES = 64  # log entries read per round trip while catching up
READ_BYTES = 64 << 20  # ... unless their payloads reach this many bytes first
WAIT_RETRY_SECONDS = 0.005  # wait_for without a background thread: pause between looks at the log

Step = Callable[[], None]


@dataclass(frozen=True)
class FollowerStatus:
    """What a follower knows about itself, for metrics and readiness."""

    applied_version: int  # every committed entry <= this is in the cache
    head_version: int  # the newest committed version this follower has heard of
    lag_versions: int  # head_version - applied_version
    lag_seconds: float  # how long it has known of a version it has not applied yet (0 when caught up)
    seconds_since_check: float | None  # since the last successful read of the log (None: never)
    last_catch_up_seconds: float  # duration of the last catch_up()
    store_errors: int  # reads of the log that failed (StoreUnavailable)
    reloads: int  # loads of the compacted state: the first catch-up, then after a gap in the log or a divergence
    listener_disconnects: int
    last_error: str | None  # the background thread's last failure


class Follower:
    def __init__(
        self,
        store: StateStore,
        device: str | torch.device | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_SECONDS,
        listen_retry_seconds: float = DEFAULT_LISTEN_RETRY_SECONDS,
    ) -> None:
        self.store = store
        self.device = resolve_device(device)
        self.poll_interval = poll_interval
        self.listen_retry_seconds = listen_retry_seconds
        self._cache = StateCache(self.device)
        self._fetch_lock = threading.Lock()  # one catch-up at a time
        self._applied = threading.Condition()  # guards the cache swap and wakes wait_for
        self._head_seen = 0
        self._behind_since: float | None = None
        self._last_check: float | None = None
        self._last_catch_up = 0.0
        self._errors = 0
        self._reloads = 0
        self._needs_reload = True  # the first catch-up loads the compacted state instead of replaying the log
        self._last_error: str | None = None
        self._hooks: list[Callable[[int, int], None]] = []
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[int]]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Listener | None = None
        self._apply_in: Callable[[Step], None] | None = None

    # -- the cache ------------------------------------------------------------------------------------------
    @property
    def applied_version(self) -> int:
        return self._cache.applied

    def memory(self, name: str) -> CachedMemory:
        cached = self._cache.memories.get(name)
        if cached is None:
            raise NotFound(Kind.MEMORY, name)
        return cached

    def classifier(self, name: str) -> CachedClassifier:
        cached = self._cache.classifiers.get(name)
        if cached is None:
            raise NotFound(Kind.CLASSIFIER, name)
        return cached

    def memories(self) -> dict[str, CachedMemory]:
        """Every live memory by name (a copy of the mapping, sorted by name; the entries are the cache's own).
        The mapping is copied in one step (dict.copy holds the GIL throughout) before it is sorted, so a step
        applied meanwhile in another thread cannot change it under the iteration."""
        return dict(sorted(self._cache.memories.copy().items()))

    def classifiers(self) -> dict[str, CachedClassifier]:
        return dict(sorted(self._cache.classifiers.copy().items()))

    def add_apply_hook(self, hook: Callable[[int, int], None]) -> None:
        """hook(previous, applied) after each applied step, in the thread that applied it."""
        self._hooks.append(hook)

    # -- following ------------------------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Applies every entry committed before the call (and any after it that it sees); returns the applied
        version. Raises StoreUnavailable when the log cannot be read (the cache is left as it was)."""
        return self._catch_up(None)

    def _catch_up(self, apply_in: Callable[[Step], None] | None) -> int:
        started = time.monotonic()
        with self._fetch_lock:
            while True:
                try:
                    if self._needs_reload:
                        cache = self.store.load_cache(self.device)
                        self._checked(cache.applied)
                        self._run(apply_in, functools.partial(self._swap, cache))
                        continue
                    log_slice = self.store.read_since(self._cache.applied, READ_ENTRIES, READ_BYTES)
                except StoreUnavailable:
                    self._errors += 1
                    raise
                self._checked(log_slice.head)
                if not log_slice.complete:
                    self._needs_reload = True
                    continue
                if log_slice.entries:
                    self._run(apply_in, functools.partial(self._apply, log_slice))
                if self._cache.applied >= log_slice.head and not self._needs_reload:
                    break
        self._last_catch_up = time.monotonic() - started
        return self._cache.applied

    def _run(self, apply_in: Callable[[Step], None] | None, step: Step) -> None:
        if apply_in is None:
            step()
        else:
            apply_in(step)

    def _apply(self, log_slice: LogSlice) -> None:
        previous = self._cache.applied
        try:
            for entry in log_slice.entries:
                self._cache.apply(entry)
        except Diverged:
            self._needs_reload = True
        self._applied_changed(previous)

    def _swap(self, cache: StateCache) -> None:
        previous = self._cache.applied
        with self._applied:
            self._cache = cache
        self._needs_reload = False
        self._reloads += 1
        self._applied_changed(previous)

    def _applied_changed(self, previous: int) -> None:
        applied = self._cache.applied
        if applied >= self._head_seen:
            self._behind_since = None
        with self._applied:
            self._applied.notify_all()
            ready = [(loop, fut) for version, loop, fut in self._waiters if version <= applied]
            self._waiters = [w for w in self._waiters if w[0] > applied]
        for loop, fut in ready:
            loop.call_soon_threadsafe(_resolve, fut, applied)
        if applied != previous:
            for hook in self._hooks:
                hook(previous, applied)

    def _checked(self, head: int) -> None:
        self._last_check = time.monotonic()
        self._heard_of(head)

    def _heard_of(self, version: int) -> None:
        if version > self._head_seen:
            self._head_seen = version
        if self._head_seen > self._cache.applied and self._behind_since is None:
            self._behind_since = time.monotonic()

    # -- read-your-writes ----------------------------------------------------------------------------------------
    def wait_for(self, version: int, timeout: float) -> int:
        """Returns once `version` is applied (the applied version); NotCaughtUp after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self._thread is None:
            while self._cache.applied < version:
                self.catch_up()
                remaining = deadline - time.monotonic()
                if self._cache.applied >= version:
                    break
                if remaining <= 0:
                    raise NotCaughtUp(version, self._cache.applied, timeout)
                time.sleep(min(WAIT_RETRY_SECONDS, remaining))
            return self._cache.applied
        self._heard_of(version)
        self._wake.set()
        with self._applied:
            if not self._applied.wait_for(lambda: self._cache.applied >= version, timeout):
                raise NotCaughtUp(version, self._cache.applied, timeout)
        return self._cache.applied

    async def wait_for_async(self, version: int, timeout: float) -> int:
        """wait_for for an event loop: waits without holding a thread while the background thread catches up."""
        if self._cache.applied >= version:
            return self._cache.applied
        if self._thread is None:
            return await asyncio.to_thread(self.wait_for, version, timeout)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with self._applied:
            if self._cache.applied >= version:
                return self._cache.applied
            self._waiters.append((version, asyncio.get_running_loop(), future))
        self._heard_of(version)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._applied:
                self._waiters = [w for w in self._waiters if w[2] is not future]
            raise NotCaughtUp(version, self._cache.applied, timeout) from None

    # -- the background thread -----------------------------------------------------------------------------------
    def start(self, apply_in: Callable[[Step], None] | None = None) -> None:
        """Follows the log in a background thread (plus a LISTEN thread on PostgreSQL); `apply_in(step)` must run
        `step` where the cache's readers run and return when it has run."""
        if self._thread is not None:
            raise RuntimeError("the follower is already running")
        self._apply_in = apply_in
        self._stop.clear()
        self.store.on_commit(self._on_local_commit)
        conninfo = self.store.database.listen_conninfo
        if conninfo is not None:  # PostgreSQL; psycopg is imported only here, so SQLite works without it
            from .wakeup import Listener

            self._listener = Listener(conninfo, self._on_notify, retry_seconds=self.listen_retry_seconds)
            self._listener.start()
        self._thread = threading.Thread(target=self._follow, name="hdc-state-follower", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.store.remove_commit_hook(self._on_local_commit)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _on_local_commit(self, version: int) -> None:
        self._heard_of(version)
        self._wake.set()

    def _on_notify(self, version: int | None) -> None:
        if version is not None:
            self._heard_of(version)
        self._wake.set()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._catch_up(self._apply_in)
                self.store.compact_due()
            except StoreUnavailable as exc:  # counted; the cache keeps serving and the next poll retries
                self._last_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - following must outlive one bad step; status() shows it
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"

    def status(self) -> FollowerStatus:
        now = time.monotonic()
        applied, head = self._cache.applied, max(self._head_seen, self._cache.applied)
        behind = self._behind_since
        return FollowerStatus(
            applied_version=applied,
            head_version=head,
            lag_versions=head - applied,
            lag_seconds=0.0 if behind is None or head <= applied else now - behind,
            seconds_since_check=None if self._last_check is None else now - self._last_check,
            last_catch_up_seconds=self._last_catch_up,
            store_errors=self._errors,
            reloads=self._reloads,
            listener_disconnects=0 if self._listener is None else self._listener.disconnects,
            last_error=self._last_error,
        )


def _resolve(future: asyncio.Future[int], applied: int) -> None:
    if not future.done():
        future.set_result(applied)
