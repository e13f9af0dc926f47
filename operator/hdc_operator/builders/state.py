"""Where the workers keep their state (spec.state), as the pods see it, and the CloudNativePG Cluster the operator
creates for a `postgres` backend with `cluster` (pure).

The worker reads HDC_STATE_BACKEND (none, local, postgres) and, for postgres, HDC_STATE_DATABASE_URL, which comes
from a Secret by reference so the URL (and its password) is never in the Deployment, the operator's logs or an
Event. For `cluster`, that Secret is the one CloudNativePG writes for the Cluster's application user,
`<cluster>-app`, whose `uri` key holds the URL.

Invariants the CRD guarantees and the builders rely on: a local backend has at most one replica and no
autoscaling (so its Deployment can roll out with Recreate and its ReadWriteOnce claim has one writer); a postgres
backend names exactly one of secretName and cluster.
"""

from __future__ import annotations

from hdc_operator.builders.common import Manifest, metadata
from hdc_operator.names import STATE_CLUSTER_GROUP_VERSION
from hdc_operator.spec import Workload

STATE_CLUSTER_KIND = "Cluster"
STATE_CLUSTER_DATABASE = "hdc"  # the database (and its owner) CloudNativePG's initdb creates
CLUSTER_SECRET_KEY = "uri"  # the key of CloudNativePG's app Secret that holds the URL


def state_cluster_name(workload: Workload) -> str:
    return f"{workload.name}-state"


def managed_cluster(workload: Workload) -> bool:
    """Whether the spec asks the operator for a CloudNativePG Cluster."""
    state = workload.spec["state"]
    return state["backend"] == "postgres" and "cluster" in state["postgres"]


def database_secret(workload: Workload) -> tuple[str, str] | None:
    """(Secret name, key) that holds the database URL, for a postgres backend; None otherwise."""
    state = workload.spec["state"]
    if state["backend"] != "postgres":
        return None
    if managed_cluster(workload):
        return f"{state_cluster_name(workload)}-app", CLUSTER_SECRET_KEY
    postgres = state["postgres"]
    return postgres["secretName"], postgres["secretKey"]


def state_env(workload: Workload) -> list[Manifest]:
    """The container's state variables: the backend, and the database URL from its Secret."""
    env: list[Manifest] = [{"name": "HDC_STATE_BACKEND", "value": workload.state_backend}]
    secret = database_secret(workload)
    if secret is not None:
        name, key = secret
        env.append({"name": "HDC_STATE_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
    return env


def build_state_cluster(workload: Workload) -> Manifest | None:
    """The CloudNativePG Cluster `<name>-state`, or None when the spec does not ask for one."""
    if not managed_cluster(workload):
        return None
    cluster = workload.spec["state"]["postgres"]["cluster"]
    storage: Manifest = {"size": cluster["size"]}
    if cluster["storageClassName"]:
        storage["storageClass"] = cluster["storageClassName"]
    return {
        "apiVersion": STATE_CLUSTER_GROUP_VERSION,
        "kind": STATE_CLUSTER_KIND,
        "metadata": metadata(workload, state_cluster_name(workload)),
        "spec": {
            "instances": cluster["instances"],
            "storage": storage,
            "bootstrap": {"initdb": {"database": STATE_CLUSTER_DATABASE, "owner": STATE_CLUSTER_DATABASE}},
        },
    }
