"""A small closed-loop load generator for the demo: `clients` concurrent loops posting bind, bundle and similarity
requests (binary .npz bodies, the workers' storage form) round-robin to the ready workers of one workload, as a
Service would spread them. The ready workers are re-read from the pod mirror's status file every second.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import pathlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

OPERATIONS = ("bind", "bundle", "similarity")


def storage_vectors(rng: np.random.Generator, vsa: str, dimension: int, rows: int) -> np.ndarray:
    """Random hypervectors in the workers' storage form (docs/worker-api.md, Vector formats)."""
    vsa = vsa.upper()
    if vsa == "MAP":
        return rng.choice(np.array([-1, 1], dtype=np.int8), size=(rows, dimension))
    if vsa == "BSC":
        words = -(-dimension // 64)
        out = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=(rows, words), dtype=np.int64)
        spare = words * 64 - dimension
        if spare:
            out[:, -1] &= np.int64((1 << (64 - spare)) - 1)  # padding bits zero
        return out
    if vsa == "HRR":
        return (rng.standard_normal((rows, dimension)) / np.sqrt(dimension)).astype(np.float32)
    if vsa == "FHRR":
        return np.exp(1j * rng.uniform(-np.pi, np.pi, (rows, dimension))).astype(np.complex64)
    raise ValueError(f"vsa must be one of MAP, BSC, HRR, FHRR, got {vsa!r}")


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def request_bodies(vsa: str, dimension: int, seed: int = 0) -> dict[str, tuple[str, bytes]]:
    """operation -> (path with query string, .npz body): one bind of a pair, a bundle of 8, 1 query vs 16."""
    rng = np.random.default_rng(seed)
    v = lambda n: storage_vectors(rng, vsa, dimension, n)  # noqa: E731
    query = f"?vsa={vsa.upper()}&dimension={dimension}"
    return {
        "bind": (f"/v1/ops/bind{query}", _npz(a=v(1), b=v(1))),
        "bundle": (f"/v1/ops/bundle{query}", _npz(vectors=v(8))),
        "similarity": (f"/v1/ops/similarity{query}", _npz(queries=v(1), others=v(16))),
    }


def ready_targets(status_file: pathlib.Path, namespace: str, workload: str) -> list[str]:
    """host:port of the mirror's ready workers of namespace/workload (what a Service's endpoints would hold)."""
    try:
        workers = json.loads(pathlib.Path(status_file).read_text())["workers"]
    except (OSError, ValueError, KeyError):
        return []
    return [
        f"127.0.0.1:{w['port']}"
        for w in workers
        if w.get("ready") and w.get("namespace") == namespace and w.get("workload") == workload
    ]


@dataclass
class LoadStats:
    requests: int = 0
    errors: int = 0
    last_error: str = ""
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))  # (t, ok)

    def rate(self, window_s: float = 10.0) -> float:
        """Completed requests per second over the last `window_s` seconds. Called from another thread than the
        load's: it counts over a copy (deque.copy() runs without letting the appending thread in)."""
        now = time.monotonic()
        return sum(1 for t, _ in self.recent.copy() if now - t <= window_s) / window_s


class LoadGenerator:
    """Runs in its own thread (an asyncio loop with aiohttp) until stop()."""

    def __init__(
        self, status_file: pathlib.Path, namespace: str, workload: str, vsa: str, dimension: int, clients: int = 4
    ):
        self.status_file, self.namespace, self.workload = status_file, namespace, workload
        self.bodies = request_bodies(vsa, dimension)
        self.clients = clients
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.targets: list[str] = []

    def start(self) -> "LoadGenerator":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="hdc-demo-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    async def _main(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=self.clients)) as s:
            refresher = asyncio.create_task(self._refresh())
            await asyncio.gather(*(self._client(s, i) for i in range(self.clients)))
            refresher.cancel()

    async def _refresh(self) -> None:
        while not self._stop.is_set():
            self.targets = ready_targets(self.status_file, self.namespace, self.workload)
            await asyncio.sleep(1.0)

    async def _client(self, session, index: int) -> None:
        import aiohttp

        n = index
        while not self._stop.is_set():
            targets = self.targets
            if not targets:
                await asyncio.sleep(0.5)
                continue
            path, body = self.bodies[OPERATIONS[n % len(OPERATIONS)]]
            target = targets[n % len(targets)]
            n += 1
            ok = False
            try:
                async with session.post(
                    f"http://{target}{path}", data=body, headers={"Content-Type": "application/x-npz"}
                ) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    if not ok:
                        self.stats.last_error = f"{target}{path.split('?')[0]}: HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self.stats.last_error = f"{target}: {type(exc).__name__} {exc}"
                await asyncio.sleep(0.2)  # a worker going away: do not spin
            self.stats.requests += 1
            self.stats.errors += 0 if ok else 1
            self.stats.recent.append((time.monotonic(), ok))
