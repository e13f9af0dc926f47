"""The operator as a real process against the real control plane (kube-apiserver, controller-manager, scheduler,
kwok's fake GPU nodes): children, status, scale, drift, pruning, garbage collection, refusals, restarts, idleness.

Each test gets its own namespace and an operator scoped to it (resync every few seconds to keep the tests short).
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import time

import paths
import pytest
import yaml
from operator_process import OperatorProcess

from hdc_operator.apply import KubeApi

pytestmark = pytest.mark.k8s

REPO = paths.REPO
CRD = REPO / "crds" / "hdcworkload.yaml"
HDCW = ("hdcompute.io/v1alpha1", "hdcworkloads")
CHILDREN = [
    ("apps/v1", "deployments", "Deployment", ""),
    ("v1", "services", "Service", ""),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", ""),
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor", ""),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule", ""),
    ("v1", "configmaps", "ConfigMap", "-dashboards"),
]
RESYNC_S = 4


def kubectl_bin() -> str:
    out = subprocess.run(
        [str(REPO / "hack" / "build-tools.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return str(pathlib.Path(out.stdout.strip()) / "kubectl")


def kubectl(cluster, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [kubectl_bin(), "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def wait_for(fn, timeout_s: float = 60, what: str = "condition", proc: OperatorProcess | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the API server may be restarting
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    tail = f"\noperator log:\n{proc.log()[-5000:]}" if proc else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}{tail}")


@pytest.fixture(scope="session")
def crd_installed(k8s_cluster):
    kubectl(k8s_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(k8s_cluster, "wait", "--for", "condition=Established", "--timeout=60s", "crd/hdcworkloads.hdcompute.io")
    return k8s_cluster


CPU_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "hdc-cpu-0",
        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        "labels": {
            "kubernetes.io/hostname": "hdc-cpu-0",
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        },
    },
    "status": {
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
    },
}


@pytest.fixture(scope="session")
def cpu_node(crd_installed):
    """hack/cluster.sh makes only tainted GPU nodes; workloads with gpus: 0 need an untainted CPU node (kwok's)."""
    kubectl(crd_installed, "apply", "-f", "-", input=json.dumps(CPU_NODE))
    kubectl(crd_installed, "wait", "--for", "condition=Ready", "--timeout=60s", "node/hdc-cpu-0")
    return crd_installed


@pytest.fixture
def api(k8s_cluster) -> KubeApi:
    return KubeApi(k8s_cluster.api)


def start_operator(cluster, tmp_path, namespace: str, **env) -> OperatorProcess:
    return OperatorProcess(
        cluster.kubeconfig,
        tmp_path,
        "--namespace",
        namespace,
        "--resync-interval",
        str(RESYNC_S),
        HDC_OPERATOR_CAPABILITY_TTL="1",
        HDC_OPERATOR_BACKOFF_MAX="4",
        **env,
    ).start()


@pytest.fixture
def operator(crd_installed, cpu_node, k8s_namespace, tmp_path, api):
    proc = start_operator(crd_installed, tmp_path, k8s_namespace)
    yield proc
    # Workloads carry the operator's finalizer: delete them while it still runs, so the namespace can go.
    try:
        for w in api.list(*HDCW, k8s_namespace):
            kubectl(
                crd_installed, "delete", "hdcw", w["metadata"]["name"], "-n", k8s_namespace, "--wait=false", check=False
            )
        if proc.alive():
            wait_for(lambda: not api.list(*HDCW, k8s_namespace), 60, "workloads deleted")
    finally:
        proc.stop()
    assert "reconcile_crashed" not in proc.log(), proc.log()[-5000:]


def workload(name: str, namespace: str, **spec) -> dict:
    return {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(cluster, obj: dict) -> None:
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(obj))


def hdcw(api, ns, name) -> dict | None:
    return api.get(*HDCW, ns, name)


def cond(obj, kind) -> dict:
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == kind), {})


def children(api, ns, name) -> dict[str, dict]:
    found = {}
    for api_version, plural, kind, suffix in CHILDREN:
        obj = api.get(api_version, plural, ns, name + suffix)
        if obj is not None:
            found[kind] = obj
    return found


def running(api, ns, name, replicas):
    def check():
        w = hdcw(api, ns, name)
        st = (w or {}).get("status", {})
        return (
            w
            if st.get("phase") == "Running"
            and st.get("readyReplicas") == replicas
            and st.get("observedGeneration") == w["metadata"]["generation"]
            else None
        )

    return check


def versions(api, ns, name) -> dict[str, str]:
    out = {k: v["metadata"]["resourceVersion"] for k, v in children(api, ns, name).items()}
    out["HDCWorkload"] = hdcw(api, ns, name)["metadata"]["resourceVersion"]
    return out


def events(api, ns, name) -> list[dict]:
    return [
        e
        for e in api.list("v1", "events", ns)
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "HDCWorkload"
    ]


