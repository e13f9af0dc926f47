"""The PrometheusRule (monitoring.coreos.com/v1) of the workload: groups from hdc_operator.alerts."""

from __future__ import annotations

from hdc_operator.alerts import build_rule_groups
from hdc_operator.builders.common import Manifest, metadata
from hdc_operator.spec import Workload


def build_prometheus_rule(workload: Workload) -> Manifest:
    rule = workload.spec["monitoring"]["prometheusRule"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata(workload, workload.name, extra_labels=rule["labels"]),
        "spec": {"groups": build_rule_groups(workload.name, workload.namespace, workload.spec)},
    }
