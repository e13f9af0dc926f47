"""What every child shares: names, labels, metadata and the owner reference (pure)."""

from __future__ import annotations

from typing import Any, Mapping

from hdc_operator.names import API_VERSION, KIND, MANAGED_BY, WORKLOAD_LABEL
from hdc_operator.spec import Workload

# A Kubernetes object or part of one, as JSON: what the builders return and server-side apply sends.
Manifest = dict[str, Any]
HTTP_PORT = 8080
HTTP_PORT_NAME = "http"
CONTAINER_NAME = "worker"
STATE_DIR = "/var/lib/hdc"  # the worker image's HDC_STATE_DIR (deploy/worker.Dockerfile)


def selector_labels(workload: Workload) -> dict[str, str]:
    """The labels a Deployment, Service, PDB and ServiceMonitor select worker pods by."""
    return dict(workload.selector_labels)


def labels(workload: Workload, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels of every child and pod; `extra` (the spec's monitoring labels) never overrides them."""
    out = dict(extra or {})
    out.update(
        {
            "app.kubernetes.io/name": "hdc-worker",
            "app.kubernetes.io/instance": workload.name,
            "app.kubernetes.io/component": "worker",
            **MANAGED_BY,
            WORKLOAD_LABEL: workload.name,
        }
    )
    return out


def owner_references(workload: Workload) -> list[dict[str, Any]]:
    """The controller reference to the HDCWorkload (garbage collection deletes the child with it). Empty when
    the workload has no uid yet (a local file rendered by hdcctl: the API server would refuse an empty uid)."""
    if not workload.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": workload.name,
            "uid": workload.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(
    workload: Workload,
    name: str,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": workload.namespace, "labels": labels(workload, extra_labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    owners = owner_references(workload)
    if owners:
        meta["ownerReferences"] = owners
    return meta