def test_workload_gets_owned_children_status_and_printer_columns(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    apply(crd_installed, workload("alpha", ns, replicas=2))
    w = wait_for(running(api, ns, "alpha", 2), 60, "alpha Running with 2 ready", operator)
    uid = w["metadata"]["uid"]
    kids = children(api, ns, "alpha")
    assert set(kids) == {kind for _, _, kind, _ in CHILDREN}
    for kind, obj in kids.items():
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["uid"], r["controller"], r["blockOwnerDeletion"]) for r in refs] == [(uid, True, True)], kind
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "hdc-operator"
        assert any(
            m["manager"] == "hdc-operator" and m["operation"] == "Apply" for m in obj["metadata"]["managedFields"]
        ), kind
    st = w["status"]
    assert st["replicas"] == 2
    assert st["selector"] == "app.kubernetes.io/instance=alpha,app.kubernetes.io/name=hdc-worker"
    assert cond(w, "Ready")["status"] == "True" and cond(w, "Degraded")["status"] == "False"
    assert cond(w, "MonitoringUnavailable")["status"] == "False"
    assert st["lastReconcileTime"]
    table = kubectl(crd_installed, "get", "hdcw", "alpha", "-n", ns, "--no-headers").stdout.split()
    # NAME VSA DIM GPUS REPLICAS READY [THROUGHPUT] STATUS AGE
    assert (
        table[:7] == ["alpha", "MAP", "10000", "1", "2", "2", "Running"]
        or table[:6] == ["alpha", "MAP", "10000", "1", "2", "2"]
        and "Running" in table
    )
    pods = api.list("v1", "pods", ns, "hdcompute.io/workload=alpha")
    assert len(pods) == 2 and all(
        p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1" for p in pods
    )
    assert any(e["reason"] == "Created" for e in events(api, ns, "alpha"))
    assert operator.metric_sum("hdc_operator_managed_workloads") == 1
    # a spec edit: applied to the Deployment, an Updated Event names the generation, status catches up
    kubectl(
        crd_installed, "patch", "hdcw", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"hdc":{"dimension":4096}}}'
    )

    def dimension_applied():
        env = api.get("apps/v1", "deployments", ns, "alpha")["spec"]["template"]["spec"]["containers"][0]["env"]
        return {e["name"]: e.get("value") for e in env}.get("HDC_DIMENSION") == "4096"

    wait_for(dimension_applied, 30, "HDC_DIMENSION=4096 in the Deployment", operator)
    wait_for(
        lambda: any(e["reason"] == "Updated" and "generation 2" in e["message"] for e in events(api, ns, "alpha")),
        30,
        "an Updated Event",
        operator,
    )
    wait_for(
        lambda: hdcw(api, ns, "alpha")["status"].get("observedGeneration") == 2, 30, "observedGeneration 2", operator
    )


def test_examples_reconcile(operator, k8s_namespace, api, crd_installed):
    """Every shipped example reconciles without a problem on the local cluster a user brings up (its CPU node
    takes cpu-only.yaml; with-postgres.yaml names a Secret the user creates)."""
    files = sorted(glob.glob(str(REPO / "deploy" / "examples" / "*.yaml")))
    assert files, "deploy/examples/*.yaml is empty"
    kubectl(crd_installed, "apply", "-n", k8s_namespace, *[a for f in files for a in ("-f", f)])
    names = [d["metadata"]["name"] for f in files for d in yaml.safe_load_all(open(f)) if d]

    def all_reconciled():
        ws = [hdcw(api, k8s_namespace, n) for n in names]
        return all(
            w
            and w.get("status", {}).get("observedGeneration") == w["metadata"]["generation"]
            and "Deployment" in children(api, k8s_namespace, w["metadata"]["name"])
            and cond(w, "Degraded").get("status") == "False"
            for w in ws
        )

    wait_for(all_reconciled, 90, f"examples {names} reconciled without problems", operator)


def test_more_gpus_than_any_node_is_insufficient_gpu(operator, k8s_namespace, api, crd_installed):
    apply(crd_installed, workload("greedy", k8s_namespace, resources={"gpus": 16}))

    def degraded():
        w = hdcw(api, k8s_namespace, "greedy")
        return w if cond(w, "Degraded").get("reason") == "InsufficientGPU" else None

    w = wait_for(degraded, 60, "Degraded/InsufficientGPU", operator)
    assert w["status"]["phase"] == "Degraded" and cond(w, "Degraded")["status"] == "True"
    assert "nvidia.com/gpu" in cond(w, "Degraded")["message"]
    assert cond(w, "Ready")["status"] == "False"
    assert any(
        e["type"] == "Warning" and e["reason"] == "InsufficientGPU" for e in events(api, k8s_namespace, "greedy")
    )


