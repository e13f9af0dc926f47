"""kopf glue only: watch caches (indices), events that queue a reconcile, start and stop.

Nothing here decides anything: reconcile.py does the work, apply.py the writes, status.py the status.
Handlers are registered on an explicit registry by `register(registry, config)` so the settings (resync
interval, scope) are plain arguments instead of import-time globals.

kopf itself writes nothing to a workload: there are no create/update/resume handlers (no diff-base annotation,
no progress storage) and no kopf timers or daemons (they would need a finalizer on every workload, and kopf stops
serving a namespace once it terminates, so its workloads' finalizers would never be removed). The periodic
resync is the reconciler's own loop, which follows kopf's peering rule (reconcile.paused_by_peers) so that a
replica stays idle exactly while kopf has paused its watches. kopf's own k8s Event posting is off (the operator
posts its own Events).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping

import kopf

from .apply import CapabilityCache, KubeApi
from .autoscaler import Autoscaler
from .config import OperatorConfig
from .metrics import OperatorMetrics
from .names import CHILD_KINDS, GROUP, MANAGED_BY, MANAGED_SELECTOR, PLURAL, VERSION, WORKLOAD_LABEL
from .reconcile import Caches, Reconciler, controller_uid, paused_by_peers

# No handler needs a finalizer; naming kopf's lets it remove the one earlier versions of the operator added.
FINALIZER = f"{GROUP}/operator"


def _plain(body) -> dict:
    return copy.deepcopy({k: body[k] for k in body})


def slim_workload(body) -> dict:
    obj = _plain(body)
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


def slim_child(body) -> dict:
    obj = _plain(body)
    obj.get("metadata", {}).pop("managedFields", None)
    obj.get("metadata", {}).get("annotations", {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if obj.get("kind") != "Deployment":
        obj.pop("status", None)
    return obj


def slim_pod(body) -> dict:
    """What status.py reads of a pod (the rest of a pod is large and unused)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    keep = ("phase", "conditions", "containerStatuses", "initContainerStatuses")
    return copy.deepcopy(
        {
            "metadata": {"name": meta.get("name"), "deletionTimestamp": meta.get("deletionTimestamp")},
            "status": {k: status[k] for k in keep if k in status},
        }
    )


