"""The operator's names: the HDCWorkload API, the labels that tie children to a workload, the child kinds.

Every other module reads these from here, so that a name is defined once. This module imports only the
standard library; every layer of the operator (the pure builders as well as the API and kopf glue) may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- the HDCWorkload custom resource (crds/hdcworkload.yaml) -----------------------------------------------------
GROUP = "hdcompute.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "HDCWorkload"
PLURAL = "hdcworkloads"
CRD_NAME = f"{PLURAL}.{GROUP}"

# -- labels and the field manager ----------------------------------------------------------------------------
# On every child and worker pod: the name of the workload it belongs to (the watch handlers, the ServiceMonitor's
# `workload` target label and the dev pod mirror read it).
WORKLOAD_LABEL = f"{GROUP}/workload"
# The operator's server-side-apply field manager, Event source, and the managed-by label's value.
FIELD_MANAGER = "hdc-operator"
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}
# MANAGED_BY as a label selector: the operator watches, and the dev harness lists, only objects carrying it.
MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())

GPU_RESOURCE = "nvidia.com/gpu"
MONITORING_GROUP_VERSION = "monitoring.coreos.com/v1"  # the prometheus-operator's API
STATE_CLUSTER_GROUP_VERSION = "postgresql.cnpg.io/v1"  # CloudNativePG's API (spec.state.postgres.cluster)


# -- the kinds a workload's children can be ----------------------------------------------------------------------
@dataclass(frozen=True)
class ChildKind:
    api_version: str
    kind: str
    plural: str
    # PersistentVolumeClaims are never pruned: they hold the workers' state.
    prune: bool = True
    # Watched kinds are read from the operator's watch caches. The prometheus-operator kinds are read with a GET
    # by name instead: their CRDs may be removed at any time, and a watch on a removed CRD stops kopf altogether.
    watched: bool = True


# Every kind builders.build_children may return, in the order it returns them (the claim before the Deployment
# whose pods mount it). apply.py applies and prunes by this table, handlers.py watches its watched kinds, and the
# chart's RBAC grants exactly its verbs.
CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", prune=False),
    # The database of a postgres backend: never pruned either (it holds every replica's state); its CRD may go
    # away like the prometheus-operator's, so it is read by name, not watched.
    ChildKind(STATE_CLUSTER_GROUP_VERSION, "Cluster", "clusters", prune=False, watched=False),
    ChildKind("apps/v1", "Deployment", "deployments"),
    ChildKind("v1", "Service", "services"),
    ChildKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ChildKind(MONITORING_GROUP_VERSION, "ServiceMonitor", "servicemonitors", watched=False),
    ChildKind(MONITORING_GROUP_VERSION, "PrometheusRule", "prometheusrules", watched=False),
    ChildKind("v1", "ConfigMap", "configmaps"),
)

__all__ = [
    "GROUP",
    "VERSION",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "CRD_NAME",
    "WORKLOAD_LABEL",
    "FIELD_MANAGER",
    "MANAGED_BY",
    "MANAGED_SELECTOR",
    "GPU_RESOURCE",
    "MONITORING_GROUP_VERSION",
    "STATE_CLUSTER_GROUP_VERSION",
    "ChildKind",
    "CHILD_KINDS",
]