# hack/cluster/kwok-stages.yaml gives pods with these images what a kubelet reports for them.
POD_FAILURES = [
    ("hdc-test.invalid/image-pull-backoff:never", "ImagePullBackOff", "Back-off pulling image"),
    ("hdc-test.invalid/crash-loop-backoff:always", "CrashLoopBackOff", "back-off"),
]


@pytest.mark.parametrize("image,reason,message", POD_FAILURES, ids=[r for _, r, _ in POD_FAILURES])
def test_failing_pods_make_the_workload_degraded_until_the_image_is_fixed(
    operator, k8s_namespace, api, crd_installed, image, reason, message
):
    ns, name = k8s_namespace, "broken"
    apply(crd_installed, workload(name, ns, image=image, replicas=2, resources={"gpus": 0}))

    def degraded():
        w = hdcw(api, ns, name)
        return w if cond(w, "Degraded").get("reason") == reason else None

    w = wait_for(degraded, 60, f"Degraded/{reason}", operator)
    pods = api.list("v1", "pods", ns, f"hdcompute.io/workload={name}")
    waiting = [
        cs["state"]["waiting"]["reason"]
        for p in pods
        for cs in p["status"].get("containerStatuses", [])
        if "waiting" in cs.get("state", {})
    ]
    assert waiting and set(waiting) == {reason}, waiting  # the kubelet-like state came from the Stage, not a mock
    assert w["status"]["phase"] == "Degraded" and cond(w, "Degraded")["status"] == "True"
    assert message in cond(w, "Degraded")["message"]
    assert cond(w, "Ready")["status"] == "False" and w["status"].get("readyReplicas", 0) == 0
    assert any(e["type"] == "Warning" and e["reason"] == reason for e in events(api, ns, name))
    table = kubectl(crd_installed, "get", "hdcw", name, "-n", ns, "--no-headers").stdout.split()
    assert "Degraded" in table

    # The user fixes the image: new pods come up, the condition clears, the workload runs.
    apply(
        crd_installed,
        workload(name, ns, image="ghcr.io/hd-compute/hdc-worker:0.1.0", replicas=2, resources={"gpus": 0}),
    )
    w = wait_for(running(api, ns, name, 2), 90, "Running after the image was fixed", operator)
    assert cond(w, "Degraded")["status"] == "False" and cond(w, "Ready")["status"] == "True"


