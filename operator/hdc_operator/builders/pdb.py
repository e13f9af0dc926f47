"""The PodDisruptionBudget (policy/v1) of the worker pods; None when spec.podDisruptionBudget.enabled is false."""

from __future__ import annotations

from hdc_operator.builders.common import Manifest, metadata, selector_labels
from hdc_operator.spec import Workload


def build_pdb(workload: Workload) -> Manifest | None:
    pdb = workload.spec["podDisruptionBudget"]
    if not pdb["enabled"]:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(workload, workload.name),
        "spec": {"maxUnavailable": pdb["maxUnavailable"], "selector": {"matchLabels": selector_labels(workload)}},
    }
