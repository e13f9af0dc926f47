"""The PersistentVolumeClaim `<name>-state` for the workers' state directory (spec.persistence).

One ReadWriteOnce claim is mounted by every replica, so the replicas must share a node; with more than one
replica use a storage class whose volumes many nodes can mount (the CRD's description says so). Deleting the
HDCWorkload deletes the claim (it is owned like every child).
"""

from __future__ import annotations

from hdc_operator.builders.common import Manifest, metadata
from hdc_operator.spec import Workload


def pvc_name(workload: Workload) -> str:
    return f"{workload.name}-state"


def build_pvc(workload: Workload) -> Manifest | None:
    persistence = workload.spec["persistence"]
    if not persistence["enabled"]:
        return None
    spec: Manifest = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": persistence["size"]}}}
    if persistence["storageClassName"]:
        spec["storageClassName"] = persistence["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(workload, pvc_name(workload)),
        "spec": spec,
    }