def test_kubectl_scale_gives_three_replicas(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    apply(crd_installed, workload("scaly", ns, resources={"gpus": 0}))
    wait_for(running(api, ns, "scaly", 1), 60, "scaly Running", operator)
    kubectl(crd_installed, "scale", "hdcw/scaly", "--replicas=3", "-n", ns)
    wait_for(
        lambda: api.get("apps/v1", "deployments", ns, "scaly")["spec"]["replicas"] == 3,
        30,
        "Deployment at 3 replicas",
        operator,
    )
    w = wait_for(running(api, ns, "scaly", 3), 60, "3 ready replicas", operator)
    assert w["status"]["replicas"] == 3
    assert any(e["reason"] == "Scaled" and "from 1 to 3" in e["message"] for e in events(api, ns, "scaly"))
    assert operator.metric_sum("hdc_operator_scale_decisions_total", direction="up") >= 1
    assert operator.metric_sum("hdc_operator_desired_replicas", namespace=ns, workload="scaly") == 3
    wait_for(
        lambda: operator.metric_sum("hdc_operator_replicas", namespace=ns, workload="scaly") == 3,
        30,
        "hdc_operator_replicas at 3",
        operator,
    )
    scale = kubectl(crd_installed, "get", "hdcw", "scaly", "-n", ns, "--subresource=scale", "-o", "json").stdout
    assert json.loads(scale)["status"]["replicas"] == 3


def test_drift_is_corrected(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    apply(crd_installed, workload("drifty", ns, replicas=2, resources={"gpus": 0}))
    wait_for(running(api, ns, "drifty", 2), 60, "drifty Running", operator)
    old_uid = api.get("v1", "services", ns, "drifty")["metadata"]["uid"]
    kubectl(crd_installed, "delete", "service", "drifty", "-n", ns)
    wait_for(
        lambda: (api.get("v1", "services", ns, "drifty") or {}).get("metadata", {}).get("uid") not in (None, old_uid),
        30,
        "Service recreated",
        operator,
    )
    kubectl(crd_installed, "scale", "deployment/drifty", "--replicas=5", "-n", ns)
    wait_for(
        lambda: api.get("apps/v1", "deployments", ns, "drifty")["spec"]["replicas"] == 2,
        30,
        "Deployment replicas restored to 2",
        operator,
    )
    kubectl(crd_installed, "set", "image", "deployment/drifty", "worker=evil:latest", "-n", ns, check=False)
    kubectl(
        crd_installed,
        "patch",
        "deployment",
        "drifty",
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:1"}]),
    )
    image = hdcw(api, ns, "drifty")["spec"]["image"]
    wait_for(
        lambda: (
            api.get("apps/v1", "deployments", ns, "drifty")["spec"]["template"]["spec"]["containers"][0]["image"]
            == image
        ),
        30,
        "image restored",
        operator,
    )
    kubectl(crd_installed, "delete", "configmap", "drifty-dashboards", "-n", ns)
    wait_for(lambda: api.get("v1", "configmaps", ns, "drifty-dashboards"), 30, "dashboards restored", operator)
    assert any(e["reason"] == "DriftCorrected" for e in events(api, ns, "drifty"))


def test_children_no_longer_wanted_are_pruned(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    apply(
        crd_installed,
        workload("prune", ns, resources={"gpus": 0}, autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 3}),
    )
    wait_for(
        lambda: (
            api.get("autoscaling/v2", "horizontalpodautoscalers", ns, "prune")
            and api.get("monitoring.coreos.com/v1", "servicemonitors", ns, "prune")
        ),
        30,
        "HPA and ServiceMonitor",
        operator,
    )
    apply(
        crd_installed,
        workload(
            "prune",
            ns,
            resources={"gpus": 0},
            autoscaling={"mode": "none"},
            monitoring={"serviceMonitor": {"enabled": False}},
        ),
    )
    wait_for(
        lambda: (
            api.get("autoscaling/v2", "horizontalpodautoscalers", ns, "prune") is None
            and api.get("monitoring.coreos.com/v1", "servicemonitors", ns, "prune") is None
        ),
        30,
        "HPA and ServiceMonitor pruned",
        operator,
    )
    assert api.get("monitoring.coreos.com/v1", "prometheusrules", ns, "prune")
    assert any(e["reason"] == "Pruned" for e in events(api, ns, "prune"))


def test_deleting_the_workload_removes_its_children(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    apply(crd_installed, workload("doomed", ns, resources={"gpus": 0}))
    wait_for(running(api, ns, "doomed", 1), 60, "doomed Running", operator)
    kubectl(crd_installed, "delete", "hdcw", "doomed", "-n", ns, "--wait=true", "--timeout=60s")
    # The kube-controller-manager's garbage collector follows the ownerReferences.
    wait_for(
        lambda: not children(api, ns, "doomed") and not api.list("v1", "pods", ns, "hdcompute.io/workload=doomed"),
        90,
        "children garbage-collected",
        operator,
    )
    assert operator.alive()


def test_missing_monitoring_crds_give_a_condition_not_a_crash(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    crds = ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"]
    saved = [api.get("apiextensions.k8s.io/v1", "customresourcedefinitions", None, c) for c in crds]
    assert all(saved), "the cluster lacks the prometheus-operator CRDs hack/cluster.sh installs"
    try:
        kubectl(crd_installed, "delete", "crd", *crds, "--wait=true")
        apply(crd_installed, workload("blind", ns, resources={"gpus": 0}))

        def unavailable():
            w = hdcw(api, ns, "blind")
            return (
                w
                if cond(w, "MonitoringUnavailable").get("status") == "True" and w["status"].get("phase") == "Running"
                else None
            )

        w = wait_for(unavailable, 60, "MonitoringUnavailable and Running", operator)
        assert "servicemonitors.monitoring.coreos.com" in cond(w, "MonitoringUnavailable")["message"]
        assert cond(w, "Degraded")["status"] == "False"
        assert set(children(api, ns, "blind")) == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    finally:
        for obj in saved:
            meta = obj["metadata"]
            clean = {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {
                    "name": meta["name"],
                    "labels": meta.get("labels", {}),
                    "annotations": {
                        k: v
                        for k, v in meta.get("annotations", {}).items()
                        if k != "kubectl.kubernetes.io/last-applied-configuration"
                    },
                },
                "spec": obj["spec"],
            }
            kubectl(crd_installed, "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(clean))
        kubectl(crd_installed, "wait", "--for", "condition=Established", "--timeout=60s", *[f"crd/{c}" for c in crds])
    w = wait_for(
        lambda: (lambda w: w if cond(w, "MonitoringUnavailable").get("status") == "False" else None)(
            hdcw(api, ns, "blind")
        ),
        60,
        "MonitoringUnavailable back to False",
        operator,
    )
    wait_for(
        lambda: api.get("monitoring.coreos.com/v1", "servicemonitors", ns, "blind"),
        60,
        "ServiceMonitor created once the CRD is back",
        operator,
    )
    assert operator.alive()


def assert_deployment_refused_and_retried(operator, api, ns: str, name: str, reason: str, message_part: str) -> None:
    """The API server refuses the workload's Deployment: Degraded/<reason> naming the cause, the other children
    applied all the same, a Warning Event, and a retry (the reconcile error counter moves)."""

    def refused():
        w = hdcw(api, ns, name)
        return w if cond(w, "Degraded").get("reason") == reason else None

    w = wait_for(refused, 60, f"Degraded/{reason}", operator)
    assert message_part in cond(w, "Degraded")["message"], cond(w, "Degraded")
    assert w["status"]["phase"] == "Degraded"
    assert api.get("apps/v1", "deployments", ns, name) is None
    assert api.get("v1", "services", ns, name)
    # the Event is posted after the status write: wait for it rather than race it
    wait_for(
        lambda: any(e["type"] == "Warning" and e["reason"] == reason for e in events(api, ns, name)),
        30,
        f"a Warning Event {reason}",
        operator,
    )
    errors_before = operator.metric_sum("hdc_operator_reconcile_errors_total", reason=reason)
    wait_for(
        lambda: operator.metric_sum("hdc_operator_reconcile_errors_total", reason=reason) > errors_before,
        30,
        "a retry",
        operator,
    )


def assert_recovered(operator, api, ns: str, name: str, what: str) -> None:
    w = wait_for(running(api, ns, name, 1), 90, what, operator)
    assert cond(w, "Degraded")["status"] == "False"
    assert any(e["reason"] == "Recovered" for e in events(api, ns, name))


def test_quota_refusal_is_a_condition_and_is_retried(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-deployments", "namespace": ns},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }
    apply(crd_installed, quota)
    wait_for(
        lambda: (api.get("v1", "resourcequotas", ns, "no-deployments") or {}).get("status", {}).get("hard"),
        30,
        "quota observed by the quota controller",
    )
    apply(crd_installed, workload("quota", ns, resources={"gpus": 0}))
    assert_deployment_refused_and_retried(operator, api, ns, "quota", "QuotaExceeded", "exceeded quota")
    kubectl(crd_installed, "delete", "resourcequota", "no-deployments", "-n", ns)
    assert_recovered(operator, api, ns, "quota", "Running once the quota is lifted")


def test_admission_policy_refusal_is_a_condition_and_is_retried(operator, k8s_namespace, api, crd_installed):
    """A ValidatingAdmissionPolicy (the API server's own CEL admission, no webhook) refuses the Deployment:
    Degraded/AdmissionDenied with the policy's message, a Warning Event, retries; Running once it is lifted."""
    ns = k8s_namespace
    policy_name = f"hdc-test-no-deployments-{ns}"  # cluster-scoped: a DNS subdomain, up to 253 characters
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.metadata.name != 'admission'",
                    "message": "no Deployment named admission in this namespace",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }
    try:
        apply(crd_installed, policy)
        apply(crd_installed, binding)

        def policy_in_force():  # the API server compiles and loads a policy a moment after it is stored
            out = kubectl(
                crd_installed,
                "create",
                "deployment",
                "admission",
                "--image=x",
                "-n",
                ns,
                "--dry-run=server",
                check=False,
            )
            return out.returncode != 0 and "denied request" in out.stderr

        wait_for(policy_in_force, 60, "the admission policy in force")
        apply(crd_installed, workload("admission", ns, resources={"gpus": 0}))
        assert_deployment_refused_and_retried(
            operator, api, ns, "admission", "AdmissionDenied", "no Deployment named admission"
        )
    finally:
        kubectl(
            crd_installed, "delete", "validatingadmissionpolicybinding", policy_name, "--ignore-not-found", check=False
        )
        kubectl(crd_installed, "delete", "validatingadmissionpolicy", policy_name, "--ignore-not-found", check=False)
    assert_recovered(operator, api, ns, "admission", "Running once the policy is lifted")


def test_idle_operator_writes_nothing(operator, k8s_namespace, api, crd_installed):
    ns = k8s_namespace
    for name in ("idle-a", "idle-b"):
        apply(crd_installed, workload(name, ns, replicas=2, resources={"gpus": 0}))
    for name in ("idle-a", "idle-b"):
        wait_for(running(api, ns, name, 2), 60, f"{name} Running", operator)
    time.sleep(2)  # the last status write's own watch event comes back
    before = {n: versions(api, ns, n) for n in ("idle-a", "idle-b")}
    writes, reconciles = operator.writes(), operator.metric_sum("hdc_operator_reconciles_total")
    time.sleep(3 * RESYNC_S + 2)
    assert operator.metric_sum("hdc_operator_reconciles_total") >= reconciles + 4, "the resync did not run"
    assert operator.writes() == writes, "an idle operator wrote to the API"
    assert {n: versions(api, ns, n) for n in ("idle-a", "idle-b")} == before


def test_operator_restart_makes_no_duplicates_and_no_updates(operator, k8s_namespace, api, crd_installed, tmp_path):
    ns = k8s_namespace
    apply(crd_installed, workload("steady", ns, replicas=2, resources={"gpus": 0}))
    wait_for(running(api, ns, "steady", 2), 60, "steady Running", operator)
    time.sleep(2)
    before = versions(api, ns, "steady")
    operator.stop()
    operator.start()
    time.sleep(2 * RESYNC_S + 2)
    assert operator.metric_sum("hdc_operator_reconciles_total") >= 1
    assert operator.writes() == 0, operator.log()[-3000:]
    assert versions(api, ns, "steady") == before
    for api_version, plural, kind, _ in CHILDREN:
        assert len(api.list(api_version, plural, ns, "hdcompute.io/workload=steady")) == 1, kind


def test_apiserver_restart_is_survived(operator, k8s_namespace, api, crd_installed, monkeypatch):
    ns = k8s_namespace
    apply(crd_installed, workload("sturdy", ns, resources={"gpus": 0}))
    wait_for(running(api, ns, "sturdy", 1), 60, "sturdy Running", operator)
    monkeypatch.setenv("HDC_STOP_GRACE_S", "1")  # a hard stop, as a crash would be
    crd_installed.stop_component("kube-apiserver")
    time.sleep(2)
    assert operator.alive()
    crd_installed.start_component("kube-apiserver")
    # kube-controller-manager and kube-scheduler exit when they could not renew their leader lease while the API
    # server was away (a kubelet would restart them); start_component starts whichever of them stopped.
    time.sleep(3)
    crd_installed.start_component("kube-controller-manager")
    kubectl(crd_installed, "scale", "hdcw/sturdy", "--replicas=2", "-n", ns)
    wait_for(running(api, ns, "sturdy", 2), 120, "converged after the restart", operator)
    kubectl(crd_installed, "delete", "service", "sturdy", "-n", ns)
    wait_for(lambda: api.get("v1", "services", ns, "sturdy"), 60, "drift corrected after the restart", operator)
    assert operator.alive()


def peered_replicas(cluster, tmp_path, ns: str, *priorities: int) -> list[OperatorProcess]:
    """Operators (not started) that share the KopfPeering `hdc-operator` of `ns`, one per priority; the peering CRD
    and object are created here, as kopf does not create them."""
    kubectl(cluster, "apply", "--server-side", "-f", str(REPO / "crds" / "kopf-peering.yaml"))
    kubectl(cluster, "wait", "--for", "condition=Established", "--timeout=60s", "crd/kopfpeerings.kopf.dev")
    apply(
        cluster,
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "hdc-operator", "namespace": ns}},
    )
    replicas = []
    for i, priority in enumerate(priorities):
        (tmp_path / f"replica-{i}").mkdir()
        replicas.append(
            OperatorProcess(
                cluster.kubeconfig,
                tmp_path / f"replica-{i}",
                "--namespace",
                ns,
                "--resync-interval",
                str(RESYNC_S),
                "--peering",
                "hdc-operator",
                "--priority",
                str(priority),
                HDC_OPERATOR_PEERING_LIFETIME="10",
            )
        )
    return replicas


def test_two_peered_replicas_have_one_active(crd_installed, cpu_node, k8s_namespace, api, tmp_path):
    ns = k8s_namespace
    standby, active = peered_replicas(crd_installed, tmp_path, ns, 10, 20)
    try:
        active.start()
        standby.start()
        time.sleep(3)  # both have seen each other's keep-alive
        apply(crd_installed, workload("ha", ns, resources={"gpus": 0}))
        wait_for(running(api, ns, "ha", 1), 60, "ha Running", active)
        time.sleep(RESYNC_S + 1)
        assert active.writes() > 0
        assert standby.writes() == 0, "the paused replica wrote"
        assert standby.metric_sum("hdc_operator_reconciles_total") == 0
        active.stop()  # on a clean exit kopf removes itself from the peering: the standby resumes
        kubectl(crd_installed, "scale", "hdcw/ha", "--replicas=2", "-n", ns)
        wait_for(running(api, ns, "ha", 2), 60, "the standby took over", standby)
        assert standby.writes() > 0
        kubectl(crd_installed, "delete", "hdcw", "ha", "-n", ns, "--wait=true", "--timeout=60s")
    finally:
        active.stop()
        standby.stop()


def test_equal_priorities_pause_both_replicas(crd_installed, cpu_node, k8s_namespace, api, tmp_path):
    """kopf 1.45.2 does not let two live peers of the same priority both run: it logs "Possibly conflicting
    operators" and pauses all of them, the one that was active included. The resync loop follows kopf
    (reconcile.paused_by_peers): no replica reconciles until one of them leaves the peering."""
    ns = k8s_namespace
    first, second = peered_replicas(crd_installed, tmp_path, ns, 10, 10)
    reconciles = "hdc_operator_reconciles_total"
    try:
        first.start()
        apply(crd_installed, workload("tie", ns, resources={"gpus": 0}))
        wait_for(running(api, ns, "tie", 1), 60, "tie Running", first)
        second.start()  # kopf starts it paused until it has read the peering: it stays paused
        wait_for(
            lambda: "Possibly conflicting operators with the same priority" in second.log(),
            30,
            "kopf sees the tie in the joining replica",
            second,
        )
        wait_for(lambda: "Pausing all operators, including self" in first.log(), 30, "kopf pauses the first", first)
        time.sleep(RESYNC_S + 2)  # the resync loop reads the peering object once per interval
        before = first.metric_sum(reconciles)
        kubectl(crd_installed, "scale", "hdcw/tie", "--replicas=2", "-n", ns)
        time.sleep(3 * RESYNC_S)
        assert first.metric_sum(reconciles) == before, "the paused replica's resync loop still reconciles"
        assert (second.metric_sum(reconciles), second.writes()) == (0, 0), "the joining replica reconciled"
        assert "Resuming operations" not in second.log()
        assert api.get("apps/v1", "deployments", ns, "tie")["spec"]["replicas"] == 1, "someone acted on the scale"
        second.stop()  # it leaves the peering: the first one is alone and resumes
        wait_for(running(api, ns, "tie", 2), 60, "the remaining replica resumed", first)
        assert "Resuming operations after the pause" in first.log()
        kubectl(crd_installed, "delete", "hdcw", "tie", "-n", ns, "--wait=true", "--timeout=60s")
    finally:
        first.stop()
        second.stop()


def test_invalid_spec_in_a_stored_object_is_a_condition(crd_installed, k8s_namespace, api):
    """A stored object the current schema would refuse (e.g. written under an older, looser CRD) -> InvalidSpec.

    The schema rejects such a spec at `kubectl apply`, so the object the reconciler reads is the stored one with
    a bad value put in (what a looser CRD version would have stored); status and Event go to the real API server.
    """
    import asyncio
    import copy

    from hdc_operator.apply import CapabilityCache
    from hdc_operator.metrics import OperatorMetrics
    from hdc_operator.reconcile import Caches, Reconciler

    ns = k8s_namespace
    apply(crd_installed, workload("broken", ns, resources={"gpus": 0}))
    stored = wait_for(lambda: hdcw(api, ns, "broken"), 10, "the stored object")
    body = copy.deepcopy(stored)
    body["spec"]["hdc"]["dimension"] = 10  # below the schema's minimum of 64

    async def reconcile_once():
        reconciler = Reconciler(
            api,
            CapabilityCache(api),
            Caches(workloads={(ns, "broken"): [body]}, children=[], pods={}),
            OperatorMetrics(),
        )
        try:
            return await reconciler.reconcile((ns, "broken"))
        finally:
            await reconciler.stop()

    assert asyncio.run(reconcile_once()) is False  # no retry: only a spec change can fix it
    w = hdcw(api, ns, "broken")
    assert w["status"]["phase"] == "Failed"
    degraded = cond(w, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "spec.hdc.dimension" in degraded["message"]
    assert not children(api, ns, "broken")
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" for e in events(api, ns, "broken"))


def test_operator_needs_only_its_rbac(crd_installed, cpu_node, k8s_namespace, api, tmp_path):
    """The operator runs on a token of deploy/operator/rbac.yaml's ServiceAccount: the verbs listed there suffice."""
    ns = k8s_namespace
    kubectl(crd_installed, "create", "namespace", "hdc-system", check=False)
    kubectl(crd_installed, "apply", "-f", str(REPO / "deploy" / "operator" / "rbac.yaml"))
    token = kubectl(
        crd_installed, "create", "token", "hdc-operator", "-n", "hdc-system", "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(pathlib.Path(crd_installed.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "current-context": "sa",
                "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
                "users": [{"name": "sa", "user": {"token": token}}],
            }
        )
    )
    kubeconfig.chmod(0o600)
    proc = OperatorProcess(
        str(kubeconfig),
        tmp_path,
        "--namespace",
        ns,
        "--resync-interval",
        str(RESYNC_S),
        HDC_OPERATOR_CAPABILITY_TTL="1",
    ).start()
    try:
        apply(
            crd_installed,
            workload(
                "rbac", ns, resources={"gpus": 0}, autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 2}
            ),
        )
        wait_for(
            lambda: (
                api.get("autoscaling/v2", "horizontalpodautoscalers", ns, "rbac")
                and api.get("monitoring.coreos.com/v1", "servicemonitors", ns, "rbac")
            ),
            60,
            "children",
            proc,
        )
        apply(
            crd_installed,
            workload("rbac", ns, resources={"gpus": 0}, monitoring={"serviceMonitor": {"enabled": False}}),
        )
        wait_for(
            lambda: (
                api.get("autoscaling/v2", "horizontalpodautoscalers", ns, "rbac") is None
                and api.get("monitoring.coreos.com/v1", "servicemonitors", ns, "rbac") is None
            ),
            30,
            "pruned",
            proc,
        )
        wait_for(running(api, ns, "rbac", 1), 60, "rbac Running", proc)
        kubectl(crd_installed, "delete", "deployment", "rbac", "-n", ns)
        wait_for(lambda: api.get("apps/v1", "deployments", ns, "rbac"), 30, "Deployment restored", proc)
        assert any(e["reason"] == "DriftCorrected" for e in events(api, ns, "rbac"))
        kubectl(crd_installed, "delete", "hdcw", "rbac", "-n", ns, "--wait=true", "--timeout=60s")  # the finalizer
        assert proc.permission_denials() == [], proc.log()[-4000:]
    finally:
        proc.stop()


def test_deleting_a_namespace_with_workloads_is_not_blocked(crd_installed, cpu_node, api, tmp_path):
    ns = "t-ns-deletion-" + os.urandom(3).hex()
    kubectl(crd_installed, "create", "namespace", ns)
    proc = start_operator(crd_installed, tmp_path, ns)
    try:
        apply(crd_installed, workload("short", ns, resources={"gpus": 0}))
        wait_for(running(api, ns, "short", 1), 60, "short Running", proc)
        assert not hdcw(api, ns, "short")["metadata"].get("finalizers")
        kubectl(crd_installed, "delete", "namespace", ns, "--wait=false")
        wait_for(lambda: api.get("v1", "namespaces", None, ns) is None, 120, "the namespace gone", proc)
        assert proc.alive()
    finally:
        proc.stop()
        kubectl(crd_installed, "delete", "namespace", ns, "--wait=false", check=False)


def _deployment(api, ns, name) -> dict | None:
    return api.get("apps/v1", "deployments", ns, name)


def _env(deployment: dict) -> dict[str, dict]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def test_state_backends_shape_the_deployment_and_the_database(operator, k8s_namespace, api, crd_installed):
    """spec.state through the real API server and the operator: none and postgres roll out with RollingUpdate,
    local with Recreate (both ways, on a live Deployment); postgres reads the URL from a Secret by reference; a
    CloudNativePG Cluster is refused as Degraded CloudNativePGMissing until CloudNativePG's own CRD is installed,
    then created, valid against that CRD, with the workers reading its app Secret."""
    from cnpg_support import install_cnpg_crd, remove_cnpg_crd

    ns, name = k8s_namespace, "st"
    cpu = {"resources": {"gpus": 0, "cpu": 1}, "hdc": {"device": "cpu"}}

    def rolled(strategy: str, backend: str):
        def check():
            d = _deployment(api, ns, name)
            return (
                d
                if d is not None
                and d["spec"]["strategy"]["type"] == strategy
                and _env(d)["HDC_STATE_BACKEND"]["value"] == backend
                else None
            )

        return check

    apply(crd_installed, workload(name, ns, **cpu))
    wait_for(rolled("RollingUpdate", "none"), 60, "a stateless Deployment", operator)
    apply(crd_installed, workload(name, ns, state={"backend": "local"}, **cpu))
    local = wait_for(rolled("Recreate", "local"), 60, "Recreate for the local backend", operator)
    assert "rollingUpdate" not in local["spec"]["strategy"]
    shared = {"backend": "postgres", "postgres": {"secretName": "hdc-db", "secretKey": "url"}}
    apply(crd_installed, workload(name, ns, replicas=2, state=shared, **cpu))
    d = wait_for(rolled("RollingUpdate", "postgres"), 60, "RollingUpdate again for a shared backend", operator)
    assert _env(d)["HDC_STATE_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "hdc-db", "key": "url"}}

    apply(crd_installed, workload(name, ns, state={"backend": "postgres", "postgres": {"cluster": {}}}, **cpu))
    w = wait_for(
        lambda: (w := hdcw(api, ns, name)) and cond(w, "Degraded").get("reason") == "CloudNativePGMissing" and w,
        60,
        "Degraded CloudNativePGMissing",
        operator,
    )
    assert "spec.state.postgres.cluster" in cond(w, "Degraded")["message"]
    install_cnpg_crd(kubectl_bin(), crd_installed.kubeconfig)
    try:
        cluster = wait_for(
            lambda: api.get("postgresql.cnpg.io/v1", "clusters", ns, f"{name}-state"), 60, "the Cluster", operator
        )
        assert cluster["spec"]["instances"] == 1 and cluster["spec"]["storage"]["size"] == "1Gi"
        assert cluster["metadata"]["ownerReferences"][0]["name"] == name
        d = wait_for(
            lambda: (
                (d := _deployment(api, ns, name))
                and _env(d)["HDC_STATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == f"{name}-state-app"
                and d
            ),
            60,
            "the Cluster's app Secret in the pods",
            operator,
        )
        assert _env(d)["HDC_STATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "uri"
        wait_for(
            lambda: cond(hdcw(api, ns, name), "Degraded").get("reason") != "CloudNativePGMissing",
            60,
            "CloudNativePGMissing cleared",
            operator,
        )
    finally:
        remove_cnpg_crd(kubectl_bin(), crd_installed.kubeconfig)
