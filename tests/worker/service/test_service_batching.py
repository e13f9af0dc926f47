"""Unit tests of the micro-batcher and the kernel thread (service/batching.py), without a worker or HTTP.

run_batch functions here are plain Python: they record what they were given, so each test can say which
requests shared a kernel call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from hd_compute.service.batching import KernelRunner, MicroBatcher


class Recorder:
    """A run_batch that records each call's items and answers each item with (call number, item)."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.calls: list[list[object]] = []
        self.threads: set[str] = set()
        self.release = release

    def __call__(self, items: list[object]) -> list[object]:
        self.threads.add(threading.current_thread().name)
        if self.release is not None and not self.calls:
            assert self.release.wait(30), "the test never released the first call"
        self.calls.append(list(items))
        return [(len(self.calls), item) for item in items]


@pytest.fixture
def runner():
    runner = KernelRunner()
    yield runner
    runner.shutdown()


@pytest.mark.asyncio
async def test_concurrent_requests_of_one_key_share_one_kernel_call(runner):
    batcher = MicroBatcher(runner, max_size=100, max_wait=0.05)
    run = Recorder()
    results = await asyncio.gather(*(batcher.submit("k", 1, i, run) for i in range(5)))
    assert run.calls == [[0, 1, 2, 3, 4]]
    assert results == [(1, i) for i in range(5)]  # each request gets its own item's result back
    assert batcher.kernel_calls == 1
    assert run.threads and all(name.startswith("hdc-kernel") for name in run.threads)


@pytest.mark.asyncio
async def test_different_keys_never_share_a_call(runner):
    batcher = MicroBatcher(runner, max_size=100, max_wait=0.05)
    run_a, run_b = Recorder(), Recorder()
    a, b = await asyncio.gather(batcher.submit("a", 1, "x", run_a), batcher.submit("b", 1, "y", run_b))
    assert (run_a.calls, run_b.calls) == ([["x"]], [["y"]])
    assert (a, b) == ((1, "x"), (1, "y"))


@pytest.mark.asyncio
async def test_a_full_group_runs_without_waiting_for_max_wait(runner):
    batcher = MicroBatcher(runner, max_size=4, max_wait=60.0)  # a timer would never fire within the test
    run = Recorder()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit("k", 2, i, run) for i in range(2))), 20)
    assert run.calls == [[0, 1]]  # 2 + 2 rows reach max_size
    assert results == [(1, 0), (1, 1)]


@pytest.mark.asyncio
async def test_requests_arriving_during_a_call_go_together_after_it(runner):
    release = threading.Event()
    batcher = MicroBatcher(runner, max_size=100, max_wait=0.0)
    run = Recorder(release)
    first = asyncio.ensure_future(batcher.submit("k", 1, "first", run))
    while batcher.kernel_calls == 0:  # the first group is on the kernel thread, blocked
        await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(batcher.submit("k", 1, f"later{i}", run)) for i in range(3)]
    await asyncio.sleep(0.05)  # their timers fire while the key is running: they keep gathering
    assert batcher.kernel_calls == 1
    release.set()
    await asyncio.gather(first, *later)
    assert run.calls == [["first"], ["later0", "later1", "later2"]]


@pytest.mark.asyncio
async def test_while_the_kernel_is_busy_groups_gather_and_go_when_it_is_idle(runner):
    """Another key's call (or an unbatched kernel call) keeps the kernel busy: requests gather without a timer,
    however long max_wait is, and run as soon as the kernel is idle, so it never waits for a timer with work
    queued."""
    release = threading.Event()
    batcher = MicroBatcher(runner, max_size=100, max_wait=60.0)  # a timer would never fire within the test
    busy = asyncio.ensure_future(runner.run(release.wait, 30))
    while runner.in_flight == 0:
        await asyncio.sleep(0.001)
    run = Recorder()
    waiting = [asyncio.ensure_future(batcher.submit("k", 1, i, run)) for i in range(3)]
    await asyncio.sleep(0.05)
    assert batcher.kernel_calls == 0 and not run.calls  # gathering behind the busy kernel
    release.set()
    assert await busy is True
    results = await asyncio.wait_for(asyncio.gather(*waiting), 20)
    assert run.calls == [[0, 1, 2]]
    assert results == [(1, 0), (1, 1), (1, 2)]
    assert runner.in_flight == 0


@pytest.mark.asyncio
async def test_an_idle_kernel_runs_a_lone_request_at_once_with_no_wait(runner):
    batcher = MicroBatcher(runner, max_size=100, max_wait=0.0)
    run = Recorder()
    assert await asyncio.wait_for(batcher.submit("k", 1, "x", run), 20) == (1, "x")
    assert run.calls == [["x"]]


@pytest.mark.asyncio
async def test_an_exception_reaches_every_request_of_its_call_only(runner):
    batcher = MicroBatcher(runner, max_size=100, max_wait=0.02)

    def failing(items: list[object]) -> list[object]:
        raise ValueError("k: broken")

    ok = Recorder()
    outcomes = await asyncio.gather(
        batcher.submit("bad", 1, 1, failing),
        batcher.submit("bad", 1, 2, failing),
        batcher.submit("good", 1, 3, ok),
        return_exceptions=True,
    )
    assert [type(o) for o in outcomes[:2]] == [ValueError, ValueError]
    assert outcomes[2] == (1, 3)


@pytest.mark.asyncio
async def test_hooks_see_each_call_rows_and_the_requests_tags(runner):
    sizes: list[int] = []
    seen: list[tuple[list[object], int]] = []

    @contextlib.contextmanager
    def around(tags: list[object], rows: int):
        seen.append((list(tags), rows))
        yield

    batcher = MicroBatcher(runner, max_size=100, max_wait=0.02, on_batch=sizes.append, around_batch=around)
    run = Recorder()
    await asyncio.gather(batcher.submit("k", 3, "a", run, tag="t1"), batcher.submit("k", 5, "b", run, tag="t2"))
    assert sizes == [8]
    assert seen == [(["t1", "t2"], 8)]


@pytest.mark.asyncio
async def test_drain_runs_what_is_pending_and_waits_for_it(runner):
    batcher = MicroBatcher(runner, max_size=100, max_wait=60.0)
    run = Recorder()
    pending = asyncio.ensure_future(batcher.submit("k", 1, "x", run))
    await asyncio.sleep(0)  # submitted, waiting for company
    await asyncio.wait_for(batcher.drain(), 20)
    assert run.calls == [["x"]]
    assert await pending == (1, "x")


@pytest.mark.asyncio
async def test_the_kernel_runner_carries_context_variables(runner):
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("request-1")
    assert await runner.run(var.get) == "request-1"


@pytest.mark.parametrize(("max_size", "max_wait", "message"), [(0, 0.1, "max_size"), (1, -1.0, "max_wait")])
def test_bad_limits_are_refused(runner, max_size, max_wait, message):
    with pytest.raises(ValueError, match=message):
        MicroBatcher(runner, max_size=max_size, max_wait=max_wait)
