"""status.py: pure status computation from a Deployment and pods (no cluster)."""

from hdc_operator.status import (
    Problem,
    WorkloadObservation,
    compute_status,
    condition,
    pod_problems,
    selector_string,
    status_changed,
)

NOW, LATER = "2026-11-28T12:00:00Z", "2026-11-28T13:00:00Z"
SELECTOR = "app.kubernetes.io/instance=w,app.kubernetes.io/name=hdc-worker"


def deployment(replicas=2, ready=2, updated=2, generation=1, observed=1, conditions=()):
    return {
        "metadata": {"name": "w", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "observedGeneration": observed,
            "conditions": list(conditions),
        },
    }


def unschedulable_pod(name, message):
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        },
    }


def waiting_pod(name, reason):
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "worker", "state": {"waiting": {"reason": reason, "message": f"{reason} happened"}}}
            ],
        },
    }


def observe(**kw):
    base = dict(generation=1, desired_replicas=2, selector=SELECTOR, deployment=deployment(), pods=[])
    base.update(kw)
    return WorkloadObservation(**base)


def test_all_ready_is_running_with_ready_true():
    st = compute_status(observe(), {}, NOW)
    assert st["phase"] == "Running"
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (2, 2, 2)
    assert st["selector"] == SELECTOR and st["observedGeneration"] == 1
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "Progressing")["reason"] == "RolloutComplete"
    assert condition(st, "Degraded")["status"] == "False"
    assert all(c["lastTransitionTime"] == NOW for c in st["conditions"])


def test_no_deployment_yet_is_pending():
    st = compute_status(observe(deployment=None), {}, NOW)
    assert st["phase"] == "Pending"
    assert condition(st, "Ready")["reason"] == "DeploymentMissing"


def test_scaling_up_is_progressing():
    st = compute_status(
        observe(desired_replicas=3, deployment=deployment(replicas=3, ready=2, updated=3, generation=2, observed=2)),
        {},
        NOW,
    )
    assert st["phase"] == "Progressing"
    assert condition(st, "Progressing")["status"] == "True"
    assert condition(st, "Ready")["reason"] == "ReplicasNotReady"
    assert "2/3" in condition(st, "Ready")["message"]


def test_stale_deployment_generation_is_not_complete():
    st = compute_status(observe(deployment=deployment(generation=2, observed=1)), {}, NOW)
    assert st["phase"] == "Progressing"


def test_unschedulable_for_gpus_is_insufficient_gpu():
    pods = [
        unschedulable_pod("w-1", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
        unschedulable_pod("w-2", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
    ]
    st = compute_status(observe(deployment=deployment(ready=0), pods=pods), {}, NOW)
    assert st["phase"] == "Degraded"
    degraded = condition(st, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InsufficientGPU")
    assert "w-1" in degraded["message"] and "1 more" in degraded["message"]
    assert condition(st, "Ready")["reason"] == "InsufficientGPU"


def test_unschedulable_for_other_reasons_is_not_a_gpu_problem():
    pods = [unschedulable_pod("w-1", "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity.")]
    assert [p.reason for p in pod_problems(pods)] == ["Unschedulable"]


def test_image_pull_and_crash_loop_reasons():
    assert [p.reason for p in pod_problems([waiting_pod("a", "ErrImagePull")])] == ["ImagePullBackOff"]
    assert [p.reason for p in pod_problems([waiting_pod("a", "ImagePullBackOff")])] == ["ImagePullBackOff"]
    assert [p.reason for p in pod_problems([waiting_pod("a", "CrashLoopBackOff")])] == ["CrashLoopBackOff"]
    assert pod_problems([waiting_pod("a", "ContainerCreating")]) == []
    st = compute_status(observe(deployment=deployment(ready=1), pods=[waiting_pod("w-x", "CrashLoopBackOff")]), {}, NOW)
    assert condition(st, "Degraded")["reason"] == "CrashLoopBackOff"


def test_terminating_pods_are_ignored():
    pod = unschedulable_pod("old", "Insufficient nvidia.com/gpu")
    pod["metadata"]["deletionTimestamp"] = NOW
    assert pod_problems([pod]) == []


def test_most_important_problem_wins():
    pods = [waiting_pod("a", "CrashLoopBackOff"), unschedulable_pod("b", "1 Insufficient nvidia.com/gpu")]
    st = compute_status(
        observe(pods=pods, apply_error=Problem("QuotaExceeded", "Deployment w: exceeded quota")), {}, NOW
    )
    assert condition(st, "Degraded")["reason"] == "QuotaExceeded"


def test_invalid_spec_fails_with_the_message():
    invalid = Problem("InvalidSpec", "spec.hdc.dimension: bad")
    st = compute_status(WorkloadObservation(generation=4, invalid_spec=invalid), {}, NOW)
    assert st["phase"] == "Failed"
    assert condition(st, "Degraded")["reason"] == "InvalidSpec"
    assert condition(st, "Ready")["message"] == "spec.hdc.dimension: bad"
    assert condition(st, "Progressing")["reason"] == "InvalidSpec"
    assert st["observedGeneration"] == 4


def test_replica_failure_from_the_deployment():
    dep = deployment(
        ready=0,
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "w-1" is forbidden: exceeded quota',
            }
        ],
    )
    st = compute_status(observe(deployment=dep), {}, NOW)
    assert condition(st, "Degraded")["reason"] == "ReplicaFailure"
    assert "exceeded quota" in condition(st, "Degraded")["message"]


def test_monitoring_unavailable_condition():
    st = compute_status(
        observe(missing_monitoring=("servicemonitors.monitoring.coreos.com",), monitoring_wanted=True), {}, NOW
    )
    mon = condition(st, "MonitoringUnavailable")
    assert (mon["status"], mon["reason"]) == ("True", "PrometheusOperatorCRDsMissing")
    assert "servicemonitors.monitoring.coreos.com" in mon["message"]
    assert st["phase"] == "Running"  # the workers are fine; only their monitoring is missing
    assert (
        condition(compute_status(observe(monitoring_wanted=True), {}, NOW), "MonitoringUnavailable")["status"]
        == "False"
    )


def test_unchanged_status_keeps_times_and_is_not_rewritten():
    first = compute_status(observe(), {}, NOW)
    second = compute_status(observe(), first, LATER)
    assert second == first
    assert not status_changed(first, second)


def test_transition_time_moves_only_for_changed_conditions():
    first = compute_status(observe(), {}, NOW)
    pods = [unschedulable_pod("w-3", "Insufficient nvidia.com/gpu")]
    second = compute_status(
        observe(desired_replicas=3, deployment=deployment(replicas=3, updated=3, generation=2, observed=2), pods=pods),
        first,
        LATER,
    )
    assert status_changed(first, second)
    assert condition(second, "Degraded")["lastTransitionTime"] == LATER
    assert condition(second, "Ready")["lastTransitionTime"] == LATER
    assert condition(second, "MonitoringUnavailable")["lastTransitionTime"] == NOW  # still False
    assert second["lastReconcileTime"] == LATER


def test_foreign_conditions_and_fields_are_kept():
    stored = {"conditions": [{"type": "ScalingActive", "status": "True", "reason": "X"}], "selector": SELECTOR}
    st = compute_status(WorkloadObservation(generation=1, invalid_spec=Problem("InvalidSpec", "x: y")), stored, NOW)
    assert condition(st, "ScalingActive")["reason"] == "X"
    assert st["selector"] == SELECTOR
    assert "throughputOpsPerSec" not in st  # the autoscaler's fields are not this module's to write


def test_selector_string_is_sorted():
    assert selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
