"""The ConfigMap `<name>-dashboards` that Grafana's dashboard sidecar loads (label grafana_dashboard: "1")."""

from __future__ import annotations

import json

from hdc_operator.builders.common import Manifest, metadata
from hdc_operator.spec import Workload

GRAFANA_LABEL = {"grafana_dashboard": "1"}


def dashboards_name(workload: Workload) -> str:
    return f"{workload.name}-dashboards"


def build_dashboards_configmap(workload: Workload) -> Manifest | None:
    config = workload.spec["monitoring"]["dashboards"]
    if not config["enabled"]:
        return None
    from hdc_operator.dashboards import build_dashboards  # the "alerts" helper's module

    models = build_dashboards(workload.name, workload.namespace, workload.spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(workload, dashboards_name(workload), extra_labels={**config["labels"], **GRAFANA_LABEL}),
        "data": {filename: json.dumps(model, indent=1, sort_keys=True) for filename, model in sorted(models.items())},
    }
