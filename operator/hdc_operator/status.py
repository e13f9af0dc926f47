"""Pure status computation: an HDCWorkload's children and pods -> its `.status` (no kopf, no client).

    observed = WorkloadObservation(generation=3, desired_replicas=2, selector="app.kubernetes.io/name=hdc-worker,...",
                                   deployment=<live Deployment dict or None>, pods=[<pod dicts>],
                                   missing_monitoring=("servicemonitors.monitoring.coreos.com",))
    new = compute_status(observed, stored=body.get("status") or {}, now=<the time, RFC 3339>)
    if status_changed(stored, new):
        ...write new (a merge patch of exactly these keys)...

Conditions (each with observedGeneration, reason, message, lastTransitionTime):
  Ready                  True when every desired replica is ready on the current generation's pods.
  Progressing            True while a rollout (or scale) is under way; False with RolloutComplete when done,
                         ProgressDeadlineExceeded when the Deployment gave up, InvalidSpec when nothing can roll out.
  Degraded               True with the most important problem (PROBLEM_REASONS order): InvalidSpec, an API refusal
                         (QuotaExceeded, AdmissionDenied, Forbidden, Invalid, ApiRefused, ApiUnavailable),
                         CloudNativePGMissing (spec.state.postgres.cluster without CloudNativePG installed),
                         InsufficientGPU (pods Unschedulable for nvidia.com/gpu), Unschedulable, ImagePullBackOff,
                         CrashLoopBackOff, ReplicaFailure, ProgressDeadlineExceeded, InternalError (an operator bug,
                         logged as reconcile_crashed); False with AsExpected.
  MonitoringUnavailable  True when the spec enables a ServiceMonitor or PrometheusRule whose prometheus-operator CRD
                         is not installed (that child is skipped); False otherwise.
lastTransitionTime changes only when a condition's status changes. lastReconcileTime changes only when something
else in the status changed, so an idle workload's status is never rewritten.
Phase: Failed (invalid spec), Degraded (a problem), Pending (no Deployment yet), Progressing, Running.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .names import GPU_RESOURCE

OWNED_CONDITIONS = ("Ready", "Progressing", "Degraded", "MonitoringUnavailable")
# Keys of .status this module owns; the autoscaler owns desiredReplicas' neighbours (lastScale*, observed*).
OWNED_KEYS = (
    "observedGeneration",
    "phase",
    "replicas",
    "readyReplicas",
    "desiredReplicas",
    "selector",
    "conditions",
    "lastReconcileTime",
)
# Most important first: the first problem found is Degraded's reason.
PROBLEM_REASONS = (
    "InvalidSpec",
    "QuotaExceeded",
    "AdmissionDenied",
    "Forbidden",
    "Invalid",
    "ApiRefused",
    "ApiUnavailable",
    "CloudNativePGMissing",
    "InsufficientGPU",
    "Unschedulable",
    "ImagePullBackOff",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "ReplicaFailure",
    "ProgressDeadlineExceeded",
    "InternalError",
)
# spec.state.postgres.cluster where CloudNativePG is not installed: no database, so the pods cannot start (their
# Secret never appears); said before the pods' CreateContainerConfigError that follows from it.
CNPG_MISSING = "CloudNativePGMissing"
CNPG_MISSING_MESSAGE = (
    "spec.state.postgres.cluster needs CloudNativePG, and this cluster does not serve clusters.postgresql.cnpg.io: "
    "install CloudNativePG, or point spec.state.postgres.secretName at an existing database"
)
_WAITING_REASONS = {
    "ImagePullBackOff": "ImagePullBackOff",
    "ErrImagePull": "ImagePullBackOff",
    "InvalidImageName": "ImagePullBackOff",
    "CrashLoopBackOff": "CrashLoopBackOff",
    "CreateContainerConfigError": "CreateContainerConfigError",
}


@dataclass(frozen=True)
class Problem:
    reason: str  # one of PROBLEM_REASONS
    message: str


@dataclass(frozen=True)
class WorkloadObservation:
    """What the operator saw of one workload in one reconcile."""

    generation: int
    desired_replicas: int | None = None  # the Deployment's spec.replicas as built; None when the spec is invalid
    selector: str | None = None  # the pods' label selector, `k=v,k=v`
    deployment: Mapping[str, Any] | None = None  # the live Deployment (None: not there yet)
    pods: Sequence[Mapping[str, Any]] = ()
    invalid_spec: Problem | None = None
    apply_error: Problem | None = None  # the API server refused a child (or was unreachable)
    missing_monitoring: tuple[str, ...] = ()  # CRDs the spec needs but the cluster lacks
    monitoring_wanted: bool = False  # whether the spec enables a ServiceMonitor or PrometheusRule at all
    extra_problems: tuple[Problem, ...] = field(default=())


def selector_string(match_labels: Mapping[str, str]) -> str:
    """{"b": "2", "a": "1"} -> "a=1,b=2" (the scale subresource's status.selector form)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def _condition(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == kind:
            return c
    return None


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Problems of individual pods: unschedulable (for GPUs or otherwise), image pulls, crash loops."""
    found: dict[str, list[tuple[str, str]]] = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        pod_name = meta.get("name", "?")
        scheduled = _condition(status.get("conditions"), "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            message = scheduled.get("message") or "unschedulable"
            reason = "InsufficientGPU" if f"Insufficient {GPU_RESOURCE}" in message else "Unschedulable"
            found.setdefault(reason, []).append((pod_name, message))
        for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            waiting_reason = _WAITING_REASONS.get(waiting.get("reason", ""))
            if waiting_reason:
                message = waiting.get("message") or waiting.get("reason")
                found.setdefault(waiting_reason, []).append((pod_name, f"container {cs.get('name', '?')}: {message}"))
    problems = []
    for reason in PROBLEM_REASONS:
        if reason in found:
            pods_with = found[reason]
            first_pod, first_message = pods_with[0]
            more = f" (and {len(pods_with) - 1} more pods)" if len(pods_with) > 1 else ""
            problems.append(Problem(reason, f"pod {first_pod}: {first_message}{more}"))
    return problems


def deployment_problems(deployment: Mapping[str, Any] | None) -> list[Problem]:
    """The Deployment controller's own failure conditions (pod creation refused, rollout deadline passed)."""
    if not deployment:
        return []
    conditions = (deployment.get("status") or {}).get("conditions")
    problems = []
    failure = _condition(conditions, "ReplicaFailure")
    if failure and failure.get("status") == "True":
        problems.append(
            Problem(
                "ReplicaFailure",
                f"{failure.get('reason', 'ReplicaFailure')}: {failure.get('message', '')}".rstrip(": "),
            )
        )
    progressing = _condition(conditions, "Progressing")
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        problems.append(Problem("ProgressDeadlineExceeded", progressing.get("message") or "rollout deadline exceeded"))
    return problems


def _rollout(observed: WorkloadObservation) -> tuple[int, int, int, bool]:
    """(replicas, ready, updated, complete) of the live Deployment against the desired replica count."""
    dep = observed.deployment
    if not dep:
        return 0, 0, 0, False
    st = dep.get("status") or {}
    replicas, ready, updated = (int(st.get(k) or 0) for k in ("replicas", "readyReplicas", "updatedReplicas"))
    desired = (
        observed.desired_replicas
        if observed.desired_replicas is not None
        else int((dep.get("spec") or {}).get("replicas") or 0)
    )
    generation = (dep.get("metadata") or {}).get("generation") or 0
    current = int(st.get("observedGeneration") or 0) >= int(generation)
    live_replicas = (dep.get("spec") or {}).get("replicas")
    live_desired = int(live_replicas) if live_replicas is not None else desired
    complete = current and live_desired == desired and updated >= desired and ready >= desired and replicas == desired
    return replicas, ready, updated, complete


def compute_status(observed: WorkloadObservation, stored: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The status this module owns (OWNED_KEYS), merged with `stored`'s foreign conditions."""
    stored = stored or {}
    gen = observed.generation
    replicas, ready, updated, complete = _rollout(observed)
    problems: list[Problem] = []
    if observed.invalid_spec:
        problems.append(observed.invalid_spec)
    if observed.apply_error:
        problems.append(observed.apply_error)
    problems += pod_problems(observed.pods) + deployment_problems(observed.deployment) + list(observed.extra_problems)
    problems.sort(
        key=lambda p: PROBLEM_REASONS.index(p.reason) if p.reason in PROBLEM_REASONS else len(PROBLEM_REASONS)
    )
    desired = observed.desired_replicas

    if observed.invalid_spec:
        phase = "Failed"
    elif problems:
        phase = "Degraded"
    elif observed.deployment is None:
        phase = "Pending"
    elif complete:
        phase = "Running"
    else:
        phase = "Progressing"

    ready_desc = f"{ready}/{desired if desired is not None else '?'} replicas ready"
    if observed.invalid_spec:
        ready_c = ("False", "InvalidSpec", observed.invalid_spec.message)
        progressing_c = ("False", "InvalidSpec", "nothing rolls out until the spec is fixed")
    else:
        if complete:
            ready_c = ("True", "AllReplicasReady", ready_desc)
        elif problems:
            ready_c = ("False", problems[0].reason, f"{ready_desc}; {problems[0].message}")
        elif observed.deployment is None:
            ready_c = ("False", "DeploymentMissing", "the Deployment does not exist yet")
        else:
            ready_c = ("False", "ReplicasNotReady", ready_desc)
        if complete:
            progressing_c = ("False", "RolloutComplete", ready_desc)
        elif any(p.reason == "ProgressDeadlineExceeded" for p in problems):
            progressing_c = (
                "False",
                "ProgressDeadlineExceeded",
                next(p.message for p in problems if p.reason == "ProgressDeadlineExceeded"),
            )
        else:
            progressing_c = ("True", "RollingOut", f"{updated} updated, {ready_desc}")
    degraded_c = (
        ("True", problems[0].reason, problems[0].message) if problems else ("False", "AsExpected", "no problem found")
    )
    if observed.missing_monitoring:
        monitoring_c = (
            "True",
            "PrometheusOperatorCRDsMissing",
            "the cluster lacks "
            + ", ".join(observed.missing_monitoring)
            + ": those monitoring children are skipped until the CRDs are installed",
        )
    elif observed.monitoring_wanted:
        monitoring_c = ("False", "MonitoringCRDsPresent", "the prometheus-operator CRDs the spec needs are installed")
    else:
        monitoring_c = ("False", "MonitoringDisabled", "the spec enables no ServiceMonitor or PrometheusRule")

    new_conditions = {
        "Ready": ready_c,
        "Progressing": progressing_c,
        "Degraded": degraded_c,
        "MonitoringUnavailable": monitoring_c,
    }
    conditions = []
    for kind in OWNED_CONDITIONS:
        status, reason, message = new_conditions[kind]
        old = _condition(stored.get("conditions"), kind)
        transition = (
            old.get("lastTransitionTime")
            if old and old.get("status") == status and old.get("lastTransitionTime")
            else now
        )
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message[:32768],
                "observedGeneration": gen,
                "lastTransitionTime": transition,
            }
        )
    conditions += [dict(c) for c in stored.get("conditions") or () if c.get("type") not in OWNED_CONDITIONS]

    new: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": ready,
        "conditions": conditions,
    }
    if desired is not None:
        new["desiredReplicas"] = desired
    elif "desiredReplicas" in stored:
        new["desiredReplicas"] = stored["desiredReplicas"]
    if observed.selector:
        new["selector"] = observed.selector
    elif "selector" in stored:
        new["selector"] = stored["selector"]
    new["lastReconcileTime"] = (
        stored.get("lastReconcileTime") if not _differs(stored, new) and stored.get("lastReconcileTime") else now
    )
    return new


def _differs(stored: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    keys = [k for k in OWNED_KEYS if k != "lastReconcileTime"]
    return any(stored.get(k) != new.get(k) for k in keys)


def status_changed(stored: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether `new` (from compute_status) must be written: any owned key differs from the stored status."""
    stored = stored or {}
    return any(stored.get(k) != new.get(k) for k in OWNED_KEYS)


def condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind` in a status, or None."""
    return _condition((status or {}).get("conditions"), kind)
