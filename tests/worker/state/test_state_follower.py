"""The follower's contract with the service: read-your-writes waits (blocking and async), apply steps run where
`apply_in` says, and the lag it reports while it cannot apply."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from state_support import wait_until

import hd_compute as hd
from hd_compute.state import Follower, NotCaughtUp, StateStore


def test_wait_for_without_a_background_thread(backend_store: StateStore) -> None:
    store = backend_store
    follower = Follower(store)
    written = store.create_memory("m", 64, "MAP")
    assert follower.wait_for(written.version, timeout=10.0) == written.version
    with pytest.raises(NotCaughtUp) as late:
        follower.wait_for(written.version + 1, timeout=0.05)
    assert (late.value.version, late.value.applied) == (written.version + 1, written.version)


def test_wait_for_async_with_the_background_thread(backend_store: StateStore) -> None:
    store = backend_store
    follower = Follower(store, poll_interval=0.2)
    follower.catch_up()
    follower.start()

    async def scenario() -> None:
        written = await asyncio.to_thread(store.create_memory, "m", 64, "MAP")
        assert await follower.wait_for_async(written.version, timeout=10.0) >= written.version
        assert len(follower.memory("m").memory) == 0
        waiting = asyncio.ensure_future(follower.wait_for_async(written.version + 1, timeout=10.0))
        added = await asyncio.to_thread(store.add_items, "m", hd.random(2, 64, "MAP"))
        assert await waiting >= added.version and len(follower.memory("m").memory) == 2
        with pytest.raises(NotCaughtUp):
            await follower.wait_for_async(added.version + 1, timeout=0.1)

    try:
        asyncio.run(scenario())
    finally:
        follower.stop()


def test_apply_steps_run_where_apply_in_says_and_lag_shows_meanwhile(backend_store: StateStore) -> None:
    store = backend_store
    kernel = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel")
    gate = threading.Event()
    applied_in: list[str] = []

    def apply_in(step: Callable[[], None]) -> None:
        def run() -> None:
            gate.wait()
            applied_in.append(threading.current_thread().name)
            step()

        kernel.submit(run).result()

    follower = Follower(store, poll_interval=0.1)
    follower.catch_up()
    follower.start(apply_in=apply_in)
    written = store.create_memory("m", 64, "MAP")
    wait_until(lambda: follower.status().lag_versions == written.version, what="the follower hearing of the write")
    wait_until(lambda: follower.status().lag_seconds > 0, what="the lag growing")
    assert follower.applied_version == 0
    gate.set()
    follower.wait_for(written.version, timeout=10.0)
    status = follower.status()
    assert (status.lag_versions, status.lag_seconds, status.applied_version) == (0, 0.0, written.version)
    assert applied_in and all(name.startswith("kernel") for name in applied_in)
    follower.stop()
    kernel.shutdown()
