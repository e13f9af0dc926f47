"""The workers' Service: port `http` 8080 to the worker pods."""

from __future__ import annotations

from hdc_operator.builders.common import HTTP_PORT, HTTP_PORT_NAME, Manifest, metadata, selector_labels
from hdc_operator.spec import Workload


def build_service(workload: Workload) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(workload, workload.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(workload),
            "ports": [
                {
                    "name": HTTP_PORT_NAME,
                    "port": HTTP_PORT,
                    "targetPort": HTTP_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }
