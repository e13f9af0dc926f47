"""The workers' Deployment: one `worker` container configured by HDC_* (and OTEL_*) environment variables.

Secure by default (the restricted Pod Security Standard): non-root uid 10001, read-only root filesystem with
emptyDirs for /tmp and the state directory (or the persistence claim), no privilege escalation, no capabilities,
seccomp RuntimeDefault, no service-account token (the worker never calls the API server).

A local state backend (one replica's own SQLite store) rolls out with Recreate: the old pod stops before the new
one opens the state directory, which the worker refuses to share (builders/state.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from hdc_operator.builders.common import (
    CONTAINER_NAME,
    HTTP_PORT,
    HTTP_PORT_NAME,
    STATE_DIR,
    Manifest,
    labels,
    metadata,
    selector_labels,
)
from hdc_operator.builders.pvc import pvc_name
from hdc_operator.builders.state import state_env
from hdc_operator.names import GPU_RESOURCE
from hdc_operator.spec import Workload

UID = 10001
SHUTDOWN_GRACE_SECONDS = 25  # HDC_SHUTDOWN_GRACE_SECONDS; the pod gets 5 s more before SIGKILL
CONFIG_HASH_ANNOTATION = "hdcompute.io/config-hash"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
PROBE_PATHS = {"liveness": "/livez", "readiness": "/readyz", "startup": "/readyz"}


def env_value(value: Any) -> str:
    """An environment variable's text for a spec value: true/false, integers without '.0'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def worker_env(workload: Workload) -> dict[str, str]:
    """HDC_* variables (hd_compute.service.config) from the spec; OTEL_* ones come from tracing_env."""
    spec = workload.spec
    hdc, health, logging, bench = spec["hdc"], spec["health"], spec["logging"], spec["continuousBenchmark"]
    values = {
        "HDC_DIMENSION": hdc["dimension"],
        "HDC_VSA": hdc["vsa"],
        "HDC_DEVICE": hdc["device"],
        "HDC_HOST": "0.0.0.0",
        "HDC_PORT": HTTP_PORT,
        "HDC_STATE_DIR": STATE_DIR,
        "HDC_HEALTH_CUDA_MEMORY_MB": health["cudaMemoryThresholdMb"],
        "HDC_HEALTH_MEMORY_PERCENT": health["memoryThresholdPercent"],
        "HDC_HEALTH_DISK_PERCENT": health["diskThresholdPercent"],
        "HDC_LOG_LEVEL": logging["level"],
        "HDC_LOG_FORMAT": logging["format"],
        "HDC_BENCHMARK_ENABLED": bench["enabled"],
        "HDC_BENCHMARK_INTERVAL_SECONDS": bench["intervalSeconds"],
        "HDC_BENCHMARK_DEGRADATION_THRESHOLD": bench["degradationThreshold"],
        "HDC_SHUTDOWN_GRACE_SECONDS": SHUTDOWN_GRACE_SECONDS,
    }
    return {k: env_value(v) for k, v in values.items()}


def tracing_env(workload: Workload) -> dict[str, str]:
    """OTEL_* variables the worker's OpenTelemetry SDK reads (hd_compute.monitoring.tracing)."""
    tracing = workload.spec["tracing"]
    env = {
        "OTEL_SERVICE_NAME": "hdc-worker",
        "OTEL_RESOURCE_ATTRIBUTES": (
            f"k8s.namespace.name={workload.namespace},k8s.pod.name=$(POD_NAME),hdcompute.io.workload={workload.name}"
        ),
    }
    if not tracing["enabled"]:
        env["OTEL_SDK_DISABLED"] = "true"
        return env
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": tracing["otlpEndpoint"],
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": env_value(tracing["samplingRatio"]),
        }
    )
    return env


def tolerations(workload: Workload) -> list[Manifest]:
    """The user's tolerations, plus `nvidia.com/gpu` Exists NoSchedule when the pod asks for GPUs."""
    out = [dict(t) for t in workload.spec["scheduling"]["tolerations"]]
    if workload.gpus > 0 and GPU_TOLERATION not in out:
        out.append(dict(GPU_TOLERATION))
    return out


def resources(workload: Workload) -> Manifest:
    res = workload.spec["resources"]
    requests = {"cpu": str(res["cpu"]), "memory": str(res["memory"])}
    limits = {"memory": str(res["memory"])}
    if res["gpus"] > 0:
        limits[GPU_RESOURCE] = str(res["gpus"])
    return {"requests": requests, "limits": limits}


def probe(workload: Workload, kind: str) -> Manifest:
    timings = workload.spec["probes"][kind]
    return {
        "httpGet": {"path": PROBE_PATHS[kind], "port": HTTP_PORT_NAME, "scheme": "HTTP"},
        **{k: timings[k] for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")},
    }


def container_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def volumes(workload: Workload) -> list[Manifest]:
    state: dict[str, Any] = {"name": "state"}
    if workload.spec["persistence"]["enabled"]:
        state["persistentVolumeClaim"] = {"claimName": pvc_name(workload)}
    else:
        state["emptyDir"] = {}
    return [{"name": "tmp", "emptyDir": {}}, state]


# Kubernetes' own defaults, written out: the operator owns them (server-side apply), so that a change to Recreate
# removes them; a defaulted rollingUpdate that nobody owns would stay and make the API server refuse Recreate.
ROLLING_UPDATE = {"maxSurge": "25%", "maxUnavailable": "25%"}


def strategy(workload: Workload) -> Manifest:
    """Recreate for a local state backend (one pod owns the state directory at a time), else RollingUpdate."""
    if workload.state_backend == "local":
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": dict(ROLLING_UPDATE)}


def config_hash(parts: Mapping[str, Any]) -> str:
    """A short digest of what the worker is configured with; in a pod annotation, so a change rolls the pods."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_deployment(workload: Workload) -> Manifest:
    spec = workload.spec
    env = {**worker_env(workload), **tracing_env(workload)}
    container = {
        "name": CONTAINER_NAME,
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        "args": ["serve"],
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # POD_NAME first: OTEL_RESOURCE_ATTRIBUTES refers to it as $(POD_NAME).
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
        + [{"name": k, "value": v} for k, v in env.items()]
        + state_env(workload),
        "resources": resources(workload),
        "livenessProbe": probe(workload, "liveness"),
        "readinessProbe": probe(workload, "readiness"),
        "startupProbe": probe(workload, "startup"),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "state", "mountPath": STATE_DIR}],
    }
    scheduling = spec["scheduling"]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": SHUTDOWN_GRACE_SECONDS + 5,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes(workload),
    }
    if scheduling["nodeSelector"]:
        pod["nodeSelector"] = dict(scheduling["nodeSelector"])
    tol = tolerations(workload)
    if tol:
        pod["tolerations"] = tol
    if scheduling["affinity"]:
        pod["affinity"] = scheduling["affinity"]
    if scheduling["priorityClassName"]:
        pod["priorityClassName"] = scheduling["priorityClassName"]
    annotations = {
        CONFIG_HASH_ANNOTATION: config_hash(
            {
                "env": env,
                "state": state_env(workload),
                "image": spec["image"],
                "resources": container["resources"],
                "volumes": pod["volumes"],
            }
        ),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }
    deployment_spec = {"strategy": strategy(workload)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(workload, workload.name),
        "spec": {
            **deployment_spec,
            "replicas": workload.desired_replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(workload)},
            "template": {"metadata": {"labels": labels(workload), "annotations": annotations}, "spec": pod},
        },
    }
