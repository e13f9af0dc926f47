"""One worker process's state and lifecycle: settings, metrics, health, the kernel thread, the micro-batcher, the
named memories and classifiers (views of the state store's cache, service/state.py), start-up (the store, then
kernel warm-up) and readiness.

Invariants: /readyz is 200 only after the follower caught up with the state store and the kernels warmed up, and
never while the store is unreachable, while shutting down or after a failed start; every change of the cache runs
on the kernel thread (KernelRunner), the one writer; `in_flight` counts the requests being served, which shutdown
waits for.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from aiohttp import web

import hd_compute.functional as F
from hd_compute.device import resolve_device
from hd_compute.monitoring.health import HealthChecker, HealthThresholds
from hd_compute.monitoring.logging import get_logger
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.state import CachedClassifier, CachedMemory
from hd_compute.structures import ItemMemory

from .batching import KernelRunner, MicroBatcher
from .codec import ApiError
from .config import WorkerSettings
from .entries import NamedEntries
from .state import SharedState


def log():  # noqa: ANN201 - structlog's bound logger
    return get_logger("hd_compute.service")


class Worker:
    """Everything one worker process holds."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        metrics: MetricsCollector | None = None,
        health: HealthChecker | None = None,
        operations: list[str] | None = None,
        around_batch: Callable[[list[Any], int], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.device_name = str(self.device)
        self.metrics = metrics if metrics is not None else MetricsCollector()
        self.metrics.declare_operations(operations or [])
        self.health = (
            health
            if health is not None
            else HealthChecker(
                HealthThresholds(
                    cuda_memory_mb=settings.health_cuda_memory_mb,
                    memory_percent=settings.health_memory_percent,
                    disk_percent=settings.health_disk_percent,
                    disk_path=_existing_parent(settings.state_dir),
                ),
                require_cuda=self.device.type == "cuda",
            )
        )
        self.runner = KernelRunner()
        self.batcher = MicroBatcher(
            self.runner,
            max_size=settings.batch_max_size,
            max_wait=settings.batch_max_wait_seconds,
            on_batch=self.metrics.observe_batch_size,
            around_batch=around_batch,
        )
        self.store = SharedState(settings, self.device, self.metrics.state())
        self.memories: NamedEntries[CachedMemory] = NamedEntries(
            "memory", "item memory", self.store.memory, self.store.memories
        )
        self.classifiers: NamedEntries[CachedClassifier] = NamedEntries(
            "classifier", "classifier", self.store.classifier, self.store.classifiers
        )
        self.state_loaded = asyncio.Event()
        self.warmed_up = False
        self.shutting_down = False
        self.startup_error: str | None = None
        self.in_flight = 0  # requests being served (all routes): shutdown waits for them
        self.in_flight_ops = 0  # /v1 requests only: the benchmark yields to these, not to probes and scrapes
        self._start_task: asyncio.Task[None] | None = None

    # -- readiness --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz answers 503, or None when the worker is ready."""
        if self.shutting_down:
            return "shutting down"
        if self.startup_error:
            return f"start-up failed: {self.startup_error}"
        if not self.state_loaded.is_set():
            return self.store.not_ready_reason() or "loading the state"
        if not self.warmed_up:
            return "warming up kernels"
        return self.store.not_ready_reason()

    def is_busy(self) -> bool:
        return self.in_flight_ops > 0

    def begin_start(self) -> None:
        """Starts `start` in the background (the application's start-up hook): /livez answers at once."""
        self._start_task = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        """Opens the state store and catches up with it, then warms the kernels up; /readyz turns 200 after both."""
        try:
            await self.store.start(self.runner)
            self.state_loaded.set()
            imported = self.store.imported
            log().info(
                "state_loaded",
                backend=self.store.backend,
                version=self.store.applied_version,
                memories=len(self.memories),
                classifiers=len(self.classifiers),
                imported_snapshots=None if imported is None else imported.memories + imported.classifiers,
            )
            started = time.perf_counter()
            await self.runner.run(self.warm_up)
            self.warmed_up = True
            self.update_state_gauges()
            log().info(
                "worker_ready",
                warmup_ms=round((time.perf_counter() - started) * 1000, 2),
                vsa=self.settings.vsa,
                dimension=self.settings.dimension,
                device=str(self.device),
            )
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
        for entry in self.memories.values():
            if len(entry.memory):
                entry.memory.search(entry.memory.get([0]), k=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    async def wait_state(self) -> None:
        """Returns once the state is loaded (waiting at most HDC_READ_WAIT_SECONDS); 503 if the start-up failed
        or the state store has not answered yet."""
        if not self.state_loaded.is_set():
            try:
                await asyncio.wait_for(self.state_loaded.wait(), self.settings.read_wait_seconds)
            except TimeoutError:
                reason = self.store.not_ready_reason() or "loading the state"
                raise ApiError(503, "state_unavailable", f"state: not loaded yet ({reason}); retry later") from None
        if self.startup_error is not None:
            raise ApiError(503, "not_ready", f"state: the worker failed to start ({self.startup_error})")

    # -- state -------------------------------------------------------------------------------------------------
    def update_state_gauges(self) -> None:
        """hdc_active_hypervectors and the item memories' bytes (at each scrape: the cache changes by the log)."""
        memories = self.memories.values()
        self.metrics.set_gauge("active_hypervectors", sum(len(e.memory) for e in memories))
        self.metrics.record_memory_usage("item_memories", sum(e.memory.vectors.nbytes for e in memories))

    async def stop(self) -> None:
        """After the in-flight requests: flush the batcher, stop following the store and close it."""
        self.shutting_down = True
        await self.batcher.drain()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        await self.store.stop()
        log().info("state_closed", backend=self.store.backend, version=self.store.applied_version)
        self.runner.shutdown()


def _existing_parent(path: str) -> str:
    """The nearest existing directory at or above `path` (the disk check needs one before the state dir exists)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


WORKER = web.AppKey("worker", Worker)
