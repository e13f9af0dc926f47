"""The Helm chart on the real control plane (hack/cluster.sh: kube-apiserver, controller-manager, scheduler, kwok):
helm install, upgrade and uninstall; and the operator running with exactly the chart's ServiceAccount permissions.

The operator's pods never run here (kwok plays kubelets without containers, and its nodes are GPU-tainted), so
the operator runs as a local process that authenticates as the chart's ServiceAccount: a real token from the
TokenRequest API in its kubeconfig (what the pod would get), with the Deployment's HDC_OPERATOR_* environment.
"""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import re
import subprocess
import threading
import urllib.parse

import paths
import pytest
import yaml
from operator_process import OperatorProcess
from test_chart import CHART, helm
from test_operator_k8s import kubectl, kubectl_bin, wait_for

pytestmark = pytest.mark.k8s

REPO = paths.REPO
WORKLOAD = {
    "apiVersion": "hdcompute.io/v1alpha1",
    "kind": "HDCWorkload",
    "spec": {"resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"}, "hdc": {"device": "cpu"}},
}
CHILD_KINDS = ("deployment", "service", "poddisruptionbudget", "servicemonitor", "prometheusrule")


def get_json(cluster, *args: str) -> dict | None:
    result = kubectl(cluster, "get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def release_name() -> str:
    return "hdc" + os.urandom(3).hex()


@pytest.fixture
def release(k8s_cluster, k8s_namespace):
    """A release name in the test's namespace, uninstalled afterwards whatever happened."""
    name = release_name()
    yield name
    helm("uninstall", name, "-n", k8s_namespace, "--wait", check=False, kubeconfig=k8s_cluster.kubeconfig)


def install(cluster, namespace: str, name: str, *args: str) -> subprocess.CompletedProcess:
    return helm("install", name, str(CHART), "-n", namespace, *args, kubeconfig=cluster.kubeconfig)


def deployment_env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_install_upgrade_uninstall(k8s_cluster, k8s_namespace, release):
    ns, full = k8s_namespace, f"{release}-hdc-operator"
    # Pod Security admission enforces the restricted standard here: the operator pods must pass it
    kubectl(k8s_cluster, "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    out = install(k8s_cluster, ns, release).stdout
    assert "reconciles HDCWorkloads in every namespace" in out, out  # NOTES.txt
    for crd in ("hdcworkloads.hdcompute.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        assert get_json(k8s_cluster, "crd", crd), f"CRD {crd} not installed"
    deployment = get_json(k8s_cluster, "deployment", full, "-n", ns)
    assert deployment["spec"]["replicas"] == 2
    env = deployment_env(deployment)
    assert env["HDC_OPERATOR_PEERING"] == full and env["HDC_OPERATOR_ALL_NAMESPACES"] == "true"
    assert env["HDC_OPERATOR_LOG_LEVEL"] == "INFO"
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == full
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert get_json(k8s_cluster, "serviceaccount", full, "-n", ns)
    assert get_json(k8s_cluster, "clusterrole", full) and get_json(k8s_cluster, "clusterrolebinding", full)
    assert get_json(k8s_cluster, "clusterkopfpeering", full)
    assert get_json(k8s_cluster, "service", f"{full}-metrics", "-n", ns)
    assert get_json(k8s_cluster, "configmap", f"{full}-dashboards", "-n", ns)
    assert get_json(k8s_cluster, "poddisruptionbudget", full, "-n", ns)["spec"]["maxUnavailable"] == 1
    # the cluster serves monitoring.coreos.com/v1 (hack/cluster.sh installs the CRDs): the ServiceMonitor exists
    assert get_json(k8s_cluster, "servicemonitor", full, "-n", ns)
    # the ReplicaSet's pods were admitted under the restricted Pod Security Standard
    pods = wait_for(
        lambda: get_json(k8s_cluster, "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={release}")["items"],
        what="operator pods",
    )
    assert len(pods) == 2

    # upgrade: a changed value takes effect
    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "operator.logLevel=DEBUG",
        "--set",
        "replicaCount=3",
        "--set",
        "prometheusAdapter.enabled=true",
        kubeconfig=k8s_cluster.kubeconfig,
    )
    deployment = get_json(k8s_cluster, "deployment", full, "-n", ns)
    assert deployment["spec"]["replicas"] == 3 and deployment_env(deployment)["HDC_OPERATOR_LOG_LEVEL"] == "DEBUG"
    adapter = get_json(k8s_cluster, "configmap", f"{full}-prometheus-adapter", "-n", ns)
    assert "hdc_capacity_utilization_percent" in adapter["data"]["config.yaml"]
    status = json.loads(helm("status", release, "-n", ns, "-o", "json", kubeconfig=k8s_cluster.kubeconfig).stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"

    # a bad value is refused before anything changes, with the field named
    bad = helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "replicaCount=0",
        check=False,
        kubeconfig=k8s_cluster.kubeconfig,
    )
    assert bad.returncode != 0 and "at '/replicaCount'" in bad.stderr, bad.stderr
    assert get_json(k8s_cluster, "deployment", full, "-n", ns)["spec"]["replicas"] == 3

    # uninstall: the release's objects go, the CRDs (and so every HDCWorkload) stay
    helm("uninstall", release, "-n", ns, "--wait", kubeconfig=k8s_cluster.kubeconfig)
    for args in (
        ("deployment", full, "-n", ns),
        ("serviceaccount", full, "-n", ns),
        ("clusterrole", full),
        ("clusterrolebinding", full),
        ("clusterrole", f"{full}-observer"),
        ("clusterkopfpeering", full),
        ("service", f"{full}-metrics", "-n", ns),
        ("servicemonitor", full, "-n", ns),
        ("poddisruptionbudget", full, "-n", ns),
        ("configmap", f"{full}-dashboards", "-n", ns),
        ("configmap", f"{full}-prometheus-adapter", "-n", ns),
    ):
        assert get_json(k8s_cluster, *args) is None, f"{args} survived helm uninstall"
    assert get_json(k8s_cluster, "crd", "hdcworkloads.hdcompute.io"), "helm uninstall must keep the CRD"


def service_account_kubeconfig(cluster, namespace: str, account: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig that authenticates as system:serviceaccount:<namespace>:<account> with a bound token."""
    token = kubectl(cluster, "create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kubectl(cluster, "config", "view", "--raw", "--minify").stdout)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": admin["clusters"][0]["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    who = kubectl(cluster, "--kubeconfig", str(path), "auth", "whoami", "-o", "json", check=False)
    if who.returncode == 0:
        assert (
            json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{account}"
        )
    return path


def operator_as_chart(
    cluster, namespace: str, full: str, tmp_path: pathlib.Path, pod: str = "local", **env: str
) -> OperatorProcess:
    """The operator with the chart's Deployment environment, authenticated as the chart's ServiceAccount."""
    chart_env = deployment_env(get_json(cluster, "deployment", full, "-n", namespace))
    kubeconfig = service_account_kubeconfig(cluster, namespace, full, tmp_path / f"sa-{pod}.kubeconfig")
    chart_env.update({"HDC_OPERATOR_RESYNC_INTERVAL": "5", **env})
    workdir = tmp_path / pod
    workdir.mkdir()
    return OperatorProcess(str(kubeconfig), workdir, **chart_env)


def peer_of(operator: OperatorProcess, peers: dict) -> dict | None:
    """The keep-alive of this operator process in a peering object's status (identity: hdc-operator@host/pid-...)."""
    return next((v for k, v in peers.items() if f"/{operator.proc.pid}-" in k), None)


def apply_workload(cluster, namespace: str, name: str) -> None:
    body = {**WORKLOAD, "metadata": {"name": name, "namespace": namespace}}
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(body))


def reconciled(cluster, namespace: str, name: str) -> dict | None:
    w = get_json(cluster, "hdcw", name, "-n", namespace)
    status = (w or {}).get("status") or {}
    if status.get("observedGeneration") == w["metadata"]["generation"] and status.get("conditions"):
        return w
    return None


@pytest.mark.parametrize("scope", ["namespace", "cluster"])
def test_operator_reconciles_with_exactly_the_charts_permissions(k8s_cluster, k8s_namespace, release, tmp_path, scope):
    ns, full = k8s_namespace, f"{release}-hdc-operator"
    args = ["--set-json", f'watchNamespaces=["{ns}"]'] if scope == "namespace" else []
    notes = install(k8s_cluster, ns, release, *args).stdout
    assert (
        f"It reconciles HDCWorkloads in: {ns} (a Role in each)" if scope == "namespace" else "in every namespace"
    ) in notes, notes
    assert "no ServiceMonitor was created" not in notes  # the cluster serves monitoring.coreos.com/v1
    operator = operator_as_chart(k8s_cluster, ns, full, tmp_path).start()
    try:
        apply_workload(k8s_cluster, ns, "demo")
        w = wait_for(lambda: reconciled(k8s_cluster, ns, "demo"), 90, "status of demo", operator)
        for kind in CHILD_KINDS:
            assert get_json(k8s_cluster, kind, "demo", "-n", ns), f"{kind} demo was not created"
        assert get_json(k8s_cluster, "configmap", "demo-dashboards", "-n", ns)
        assert w["status"]["selector"]
        # kopf peering works with these permissions: our keep-alive is in the chart's peering object
        peering = (
            get_json(k8s_cluster, "kopfpeering", full, "-n", ns)
            if scope == "namespace"
            else get_json(k8s_cluster, "clusterkopfpeering", full)
        )
        assert peer_of(operator, peering.get("status") or {}), peering
        # drift: a child deleted by hand comes back (delete + create through the chart's Role)
        kubectl(k8s_cluster, "delete", "service", "demo", "-n", ns)
        wait_for(lambda: get_json(k8s_cluster, "service", "demo", "-n", ns), 60, "service restored", operator)
        # deleting the workload: it goes (with kopf's finalizer, which kopf removes by a patch, if it has one)
        kubectl(k8s_cluster, "delete", "hdcw", "demo", "-n", ns, "--wait=false")
        wait_for(lambda: get_json(k8s_cluster, "hdcw", "demo", "-n", ns) is None, 60, "workload deleted", operator)
        assert operator.alive()
        assert operator.permission_denials() == [], operator.log()[-4000:]
        assert operator.metric_sum("hdc_operator_reconcile_errors_total") == 0
    finally:
        operator.stop()


@pytest.fixture
def operator_without(k8s_cluster, k8s_namespace, release, tmp_path):
    """Installs the chart for the test's namespace, takes one verb out of its Role, starts the operator as the
    chart's ServiceAccount and applies the workload `demo`; yields the operator (stopped afterwards)."""
    started = []

    def start(resource: str, verb: str) -> OperatorProcess:
        ns, full = k8s_namespace, f"{release}-hdc-operator"
        install(k8s_cluster, ns, release, "--set-json", f'watchNamespaces=["{ns}"]')
        body = get_json(k8s_cluster, "role", full, "-n", ns)
        rule = next(r for r in body["rules"] if resource in r["resources"])
        assert verb in rule["verbs"]
        rule["verbs"].remove(verb)
        body["rules"] = [r for r in body["rules"] if r["verbs"]]
        kubectl(k8s_cluster, "replace", "-f", "-", input=json.dumps(body))
        started.append(operator_as_chart(k8s_cluster, ns, full, tmp_path).start())
        apply_workload(k8s_cluster, ns, "demo")
        return started[-1]

    yield start
    for operator in started:
        operator.stop()


def test_a_missing_verb_shows_as_a_degraded_condition_and_an_event(k8s_cluster, k8s_namespace, operator_without):
    """Server-side apply creates children, so it needs `create`: without it on deployments, the workload says so."""
    ns = k8s_namespace
    operator = operator_without("deployments", "create")

    def degraded():
        w = get_json(k8s_cluster, "hdcw", "demo", "-n", ns)
        for c in (w.get("status") or {}).get("conditions") or ():
            if c["type"] == "Degraded" and c["status"] == "True":
                return c
        return None

    condition = wait_for(degraded, 90, "Degraded condition", operator)
    assert condition["reason"] == "Forbidden", condition
    assert "deployments" in condition["message"] and "create" in condition["message"], condition
    events = get_json(k8s_cluster, "events", "-n", ns, "--field-selector", "involvedObject.name=demo")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "Forbidden" for e in events), events
    assert operator.metric_sum("hdc_operator_reconcile_errors_total", reason="Forbidden") >= 1
    assert get_json(k8s_cluster, "deployment", "demo", "-n", ns) is None
    assert get_json(k8s_cluster, "service", "demo", "-n", ns), "the other children are still applied"
    assert operator.alive()


def test_a_missing_status_verb_shows_in_the_log_and_metrics(k8s_cluster, k8s_namespace, operator_without):
    """Without patch on hdcworkloads/status the operator cannot write a condition; it says so where it can."""
    operator = operator_without("hdcworkloads/status", "patch")
    wait_for(
        lambda: operator.metric_sum("hdc_operator_reconcile_errors_total", reason="Forbidden") >= 1,
        90,
        "a Forbidden reconcile error",
        operator,
    )
    log = operator.log()
    refused = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"child_refused"' in line]
    assert any(r.get("reason") == "Forbidden" and "hdcworkloads/status" in r.get("error", "") for r in refused), log[
        -4000:
    ]
    assert not (get_json(k8s_cluster, "hdcw", "demo", "-n", k8s_namespace).get("status") or {}).get("conditions")
    assert operator.alive(), "a refused status write must not stop the operator"


def test_two_replicas_one_active_then_the_standby_takes_over(k8s_cluster, k8s_namespace, release, tmp_path):
    """HA as the chart runs it: two operators as the chart's ServiceAccount share the KopfPeering; the one with
    the higher priority reconciles, the other stands by and takes over when the first one dies (SIGKILL: no
    goodbye, so the standby waits out the chart's peering lifetime)."""
    ns, full = k8s_namespace, f"{release}-hdc-operator"
    install(k8s_cluster, ns, release, "--set-json", f'watchNamespaces=["{ns}"]', "--set", "peering.lifetimeSeconds=10")
    active = operator_as_chart(k8s_cluster, ns, full, tmp_path, "a", HDC_OPERATOR_PRIORITY="200").start()
    standby = operator_as_chart(k8s_cluster, ns, full, tmp_path, "b", HDC_OPERATOR_PRIORITY="100").start()
    try:
        peering = wait_for(
            lambda: (lambda s: s if peer_of(active, s) and peer_of(standby, s) else None)(
                (get_json(k8s_cluster, "kopfpeering", full, "-n", ns).get("status") or {})
            ),
            60,
            "both peers",
            standby,
        )
        assert peer_of(active, peering)["priority"] == 200 and peer_of(standby, peering)["priority"] == 100
        assert peer_of(active, peering)["lifetime"] == 10, peering  # peering.lifetimeSeconds reached kopf
        apply_workload(k8s_cluster, ns, "first")
        wait_for(lambda: reconciled(k8s_cluster, ns, "first"), 90, "first reconciled", active)
        assert active.writes() > 0 and standby.writes() == 0, (active.writes(), standby.writes())
        # kopf starts a peer paused and logs when it resumes: only the active one has
        assert "Resuming operations" in active.log() and "Resuming operations" not in standby.log()

        active.proc.kill()  # a crash: its keep-alive stays until it expires
        active.proc.wait(10)
        wait_for(lambda: "Resuming operations" in standby.log(), 90, "the standby to resume", standby)
        apply_workload(k8s_cluster, ns, "second")
        wait_for(lambda: reconciled(k8s_cluster, ns, "second"), 90, "second reconciled by the standby", standby)
        assert standby.writes() > 0
    finally:
        active.stop()
        standby.stop()


class _SeriesRecorder(http.server.BaseHTTPRequestHandler):
    """A stand-in for Prometheus's /api/v1/series that records the match[] selectors asked for."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        type(self).seen.extend(query.get("match[]", []))
        body = b'{"status":"success","data":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def run_adapter(cluster, config: str, tmp_path: pathlib.Path, prometheus_url: str) -> subprocess.Popen:
    from test_chart import tools_bin
    from worker_process import free_port

    (tmp_path / "config.yaml").write_text(config)
    return subprocess.Popen(
        [
            str(tools_bin() / "prometheus-adapter"),
            f"--config={tmp_path / 'config.yaml'}",
            f"--lister-kubeconfig={cluster.kubeconfig}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
            f"--prometheus-url={prometheus_url}",
            f"--secure-port={free_port()}",
            f"--cert-dir={tmp_path / 'certs'}",
            "--metrics-relist-interval=1m",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "adapter.log", "wb"),
    )


def test_prometheus_adapter_loads_the_charts_rules(k8s_cluster, tmp_path):
    """The real prometheus-adapter accepts the rendered rules (it rejects unknown fields at start) and asks
    Prometheus for exactly the chart's series; a misspelt field makes it exit naming the field."""
    from test_chart import adapter_rules

    rules = adapter_rules()
    config = yaml.safe_dump({"rules": rules})
    _SeriesRecorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SeriesRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    adapter = run_adapter(k8s_cluster, config, tmp_path, f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        expected = {r["seriesQuery"] for r in rules}
        wait_for(
            lambda: expected <= set(_SeriesRecorder.seen) or adapter.poll() is not None,
            60,
            "the adapter's series queries",
        )
        assert adapter.poll() is None, (tmp_path / "adapter.log").read_text()[-3000:]
        assert expected <= set(_SeriesRecorder.seen), _SeriesRecorder.seen
    finally:
        adapter.terminate()
        adapter.wait(20)
        server.shutdown()

    broken = run_adapter(k8s_cluster, config.replace("metricsQuery", "metricsQuerx"), tmp_path, "http://127.0.0.1:1/")
    assert broken.wait(60) != 0
    assert "field metricsQuerx not found" in (tmp_path / "adapter.log").read_text()


# --- every granted verb is used: the operator's API calls recorded through kubectl proxy --------------------------

RESPONSE_LINE = re.compile(r'"Response" verb="(\w+)" url="([^"]+)" status="(\d+)')


def api_call(method: str, url: str, status: int) -> list[tuple[str, str, str]]:
    """A recorded request -> the (apiGroup, resource, verb) RBAC checked for it ([] for discovery and the like)."""
    parsed = urllib.parse.urlparse(url)
    parts = parsed.path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return []  # /api, /apis, /version, /apis/<group>/<version>: discovery, allowed to everyone
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource (a bare namespaces/<name> is the namespace itself)
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watch = "watch=true" in parsed.query or "watch=1" in parsed.query
    verb = {
        "GET": "watch" if watch else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    calls = [(group, resource, verb)]
    if method == "PATCH" and status == 201:  # a server-side apply that created the object: RBAC checked create
        calls.append((group, resource, "create"))
    return calls


def test_api_call_mapping():
    assert api_call("GET", "https://h/apis/apps/v1/namespaces/n/deployments?labelSelector=x&watch=true", 200) == [
        ("apps", "deployments", "watch")
    ]
    assert api_call("PATCH", "https://h/api/v1/namespaces/n/services/w?fieldManager=x", 201) == [
        ("", "services", "patch"),
        ("", "services", "create"),
    ]
    assert api_call("PATCH", "https://h/apis/hdcompute.io/v1alpha1/namespaces/n/hdcworkloads/w/status", 200) == [
        ("hdcompute.io", "hdcworkloads/status", "patch")
    ]
    assert api_call("GET", "https://h/api/v1/namespaces", 200) == [("", "namespaces", "list")]
    assert api_call("GET", "https://h/apis/monitoring.coreos.com/v1", 200) == []


def granted(cluster, namespace: str, full: str) -> set[tuple[str, str, str]]:
    roles = [get_json(cluster, "role", full, "-n", namespace), get_json(cluster, "clusterrole", f"{full}-observer")]
    return {
        (g, r, v)
        for role in roles
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_every_granted_verb_is_used(k8s_cluster, k8s_namespace, release, tmp_path):
    """Least privilege, measured: the operator, as the chart's ServiceAccount, talks to the API server through a
    `kubectl proxy` that logs every request. Over a workload's life (created with every kind of child, edited by
    hand, scaled by the operator's scaler in mode operator, its children pruned one kind after another, deleted)
    it uses every verb the chart grants, except
    `delete` of Deployments and Services: the builders always want those two, so pruning (which is per kind in
    the code) never reaches them."""
    from cnpg_support import install_cnpg_crd, remove_cnpg_crd
    from worker_process import free_port

    ns, full = k8s_namespace, f"{release}-hdc-operator"
    install(k8s_cluster, ns, release, "--set-json", f'watchNamespaces=["{ns}"]')
    install_cnpg_crd(kubectl_bin(), k8s_cluster.kubeconfig)
    sa_kubeconfig = service_account_kubeconfig(k8s_cluster, ns, full, tmp_path / "sa.kubeconfig")
    port = free_port()
    proxy_log = tmp_path / "proxy.log"
    proxy = subprocess.Popen(
        [kubectl_bin(), "--kubeconfig", str(sa_kubeconfig), "proxy", f"--port={port}", "-v=6"],
        stdout=subprocess.DEVNULL,
        stderr=open(proxy_log, "wb"),
    )
    operator = None
    try:
        plain = tmp_path / "proxy.kubeconfig"
        plain.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "proxy",
                    "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "proxy", "user": {}}],
                    "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
                }
            )
        )
        wait_for(
            lambda: (
                kubectl(k8s_cluster, "--kubeconfig", str(plain), "get", "hdcw", "-n", ns, check=False).returncode == 0
            ),
            30,
            "kubectl proxy",
        )
        env = deployment_env(get_json(k8s_cluster, "deployment", full, "-n", ns))
        env.update({"HDC_OPERATOR_RESYNC_INTERVAL": "3"})
        (tmp_path / "op").mkdir()
        operator = OperatorProcess(str(plain), tmp_path / "op", **env).start()

        # a scaled workload on a CloudNativePG Cluster the operator creates (its CRD installed for this test), and
        # a single-replica one whose local state outlives its pod on a claim: between them, every child kind
        name, solo = "full", "solo"
        body = {**WORKLOAD, "metadata": {"name": name, "namespace": ns}}
        body["spec"] = {
            **body["spec"],
            "state": {"backend": "postgres", "postgres": {"cluster": {}}},
            "autoscaling": {"mode": "hpa", "minReplicas": 1, "maxReplicas": 3},
        }
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(body))
        single = {**WORKLOAD, "metadata": {"name": solo, "namespace": ns}}
        single["spec"] = {
            **single["spec"],
            "state": {"backend": "local"},
            "persistence": {"enabled": True, "size": "1Gi"},
        }
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(single))
        kinds = (
            "deployment",
            "service",
            "configmap",
            "persistentvolumeclaim",
            "poddisruptionbudget",
            "horizontalpodautoscaler",
            "servicemonitor",
            "prometheusrule",
        )
        names = {"configmap": f"{name}-dashboards"}
        wait_for(lambda: reconciled(k8s_cluster, ns, name), 90, "first reconcile", operator)
        wait_for(lambda: reconciled(k8s_cluster, ns, solo), 90, "first reconcile of the single replica", operator)
        cluster = wait_for(
            lambda: get_json(k8s_cluster, "clusters.postgresql.cnpg.io", f"{name}-state", "-n", ns),
            60,
            "the CloudNativePG Cluster",
            operator,
        )
        assert cluster["metadata"]["ownerReferences"][0]["name"] == name
        claims = get_json(k8s_cluster, "persistentvolumeclaims", "-n", ns)["items"]
        assert [c["metadata"]["ownerReferences"][0]["name"] for c in claims] == [solo], claims
        names["persistentvolumeclaim"] = claims[0]["metadata"]["name"]
        # drift: a label of ours removed by hand from every child is restored (a patch of each kind)
        label = "app.kubernetes.io/component"
        for kind in kinds:
            kubectl(k8s_cluster, "label", kind, names.get(kind, name), "-n", ns, f"{label}-")
        for kind in kinds:
            wait_for(
                lambda: label in get_json(k8s_cluster, kind, names.get(kind, name), "-n", ns)["metadata"]["labels"],  # noqa: B023 - called within this iteration
                60,
                f"{kind} label restored",
                operator,
            )
        # autoscaling mode operator without a Prometheus: the scaler holds, but moves spec.replicas (1) into
        # [minReplicas, maxReplicas] through the scale subresource and saves its history annotation
        kubectl(
            k8s_cluster,
            "patch",
            "hdcw",
            name,
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"autoscaling": {"mode": "operator", "minReplicas": 2, "maxReplicas": 3}}}),
        )
        wait_for(
            lambda: get_json(k8s_cluster, "hdcw", name, "-n", ns)["spec"]["replicas"] == 2,
            60,
            "spec.replicas moved to minReplicas by the scaler",
            operator,
        )
        # pruning: every optional child turned off
        kubectl(
            k8s_cluster,
            "patch",
            "hdcw",
            name,
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "spec": {
                        "autoscaling": {"mode": "none"},
                        "podDisruptionBudget": {"enabled": False},
                        "monitoring": {
                            "serviceMonitor": {"enabled": False},
                            "prometheusRule": {"enabled": False},
                            "dashboards": {"enabled": False},
                        },
                    }
                }
            ),
        )
        for kind in ("horizontalpodautoscaler", "poddisruptionbudget", "servicemonitor", "prometheusrule"):
            wait_for(lambda: get_json(k8s_cluster, kind, name, "-n", ns) is None, 60, f"{kind} pruned", operator)  # noqa: B023
        wait_for(
            lambda: get_json(k8s_cluster, "configmap", f"{name}-dashboards", "-n", ns) is None,
            60,
            "dashboards pruned",
            operator,
        )
        # deletion, with kopf's finalizer on the workload (earlier operator versions added it): kopf removes it
        kubectl(
            k8s_cluster,
            "patch",
            "hdcw",
            name,
            "-n",
            ns,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":["hdcompute.io/operator"]}}',
        )
        kubectl(k8s_cluster, "delete", "hdcw", name, "-n", ns, "--wait=false")
        wait_for(lambda: get_json(k8s_cluster, "hdcw", name, "-n", ns) is None, 60, "workload deleted", operator)
        assert operator.permission_denials() == [], operator.log()[-4000:]
    finally:
        if operator is not None:
            operator.stop()
        proxy.terminate()
        proxy.wait(10)
        remove_cnpg_crd(kubectl_bin(), k8s_cluster.kubeconfig)

    used = {
        call
        for match in RESPONSE_LINE.finditer(proxy_log.read_text())
        for call in api_call(match.group(1), match.group(2), int(match.group(3)))
    }
    assert used, "the proxy recorded no request"
    grants = granted(k8s_cluster, ns, full)
    assert used - grants == set(), f"calls the chart does not grant: {sorted(used - grants)}"
    assert grants - used == {("apps", "deployments", "delete"), ("", "services", "delete")}, sorted(grants - used)
