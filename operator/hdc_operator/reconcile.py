"""The reconcile loop: a work queue of workload keys, and one reconcile = parse -> build -> apply -> status.

Sources of work (handlers.py): every watch event of an HDCWorkload, of one of its children (matched by the
`hdcompute.io/workload` label) and of its pods, plus a periodic resync timer with jitter. Keys are deduplicated
while they wait and never reconciled twice at once (like client-go's work queue), so a burst of pod events
costs one reconcile. A failed reconcile (the API server refused a child, or was unreachable) is retried with
exponential backoff (base * 2^n, capped, with jitter); success resets it.

What is read comes from the operator's watch caches (kopf indices), so a reconcile that finds everything in
sync makes no API call at all: an idle operator writes nothing and reads nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from .apply import ApiError, ApplyMemo, CapabilityCache, KubeApi, child_key, manifest_hash, plan_children
from .metrics import OperatorMetrics
from .names import CHILD_KINDS, KIND, WORKLOAD_LABEL
from .status import (
    CNPG_MISSING,
    CNPG_MISSING_MESSAGE,
    Problem,
    WorkloadObservation,
    compute_status,
    condition,
    selector_string,
    status_changed,
)

log = structlog.get_logger("hdc_operator.reconcile")
Key = tuple[str, str]  # (namespace, workload name)
T = TypeVar("T")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _values(index: Mapping | None, key) -> list:
    if index is None:
        return []
    try:
        store = index[key]
    except KeyError:
        return []
    return list(store)


@dataclass
class Caches:
    """The watch caches a reconcile reads: workload bodies, children and pods (kopf indices, or dicts in tests).

    workloads: (namespace, name) -> [body];  children: each (namespace, owner uid) -> [child, ...];
    pods: (namespace, workload name) -> [pod, ...]
    """

    workloads: Mapping
    children: list[Mapping] = field(default_factory=list)
    pods: Mapping | None = None

    def workload(self, key: Key) -> Mapping | None:
        found = _values(self.workloads, key)
        return found[0] if found else None

    def children_of(self, namespace: str, uid: str) -> list[Mapping]:
        return [c for index in self.children for c in _values(index, (namespace, uid))]

    def pods_of(self, key: Key) -> list[Mapping]:
        return _values(self.pods, key)


class Reconciler:
    def __init__(
        self,
        api: KubeApi,
        capabilities: CapabilityCache,
        caches: Caches,
        metrics: OperatorMetrics,
        *,
        workers: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        parse: Callable | None = None,
        build: Callable | None = None,
        invalid_spec: type[Exception] | None = None,
        executor: concurrent.futures.Executor | None = None,
        autoscaler=None,
    ):
        if parse is None or build is None or invalid_spec is None:
            from .builders import build_children
            from .spec import InvalidSpec, parse_workload

            parse, build = parse or parse_workload, build or build_children
            invalid_spec = invalid_spec or InvalidSpec
        self.invalid_spec = invalid_spec
        self.api, self.capabilities, self.caches, self.metrics = api, capabilities, caches, metrics
        self.parse, self.build = parse, build
        self.autoscaler = autoscaler  # autoscaler.Autoscaler: mode operator's scaler, run on every reconcile
        self.workers = workers
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=max(4, workers * 4), thread_name_prefix="hdc-api"
        )
        self.memo = ApplyMemo()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._retry_at: dict[Key, asyncio.TimerHandle] = {}
        self._written: dict[Key, tuple[str, str, dict]] = {}  # key -> (rv before, rv after, status) of our write
        self._tasks: list[asyncio.Task] = []
        self.known: set[Key] = set()
        self.paused_namespaces: set[str] = set()

    # -- the queue -------------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Keys waiting to be reconciled (a key being reconciled counts again once it is queued again)."""
        return len(self._dirty)

    def enqueue(self, key: Key) -> None:
        self.known.add(key)
        self.metrics.managed_workloads.set(len(self.known))
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)
        self.metrics.queue_depth.set(len(self._dirty))

    def enqueue_after(self, key: Key, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        old = self._retry_at.get(key)
        if old is not None and old.when() <= loop.time() + delay_s:
            return
        if old is not None:
            old.cancel()
        self._retry_at[key] = loop.call_later(delay_s, self._fire_retry, key)

    def _fire_retry(self, key: Key) -> None:
        self._retry_at.pop(key, None)
        if key in self.known and not self.is_paused(key[0]):
            self.enqueue(key)

    def is_paused(self, namespace: str) -> bool:
        return "*" in self.paused_namespaces or namespace in self.paused_namespaces

    async def resync_forever(
        self, interval_s: float, jitter: float, paused: Callable[[], Awaitable[set[str] | None]] | None = None
    ) -> None:
        """Level-based resync: every interval, queue every known workload, each after a random share of
        jitter * interval (so a thousand workloads do not all reconcile in the same second).

        `paused()` names the namespaces in which kopf's peering pauses this operator (paused_by_peers; "*" for
        all): their workloads are left alone. None from it means "unknown this time": nothing is queued.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            if paused is not None:
                try:
                    found = await paused()
                except Exception as exc:  # e.g. the API server is away: skip this round, the next one retries
                    log.info("resync_skipped", error=str(exc))
                    continue
                if found is None:
                    continue
                self.paused_namespaces = found
            for key in list(self.known):
                if not self.is_paused(key[0]):
                    loop.call_later(random.uniform(0, jitter * interval_s), self._resync_one, key)

    def _resync_one(self, key: Key) -> None:
        if key in self.known and not self.is_paused(key[0]):
            self.enqueue(key)

    def forget(self, key: Key) -> None:
        """The workload is gone: stop retrying it (the garbage collector removes its children)."""
        self.known.discard(key)
        self.metrics.managed_workloads.set(len(self.known))
        self.metrics.forget_workload(*key)
        self._failures.pop(key, None)
        self._written.pop(key, None)
        if self.autoscaler is not None:
            self.autoscaler.forget(key)
        handle = self._retry_at.pop(key, None)
        if handle is not None:
            handle.cancel()

    def start(self, *background) -> None:
        """Starts the workers, and any extra coroutines (the resync loop) that live as long as they do."""
        self._tasks = [asyncio.create_task(self._worker(), name=f"hdc-reconcile-{i}") for i in range(self.workers)]
        self._tasks += [asyncio.create_task(coro) for coro in background]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._retry_at.values():
            handle.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            self._processing.add(key)
            self.metrics.queue_depth.set(len(self._dirty))
            try:
                retry = await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the worker: log it, show it, retry with backoff
                log.exception("reconcile_crashed", namespace=key[0], name=key[1])
                self.metrics.reconcile_errors.labels(reason="InternalError").inc()
                await self._report_crash(key, exc)
                retry = True
            finally:
                self._processing.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)
            if retry:
                n = self._failures.get(key, 0)
                self._failures[key] = n + 1
                delay = min(self.backoff_base_s * 2**n, self.backoff_max_s) * random.uniform(0.8, 1.2)
                log.info(
                    "reconcile_retry_scheduled", namespace=key[0], name=key[1], delay_s=round(delay, 2), attempt=n + 1
                )
                self.enqueue_after(key, delay)
            else:
                self._failures.pop(key, None)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the reconciler's thread pool: the kubernetes client blocks, the event loop must not."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- one reconcile --------------------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> bool:
        """Brings one workload's children and status in line. Returns True when it must be retried."""
        with self.metrics.reconcile_timer():
            return await self._reconcile(key)

    async def _reconcile(self, key: Key) -> bool:
        namespace, name = key
        body = self.caches.workload(key)
        if body is None:
            self.forget(key)
            return False
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return False
        uid, generation = meta["uid"], int(meta.get("generation") or 0)
        stored = self._stored_status(key, body)
        live = self.caches.children_of(namespace, uid)
        pods = self.caches.pods_of(key)
        live_deployment = next(
            (c for c in live if c.get("kind") == "Deployment" and c["metadata"]["name"] == name), None
        )

        try:
            caps = await self.run_blocking(self.capabilities.get)
        except ApiError as exc:
            return await self._failed(key, body, stored, exc, live_deployment, pods, generation)

        try:
            live = live + await self._unwatched_children(namespace, name, caps)
        except ApiError as exc:
            return await self._failed(key, body, stored, exc, live_deployment, pods, generation)

        try:
            workload = self.parse(body)
            desired = self.build(workload, caps)
        except self.invalid_spec as exc:
            problem = Problem("InvalidSpec", f"{getattr(exc, 'field', '?')}: {getattr(exc, 'message', exc)}")
            observed = WorkloadObservation(generation, deployment=live_deployment, pods=pods, invalid_spec=problem)
            await self._write_status(key, body, stored, observed)
            self.metrics.reconciles.labels(result="invalid_spec").inc()
            log.warning("invalid_spec", namespace=namespace, name=name, reason=problem.message)
            return False

        plan = plan_children(namespace, desired, live, uid, self.memo)
        applied: dict[tuple[str, str], dict] = {}
        errors: list[ApiError] = []
        # The children are independent objects: apply (and prune) them concurrently.
        results = await asyncio.gather(
            *(self.run_blocking(self.api.apply, m) for m in plan.apply), return_exceptions=True
        )
        for manifest, result in zip(plan.apply, results, strict=True):
            if isinstance(result, ApiError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                self.memo.remember(namespace, result, manifest_hash(manifest))
                applied[child_key(result)] = result
        pruned = []
        results = await asyncio.gather(
            *(self.run_blocking(self.api.delete, o) for o in plan.prune), return_exceptions=True
        )
        for obj, result in zip(plan.prune, results, strict=True):
            if isinstance(result, ApiError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                pruned.append(obj)
        self.memo.forget_namespace_name(namespace, [child_key(o) for o in pruned])

        desired_deployment = next((m for m in desired if m["kind"] == "Deployment"), None)
        deployment = applied.get(("Deployment", name), live_deployment)
        desired_replicas = None
        selector = None
        if desired_deployment is not None:
            dspec = desired_deployment.get("spec") or {}
            desired_replicas = dspec.get("replicas")
            if desired_replicas is None and deployment is not None:
                desired_replicas = (deployment.get("spec") or {}).get("replicas")
            selector = selector_string(((dspec.get("selector") or {}).get("matchLabels")) or {}) or None
        spec = getattr(workload, "spec", None) or {}
        monitoring = spec.get("monitoring") or {}
        sm_wanted = bool((monitoring.get("serviceMonitor") or {}).get("enabled"))
        pr_wanted = bool((monitoring.get("prometheusRule") or {}).get("enabled"))
        missing = tuple(
            n
            for wanted, present, n in (
                (sm_wanted, caps.service_monitor, "servicemonitors.monitoring.coreos.com"),
                (pr_wanted, caps.prometheus_rule, "prometheusrules.monitoring.coreos.com"),
            )
            if wanted and not present
        )
        apply_error = Problem(errors[0].reason, str(errors[0])) if errors else None
        database_missing: tuple[Problem, ...] = ()
        if not caps.state_cluster and "cluster" in ((spec.get("state") or {}).get("postgres") or {}):
            database_missing = (Problem(CNPG_MISSING, CNPG_MISSING_MESSAGE),)
        observed = WorkloadObservation(
            generation,
            desired_replicas=desired_replicas,
            selector=selector,
            deployment=deployment,
            pods=pods,
            apply_error=apply_error,
            missing_monitoring=missing,
            monitoring_wanted=sm_wanted or pr_wanted,
            extra_problems=database_missing,
        )

        await self._events(body, stored, generation, applied, pruned, live_deployment, desired_replicas)
        scale_step = None
        if self.autoscaler is not None:
            try:
                scale_step = await self.autoscaler.step(key, body, spec, deployment)
            except ApiError as exc:
                errors.append(exc)
        try:
            await self._write_status(key, body, stored, observed, scale_step)
        except ApiError as exc:
            errors.append(exc)
        if errors:
            for exc in errors:
                self.metrics.reconcile_errors.labels(reason=exc.reason).inc()
                log.warning(
                    "child_refused",
                    namespace=namespace,
                    name=name,
                    kind=exc.kind,
                    child=exc.name,
                    reason=exc.reason,
                    error=exc.message,
                )
            self.metrics.reconciles.labels(result="error").inc()
            return True
        self.metrics.reconciles.labels(result="ok").inc()
        if applied or pruned:
            log.info(
                "reconciled",
                namespace=namespace,
                name=name,
                generation=generation,
                applied=[f"{k}/{n}" for k, n in applied],
                pruned=[f"{o['kind']}/{o['metadata']['name']}" for o in pruned],
            )
        return False

    async def _unwatched_children(self, namespace: str, name: str, caps) -> list[dict]:
        """The children of kinds the operator does not watch (apply.ChildKind.watched), by GET of their name."""
        kinds = [
            k
            for k in CHILD_KINDS
            if not k.watched
            and {
                "ServiceMonitor": caps.service_monitor,
                "PrometheusRule": caps.prometheus_rule,
                "Cluster": caps.state_cluster,
            }.get(k.kind)
        ]
        found = await asyncio.gather(
            *(self.run_blocking(self.api.get, k.api_version, k.plural, namespace, name) for k in kinds)
        )
        return [obj for obj in found if obj is not None]

    async def _failed(self, key, body, stored, exc: ApiError, deployment, pods, generation) -> bool:
        self.metrics.reconcile_errors.labels(reason=exc.reason).inc()
        self.metrics.reconciles.labels(result="error").inc()
        log.warning("reconcile_failed", namespace=key[0], name=key[1], reason=exc.reason, error=str(exc))
        observed = WorkloadObservation(
            generation,
            deployment=deployment,
            pods=pods,
            apply_error=Problem(exc.reason, str(exc)),
            desired_replicas=(stored or {}).get("desiredReplicas"),
            selector=(stored or {}).get("selector"),
        )
        try:
            await self._write_status(key, body, stored, observed)
        except ApiError:
            pass
        return True

    async def _report_crash(self, key: Key, exc: Exception) -> None:
        body = self.caches.workload(key)
        if body is None:
            return
        stored = self._stored_status(key, body)
        problem = Problem("InternalError", f"the operator failed on this workload: {type(exc).__name__}: {exc}")
        observed = WorkloadObservation(
            int(body["metadata"].get("generation") or 0),
            apply_error=problem,
            desired_replicas=stored.get("desiredReplicas"),
            selector=stored.get("selector"),
        )
        try:
            await self._write_status(key, body, stored, observed)
        except Exception:  # the API may be what fails; the log has the crash already
            log.info("crash_not_reported", namespace=key[0], name=key[1])

    def _stored_status(self, key: Key, body: Mapping) -> dict:
        """The workload's status, or the one we wrote last when the watch cache has not caught up with it."""
        status = dict(body.get("status") or {})
        written = self._written.get(key)
        if written is not None and body["metadata"].get("resourceVersion") == written[0]:
            return dict(written[2])
        return status

    async def _write_status(
        self, key: Key, body: Mapping, stored: Mapping, observed: WorkloadObservation, scale_step=None
    ) -> None:
        new = compute_status(observed, stored, _now())
        scaling_changed = False
        if scale_step is not None:
            from .autoscaler import merge_status

            new, scaling_changed = merge_status(new, stored, scale_step, _now())
        self.metrics.observe_workload(key[0], key[1], new.get("desiredReplicas"), new.get("replicas"))
        if not status_changed(stored, new) and not scaling_changed:
            return
        result = await self.run_blocking(self.api.patch_status, key[0], key[1], new)
        rv_after = ((result or {}).get("metadata") or {}).get("resourceVersion", "")
        self._written[key] = (body["metadata"].get("resourceVersion", ""), rv_after, new)
        old_degraded, new_degraded = condition(stored, "Degraded"), condition(new, "Degraded")
        if (
            new_degraded
            and new_degraded["status"] == "True"
            and (
                not old_degraded
                or old_degraded.get("status") != "True"
                or old_degraded.get("reason") != new_degraded["reason"]
            )
        ):
            await self._event(body, "Warning", new_degraded["reason"], new_degraded["message"])
        elif (
            old_degraded and old_degraded.get("status") == "True" and new_degraded and new_degraded["status"] == "False"
        ):
            await self._event(body, "Normal", "Recovered", f"no longer degraded ({old_degraded.get('reason')})")

    async def _event(self, body: Mapping, type_: str, reason: str, message: str) -> None:
        try:
            await self.run_blocking(self.api.post_event, body, type_, reason, message)
        except ApiError as exc:  # an Event is best effort: it never fails a reconcile
            log.info("event_not_posted", reason=reason, error=str(exc))

    async def _events(self, body, stored, generation, applied, pruned, live_deployment, desired_replicas) -> None:
        name = body["metadata"]["name"]
        names = ", ".join(f"{k}/{n}" for k, n in applied)
        if applied:
            if not stored.get("observedGeneration"):
                await self._event(body, "Normal", "Created", f"created {names}")
            elif stored.get("observedGeneration") != generation:
                await self._event(body, "Normal", "Updated", f"applied generation {generation}: {names}")
            else:
                await self._event(body, "Normal", "DriftCorrected", f"restored {names}")
        if pruned:
            await self._event(
                body,
                "Normal",
                "Pruned",
                "deleted "
                + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in pruned)
                + " (no longer wanted by the spec)",
            )
        old_replicas = ((live_deployment or {}).get("spec") or {}).get("replicas")
        if (
            live_deployment is not None
            and ("Deployment", name) in applied
            and desired_replicas is not None
            and old_replicas is not None
            and old_replicas != desired_replicas
        ):
            direction = "up" if desired_replicas > old_replicas else "down"
            self.metrics.scale_decisions.labels(direction=direction).inc()
            await self._event(
                body,
                "Normal",
                "Scaled",
                f"Deployment {name} scaled {direction} from {old_replicas} to {desired_replicas} replicas",
            )


def paused_by_peers(peers: Mapping[str, Any] | None, own_identity: str, own_priority: int, now: dt.datetime) -> bool:
    """Whether kopf's peering pauses this operator, by kopf's own rule (kopf 1.45.2,
    kopf/_core/engines/peering.py, process_peering_event): a live peer with a higher priority pauses it, and a
    live peer with the same priority pauses both (kopf logs "Pausing all operators, including self"; only shard
    selectors, which this operator does not use, let equal priorities run). The resync loop must stop exactly
    when kopf stops the watches, or a paused replica would reconcile from caches that no longer follow the cluster.

    `peers` is the status of a (Cluster)KopfPeering object: identity -> {priority, lifetime, lastseen}, with
    kopf's defaults (priority 0, lifetime 60 s, no lastseen: seen now); a peer is live while lastseen + lifetime
    is in the future. Entries kopf could not read either (not an object, an unreadable time) are skipped."""
    for identity, info in (peers or {}).items():
        if identity == own_identity or not isinstance(info, Mapping):
            continue
        try:
            lastseen = dt.datetime.fromisoformat(str(info["lastseen"])) if info.get("lastseen") is not None else now
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=dt.timezone.utc)
            alive = lastseen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
            if alive and int(info.get("priority", 0)) >= own_priority:
                return True
        except (TypeError, ValueError):
            continue
    return False


def workload_of(labels: Mapping | None) -> str | None:
    """The owning workload's name from a child's or pod's labels."""
    return (labels or {}).get(WORKLOAD_LABEL)


def controller_uid(meta: Mapping) -> str | None:
    """The uid of the HDCWorkload that controls an object, from its ownerReferences."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == KIND and ref.get("controller"):
            return ref.get("uid")
    return None


__all__ = ["Reconciler", "Caches", "workload_of", "controller_uid", "paused_by_peers"]
