"""The ServiceMonitor (monitoring.coreos.com/v1) that makes Prometheus scrape the workers' /metrics.

Its relabelings give every scraped series the target labels that alerts and dashboards select by:
`namespace`, `pod` and `workload` (= the pods' hdcompute.io/workload label).
"""

from __future__ import annotations

import re

from hdc_operator.builders.common import HTTP_PORT_NAME, Manifest, metadata, selector_labels
from hdc_operator.names import MONITORING_GROUP_VERSION, WORKLOAD_LABEL
from hdc_operator.spec import Workload

# Prometheus' Kubernetes discovery names a pod label __meta_kubernetes_pod_label_<name, non-alphanumerics as _>.
_WORKLOAD_LABEL_META = "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", WORKLOAD_LABEL)

RELABELINGS = [
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
    {"action": "replace", "sourceLabels": [_WORKLOAD_LABEL_META], "targetLabel": "workload"},
]


def build_service_monitor(workload: Workload) -> Manifest:
    sm = workload.spec["monitoring"]["serviceMonitor"]
    return {
        "apiVersion": MONITORING_GROUP_VERSION,
        "kind": "ServiceMonitor",
        "metadata": metadata(workload, workload.name, extra_labels=sm["labels"]),
        "spec": {
            "selector": {"matchLabels": selector_labels(workload)},
            "namespaceSelector": {"matchNames": [workload.namespace]},
            "endpoints": [
                {
                    "port": HTTP_PORT_NAME,
                    "path": "/metrics",
                    "scheme": "http",
                    "interval": sm["interval"],
                    "relabelings": [dict(r) for r in RELABELINGS],
                }
            ],
        },
    }
