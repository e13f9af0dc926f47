"""One worker process's state and lifecycle: settings, metrics, health, the kernel thread, the micro-batcher, the
named memories and classifiers, start-up (snapshots, then kernel warm-up), readiness and the final snapshot.

Invariants: /readyz is 200 only after the snapshots are loaded and the kernels warmed up, and never while
shutting down or after a failed start; every mutation of the state runs on the kernel thread (KernelRunner), the
one writer; `in_flight` counts the requests being served, which shutdown waits for.
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
from hd_compute.structures import ItemMemory

from .batching import KernelRunner, MicroBatcher
from .codec import ApiError
from .config import WorkerSettings
from .entries import NamedEntries
from .state import ClassifierEntry, MemoryEntry, StateStore


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
        self.store = StateStore(settings.state_dir)
        self.memories: NamedEntries[MemoryEntry] = NamedEntries("memory", "item memory")
        self.classifiers: NamedEntries[ClassifierEntry] = NamedEntries("classifier", "classifier")
        self.state_loaded = asyncio.Event()
        self.warmed_up = False
        self.shutting_down = False
        self.startup_error: str | None = None
        self.in_flight = 0  # requests being served (all routes): shutdown waits for them
        self.in_flight_ops = 0  # /v1 requests only: the benchmark yields to these, not to probes and scrapes
        self._start_task: asyncio.Task[None] | None = None
        self._periodic_task: asyncio.Task[None] | None = None

    # -- readiness --------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state_loaded.is_set() and self.warmed_up and not self.shutting_down and self.startup_error is None

    def not_ready_reason(self) -> str | None:
        """Why /readyz answers 503, or None when the worker is ready."""
        if self.ready:
            return None
        if self.shutting_down:
            return "shutting down"
        if self.startup_error:
            return f"start-up failed: {self.startup_error}"
        if not self.state_loaded.is_set():
            return "loading snapshots"
        return "warming up kernels"

    def is_busy(self) -> bool:
        return self.in_flight_ops > 0

    def begin_start(self) -> None:
        """Starts `start` in the background (the application's start-up hook): /livez answers at once."""
        self._start_task = asyncio.get_running_loop().create_task(self.start())

    async def start(self) -> None:
        """Loads the snapshots, then warms the kernels up; /readyz turns 200 after both."""
        try:
            memories, classifiers = await self.runner.run(self.store.load_all, self.device)
            self.memories.load(memories)
            self.classifiers.load(classifiers)
            self.state_loaded.set()
            log().info(
                "state_loaded", memories=len(memories), classifiers=len(classifiers), state_dir=self.store.state_dir
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
        for entry in self.memories.values():
            if len(entry.memory):
                entry.memory.search(entry.memory.get([0]), k=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    async def wait_state(self) -> None:
        """Returns once the snapshots are loaded; 503 if the start-up failed."""
        if not self.state_loaded.is_set():
            await self.state_loaded.wait()
        if self.startup_error is not None:
            raise ApiError(503, "not_ready", f"state: the worker failed to start ({self.startup_error})")

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
        for name, memory in self.memories.sorted_items():
            self.store.save_memory(name, memory)
            count += 1
        for name, classifier in self.classifiers.sorted_items():
            self.store.save_classifier(name, classifier)
            count += 1
        return count

    def update_state_gauges(self) -> None:
        """hdc_active_hypervectors and the item memories' bytes, after any change of the memories."""
        memories = self.memories.values()
        self.metrics.set_gauge("active_hypervectors", sum(len(e.memory) for e in memories))
        self.metrics.record_memory_usage("item_memories", sum(e.memory.vectors.nbytes for e in memories))

    async def stop(self) -> None:
        """After the in-flight requests: flush the batcher, stop periodic snapshots, write the final snapshot."""
        self.shutting_down = True
        await self.batcher.drain()
        for task in (self._periodic_task, self._start_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.state_loaded.is_set() and self.startup_error is None:
            started = time.perf_counter()
            written = await self.runner.run(self.snapshot_all)
            log().info("state_snapshotted", files=written, duration_ms=round((time.perf_counter() - started) * 1000, 2))
        self.runner.shutdown()


def _existing_parent(path: str) -> str:
    """The nearest existing directory at or above `path` (the disk check needs one before the state dir exists)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


WORKER = web.AppKey("worker", Worker)
