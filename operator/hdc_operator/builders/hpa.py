"""The HorizontalPodAutoscaler (autoscaling/v2) of spec.autoscaling.mode hpa.

It targets the HDCWorkload itself through its scale subresource (spec.replicas, status.replicas,
status.selector), so the HPA and the operator never fight over the Deployment's replicas.
"""

from __future__ import annotations

from hdc_operator.builders.common import Manifest, metadata
from hdc_operator.names import API_VERSION, KIND
from hdc_operator.spec import Workload

# The scaler's demand unit, per pod (prometheus-adapter rules in charts/hdc-operator/values.yaml):
THROUGHPUT_METRIC = "hdc_hypervector_operations_per_second"  # rate(hdc_hypervector_operations_total[1m])
UTILIZATION_METRIC = "hdc_capacity_utilization_percent"  # 100 * that rate / hdc_capacity_ops_per_second


def quantity(value: float) -> str:
    """A Kubernetes quantity for a non-negative number: "700", "350500m"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def hpa_metrics(workload: Workload) -> list[Manifest]:
    """The HPA's metric: a Pods metric per replica. With targetOpsPerReplica the target is that many operations
    per second times the target utilization; without it, the replicas' measured share of their capacity
    (a prometheus-adapter rule divides the rate of hdc_hypervector_operations_total by hdc_capacity_ops_per_second).
    Either way it is the operator scaler's formula: ceil(sum of demand / (capacity x utilization))."""
    scaling = workload.spec["autoscaling"]
    utilization = scaling["targetUtilizationPercent"]
    if scaling["targetOpsPerReplica"] is not None:
        name, target = THROUGHPUT_METRIC, scaling["targetOpsPerReplica"] * utilization / 100
    else:
        name, target = UTILIZATION_METRIC, utilization
    return [
        {
            "type": "Pods",
            "pods": {"metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": quantity(target)}},
        }
    ]


def build_hpa(workload: Workload) -> Manifest | None:
    scaling = workload.spec["autoscaling"]
    if scaling["mode"] != "hpa":
        return None
    spec = {
        "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": workload.name},
        "minReplicas": scaling["minReplicas"],
        "maxReplicas": scaling["maxReplicas"],
        "metrics": hpa_metrics(workload),
    }
    if scaling["behavior"]:
        spec["behavior"] = scaling["behavior"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(workload, workload.name),
        "spec": spec,
    }