def register(
    registry: kopf.OperatorRegistry, config: OperatorConfig, api_client, metrics: OperatorMetrics, identity: str
) -> None:
    """Registers every handler of the operator on `registry`; `identity` is this process's kopf peering id."""
    watched = [kind for kind in CHILD_KINDS if kind.watched]
    child_index_ids = [f"hdc_children_{kind.plural}" for kind in watched]

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs) -> None:
        settings.posting.enabled = False
        settings.peering.lifetime = config.peering_lifetime_s
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        # Server-side filtering: the operator never receives Deployments, Services, pods... not its own.
        for kind in watched:
            settings.watching.label_selectors[(kind.api_version, kind.plural)] = MANAGED_SELECTOR
        settings.watching.label_selectors[("v1", "pods")] = MANAGED_SELECTOR
        api = KubeApi(api_client, on_write=metrics.count_write)
        caches = Caches(
            workloads=kwargs["hdc_workloads"], children=[kwargs[i] for i in child_index_ids], pods=kwargs["hdc_pods"]
        )
        reconciler = Reconciler(
            api,
            CapabilityCache(api, ttl_s=config.capability_ttl_s),
            caches,
            metrics,
            workers=config.workers,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
        )
        reconciler.autoscaler = Autoscaler(api, metrics, config.prometheus_url, io=reconciler.run_blocking)

        async def paused_namespaces() -> set[str] | None:
            """Namespaces where kopf's peering pauses this operator (reconcile.paused_by_peers), read from the
            peering objects; a namespace whose KopfPeering is missing counts as paused."""
            if not config.peering:
                return set()
            now = dt.datetime.now(dt.timezone.utc)
            if config.clusterwide:
                obj = await reconciler.run_blocking(api.get, "kopf.dev/v1", "clusterkopfpeerings", None, config.peering)
                if obj is None:
                    return None
                return {"*"} if paused_by_peers(obj.get("status"), identity, config.priority, now) else set()
            paused = set()
            for namespace in config.namespaces:
                obj = await reconciler.run_blocking(api.get, "kopf.dev/v1", "kopfpeerings", namespace, config.peering)
                if obj is None or paused_by_peers(obj.get("status"), identity, config.priority, now):
                    paused.add(namespace)
            return paused

        def operator_mode_keys() -> list:
            return [
                key
                for key in list(reconciler.known)
                if not reconciler.is_paused(key[0])
                and (((caches.workload(key) or {}).get("spec") or {}).get("autoscaling") or {}).get("mode")
                == "operator"
            ]

        reconciler.start(
            reconciler.resync_forever(config.resync_interval_s, config.resync_jitter, paused_namespaces),
            reconciler.autoscaler.tick_forever(config.autoscale_interval_s, operator_mode_keys, reconciler.enqueue),
        )
        memo.reconciler = reconciler

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_) -> None:
        reconciler = getattr(memo, "reconciler", None)
        if reconciler is not None:
            await reconciler.stop()
            await reconciler.autoscaler.close()

    # -- watch caches ------------------------------------------------------------------------------------
    @kopf.index(GROUP, VERSION, PLURAL, id="hdc_workloads", registry=registry)
    def hdc_workloads(namespace: str, name: str, body, **_):
        return {(namespace, name): slim_workload(body)}

    for kind, index_id in zip(watched, child_index_ids, strict=True):
        group, _, version = kind.api_version.rpartition("/")

        def index_child(namespace: str, body, meta, **_):
            uid = controller_uid(meta)
            return {(namespace, uid): slim_child(body)} if uid else None

        kopf.index(group, version, kind.plural, id=index_id, labels=MANAGED_BY, registry=registry)(index_child)

        async def child_event(type: str, namespace: str, labels: Mapping, memo: kopf.Memo, **_):
            owner = labels.get(WORKLOAD_LABEL)
            if owner and getattr(memo, "reconciler", None) is not None:
                memo.reconciler.enqueue((namespace, owner))

        kopf.on.event(
            group, version, kind.plural, id=f"hdc_child_event_{kind.plural}", labels=MANAGED_BY, registry=registry
        )(child_event)

    @kopf.index("", "v1", "pods", id="hdc_pods", labels=MANAGED_BY, registry=registry)
    def hdc_pods(namespace: str, labels: Mapping, body, **_):
        owner = labels.get(WORKLOAD_LABEL)
        return {(namespace, owner): slim_pod(body)} if owner else None

    @kopf.on.event("", "v1", "pods", id="hdc_pod_event", labels=MANAGED_BY, registry=registry)
    async def pod_event(namespace: str, labels: Mapping, memo: kopf.Memo, **_):
        owner = labels.get(WORKLOAD_LABEL)
        if owner and getattr(memo, "reconciler", None) is not None:
            memo.reconciler.enqueue((namespace, owner))

    # -- the workloads themselves ------------------------------------------------------------------------
    @kopf.on.event(GROUP, VERSION, PLURAL, id="hdc_workload_event", registry=registry)
    async def workload_event(type: str, namespace: str, name: str, memo: kopf.Memo, **_):
        reconciler = getattr(memo, "reconciler", None)
        if reconciler is None:
            return
        if type == "DELETED":
            reconciler.forget((namespace, name))
        else:
            reconciler.enqueue((namespace, name))

    @kopf.on.probe(id="reconcile_queue", registry=registry)
    def queue_depth(memo: kopf.Memo, **_):
        reconciler = getattr(memo, "reconciler", None)
        return reconciler.queue_depth if reconciler is not None else None
