"""Pure manifest builders: a Workload -> every child the operator applies (no kopf, no Kubernetes client).

    children = build_children(parse_workload(body), Capabilities(service_monitor=True, prometheus_rule=True))

One module per child; `build_children` is what the operator applies and what `hdcctl render` prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdc_operator.builders.common import Manifest, labels, owner_references, selector_labels
from hdc_operator.builders.dashboards import build_dashboards_configmap
from hdc_operator.builders.deployment import build_deployment
from hdc_operator.builders.hpa import build_hpa, hpa_metrics
from hdc_operator.builders.pdb import build_pdb
from hdc_operator.builders.prometheusrule import build_prometheus_rule
from hdc_operator.builders.pvc import build_pvc
from hdc_operator.builders.service import build_service
from hdc_operator.builders.servicemonitor import build_service_monitor
from hdc_operator.builders.state import build_state_cluster
from hdc_operator.spec import Workload

__all__ = ["Capabilities", "build_children", "labels", "selector_labels", "owner_references", "hpa_metrics"]


@dataclass(frozen=True)
class Capabilities:
    """Which optional CRDs the cluster serves (the prometheus-operator's, CloudNativePG's Cluster)."""

    service_monitor: bool = True
    prometheus_rule: bool = True
    state_cluster: bool = True

    @classmethod
    def all(cls) -> "Capabilities":
        return cls(service_monitor=True, prometheus_rule=True, state_cluster=True)

    @classmethod
    def none(cls) -> "Capabilities":
        return cls(service_monitor=False, prometheus_rule=False, state_cluster=False)


def build_children(workload: Workload, capabilities: Capabilities) -> list[Manifest]:
    """Every child manifest of the workload, in names.CHILD_KINDS order (the claim and the database before the pods
    that use them)."""
    monitoring = workload.spec["monitoring"]
    children = [
        build_pvc(workload),
        build_state_cluster(workload) if capabilities.state_cluster else None,
        build_deployment(workload),
        build_service(workload),
        build_pdb(workload),
        build_hpa(workload),
        build_service_monitor(workload)
        if capabilities.service_monitor and monitoring["serviceMonitor"]["enabled"]
        else None,
        build_prometheus_rule(workload)
        if capabilities.prometheus_rule and monitoring["prometheusRule"]["enabled"]
        else None,
        build_dashboards_configmap(workload),
    ]
    return [child for child in children if child is not None]
