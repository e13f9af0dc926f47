"""The ServiceMonitor (monitoring.coreos.com/v1) that makes Prometheus scrape the workers' /metrics.

Its relabelings give every scraped series the target labels that alerts and dashboards select by:
`namespace`, `pod` and `workload` (= the pods' hdcompute.io/workload label).
"""

from __future__ import annotations

from hdc_operator.builders.common import HTTP_PORT_NAME, metadata, selector_labels
from hdc_operator.spec import Workload

RELABELINGS = [
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"},
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"},
    {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_hdcompute_io_workload"],
     "targetLabel": "workload"},
]


def build_service_monitor(workload: Workload) -> dict:
    sm = workload.spec["monitoring"]["serviceMonitor"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(workload, workload.name, extra_labels=sm["labels"]),
        "spec": {
            "selector": {"matchLabels": selector_labels(workload)},
            "namespaceSelector": {"matchNames": [workload.namespace]},
            "endpoints": [{
                "port": HTTP_PORT_NAME,
                "path": "/metrics",
                "scheme": "http",
                "interval": sm["interval"],
                "relabelings": [dict(r) for r in RELABELINGS],
            }],
        },
    }
