"""reconcile.Reconciler's work queue without a cluster: the real queue, workers, retries and resync loop, with
`reconcile` replaced by a script (what it returns or raises per key, and a gate that holds it while it runs).

The reconcile itself (parse, build, apply, status) is tested against a real API server in test_operator_k8s.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hdc_operator.metrics import OperatorMetrics
from hdc_operator.reconcile import Caches, Key, Reconciler

A: Key = ("team-a", "alpha")
B: Key = ("team-a", "beta")
C: Key = ("team-b", "gamma")


class ScriptedReconciler(Reconciler):
    """The real queue around a scripted reconcile.

    outcomes: key -> what successive reconciles of it return (True: retry) or raise; False once they run out.
    gates: key -> an Event a reconcile of that key waits for before it finishes.
    retries: every (key, delay) the queue asked for; the retry is queued at once instead of after the delay.
    """

    def __init__(self, workers: int = 4, **kw: float) -> None:
        # No API and no capability cache: the scripted reconcile never calls them.
        super().__init__(None, None, Caches(workloads={}), OperatorMetrics(), workers=workers, **kw)
        self.outcomes: dict[Key, list[bool | Exception]] = {}
        self.gates: dict[Key, asyncio.Event] = {}
        self.calls: list[Key] = []
        self.running: set[Key] = set()
        self.overlaps: list[Key] = []
        self.retries: list[tuple[Key, float]] = []

    async def reconcile(self, key: Key) -> bool:
        if key in self.running:
            self.overlaps.append(key)
        self.running.add(key)
        self.calls.append(key)
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            script = self.outcomes.get(key) or [False]
            outcome = script.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            self.running.discard(key)

    def enqueue_after(self, key: Key, delay_s: float) -> None:
        self.retries.append((key, delay_s))
        self.enqueue(key)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Lets the loop run until `condition` holds (a bound on the wait, not a timing assertion)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def settle() -> None:
    """Lets every task that can make progress do so (the scripted reconciles never sleep)."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_keys_waiting_are_deduplicated():
    async def scenario() -> None:
        r = ScriptedReconciler()
        for key in (A, A, B, A, B):
            r.enqueue(key)
        assert r.queue_depth == 2
        r.start()
        try:
            await until(lambda: len(r.calls) == 2 and r.queue_depth == 0, "both keys reconciled")
            await settle()
            assert sorted(r.calls) == [A, B]
            assert r.known == {A, B}
        finally:
            await r.stop()

    asyncio.run(scenario())


def test_one_key_is_never_reconciled_twice_at_once():
    async def scenario() -> None:
        r = ScriptedReconciler(workers=4)
        gate = r.gates[A] = asyncio.Event()
        r.start()
        try:
            r.enqueue(A)
            await until(lambda: A in r.running, "A started")
            r.enqueue(A)  # changed again while it is being reconciled: it waits, once
            r.enqueue(A)
            r.enqueue(B)  # another key is not held up by A
            await until(lambda: B in r.calls and B not in r.running, "B reconciled meanwhile")
            await settle()
            assert r.calls.count(A) == 1, "a second reconcile of A started while the first ran"
            assert r.queue_depth == 1
            gate.set()
            await until(lambda: r.calls.count(A) == 2 and not r.running, "A reconciled again after the first")
            await settle()
            assert r.calls.count(A) == 2 and r.overlaps == []
        finally:
            await r.stop()

    asyncio.run(scenario())


def test_failures_are_retried_with_doubling_capped_backoff_that_success_resets():
    async def scenario() -> None:
        r = ScriptedReconciler(backoff_base_s=1.0, backoff_max_s=5.0)
        r.outcomes[A] = [True, True, True, RuntimeError("operator bug"), False, True, False]
        r.start()
        try:
            r.enqueue(A)
            await until(lambda: len(r.calls) == 5 and not r.running, "retried until the fifth reconcile succeeded")
            await settle()
            assert len(r.calls) == 5, "a success was retried"
            r.enqueue(A)  # a later change fails once more: the backoff starts again from its base
            await until(lambda: len(r.calls) == 7 and not r.running, "the new failure retried")
            await settle()
        finally:
            await r.stop()
        # base * 2^n, capped at max, each with +-20 % jitter; a crash is retried like a refusal; success resets n
        expected = [1.0, 2.0, 4.0, 5.0, 1.0]
        assert [key for key, _ in r.retries] == [A] * len(expected)
        for (_, delay), want in zip(r.retries, expected, strict=True):
            assert 0.8 * want <= delay <= 1.2 * want, (delay, want)
        crashed = r.metrics.registry.get_sample_value(
            "hdc_operator_reconcile_errors_total", {"reason": "InternalError"}
        )
        assert crashed == 1

    asyncio.run(scenario())


def test_resync_queues_every_known_workload_outside_paused_namespaces():
    async def scenario() -> None:
        r = ScriptedReconciler()
        r.known.update({A, B, C})
        rounds = 0

        async def paused() -> set[str] | None:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                return None  # unknown this round (the peering object could not be read): nothing is queued
            return {"team-b"}

        r.start(r.resync_forever(0.001, 0.0, paused))
        try:
            await until(lambda: r.calls.count(A) >= 2 and r.calls.count(B) >= 2, "two resync rounds of A and B")
            assert rounds >= 3
            assert C not in r.calls, "a workload in a paused namespace was reconciled"
        finally:
            await r.stop()

    asyncio.run(scenario())


def test_a_forgotten_workload_is_no_longer_known():
    async def scenario() -> None:
        r = ScriptedReconciler()
        r.enqueue(A)
        r.enqueue(B)
        r.forget(A)
        assert r.known == {B}
        assert r.metrics.registry.get_sample_value("hdc_operator_managed_workloads") == 1
        await r.stop()

    asyncio.run(scenario())
