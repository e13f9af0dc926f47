"""Micro-batching: concurrent small requests against the same operands become one kernel call.

    runner = KernelRunner()                       # the one thread the worker computes on
    batcher = MicroBatcher(runner, max_size=256, max_wait=0.0, on_batch=metrics.observe_batch_size)
    result = await batcher.submit(key, rows, item, run_batch)

Requests with the same `key` (e.g. the item memory's name, or the metric and a hash of the `others` operand of
a similarity request) gather into a group; a group is flushed as soon as it holds `max_size` rows. Otherwise:
while the kernel thread is busy (any call, batched or not), groups keep gathering and are flushed when it goes
idle, so a busy worker batches more and the kernel never waits for a timer while work is queued; when it is
idle, a group waits at most `max_wait` seconds for company (0: the next turn of the event loop, which still
joins the requests read in the same turn). `run_batch(items)` runs on the kernel thread and
returns one result per item; `on_batch(rows)` is called once per kernel call with the number of rows
(queries) it computed — the worker passes MetricsCollector.observe_batch_size (hdc_batch_size_distribution).
`around_batch(tags, rows)`, when given, returns a context manager held around each kernel call, with the
`tag` every request of the group passed to `submit` (the worker opens one kernel span per call there, linked
to the requests' spans). An exception in a kernel call is delivered to every request of that group.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Hashable


class KernelRunner:
    """One thread for all kernel calls and state mutations, so they never race; the event loop stays free.

    torch parallelises each kernel over its own thread pool, so one calling thread loses no throughput.
    Context variables (log context, current span) travel with each call.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdc-kernel")
        self.in_flight = 0  # calls submitted and not finished (event-loop side)
        self._on_idle: list[Callable[[], None]] = []

    def on_idle(self, callback: Callable[[], None]) -> None:
        """Calls `callback()` on the event loop each time the last call in flight finishes."""
        self._on_idle.append(callback)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        self.in_flight += 1
        try:
            return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args, **kwargs))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                for callback in self._on_idle:
                    callback()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


@dataclass
class _Group:
    items: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class MicroBatcher:
    def __init__(
        self,
        runner: KernelRunner,
        *,
        max_size: int,
        max_wait: float,
        on_batch: Callable[[int], None] | None = None,
        around_batch: Callable[[list, int], ContextManager] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.runner = runner
        self.max_size = max_size
        self.max_wait = max_wait
        self.on_batch = on_batch
        self.around_batch = around_batch
        self._pending: dict[Hashable, _Group] = {}
        self._run_fns: dict[Hashable, Callable[[list], list]] = {}
        self._running: set[Hashable] = set()
        self._tasks: set[asyncio.Task] = set()
        self.kernel_calls = 0  # for tests and the benchmark: how many kernel calls the batcher made
        runner.on_idle(self._flush_gathered)

    async def submit(
        self, key: Hashable, rows: int, item: Any, run_batch: Callable[[list], list], tag: Any = None
    ) -> Any:
        """Queues `item` (which holds `rows` queries) with the others of `key`; returns its own result.
        `tag` goes to `around_batch` with those of the other requests of the same kernel call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = _Group()
        group.items.append((item, future))
        group.tags.append(tag)
        group.rows += rows
        self._run_fns[key] = run_batch
        if group.rows >= self.max_size:
            self._flush(key, force=True)
        elif group.timer is None and self.runner.in_flight == 0:
            group.timer = loop.call_later(self.max_wait, self._flush, key)
        # else: the kernel is busy; _flush_gathered (or the end of this key's call) flushes the group
        return await future

    def _flush_gathered(self) -> None:
        """The kernel went idle: every group that gathered meanwhile goes now (a running key's own group goes
        when its call ends, in _run)."""
        for key in list(self._pending):
            self._flush(key)

    def _flush(self, key: Hashable, force: bool = False) -> None:
        group = self._pending.get(key)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if key in self._running and not force:
            return  # flushed when the running group of this key finishes (see _run)
        del self._pending[key]
        task = asyncio.get_running_loop().create_task(self._run(key, group, self._run_fns[key]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, group: _Group, run_batch: Callable[[list], list]) -> None:
        self._running.add(key)
        items = [item for item, _ in group.items]
        try:
            self.kernel_calls += 1
            if self.on_batch is not None:
                self.on_batch(group.rows)
            around = self.around_batch(group.tags, group.rows) if self.around_batch else contextlib.nullcontext()
            with around:
                results = await self.runner.run(run_batch, items)
            for (_, future), result in zip(group.items, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request
            for _, future in group.items:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._running.discard(key)
            if key in self._pending:
                self._flush(key)

    async def drain(self) -> None:
        """Flushes everything pending and waits for the running kernel calls (used at shutdown)."""
        for key in list(self._pending):
            self._flush(key, force=True)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
