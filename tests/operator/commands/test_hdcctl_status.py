"""`hdcctl status` and `hdcctl bench`: against a real API server with a real operator process, real worker processes
behind the kwok pods and a real Prometheus (marker k8s); and the errors a user meets without a cluster, without
the CRD, or without Prometheus, each checked for the message that says what to do."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import paths
import pytest
from typer.testing import CliRunner

from hdc_operator.commands.status import condition_summary, workload_row
from hdc_operator.dev import prometheus as prom
from hdc_operator.live_metrics import LiveMetrics, live_queries

REPO = paths.REPO


def hdcctl(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdc_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def free_port() -> int:
    return prom.free_port()


# --- pure ------------------------------------------------------------------------------------------------------


def test_condition_summary_names_problems_with_reasons():
    healthy = [
        {"type": "Ready", "status": "True", "reason": "AllReplicasReady"},
        {"type": "Degraded", "status": "False", "reason": "AsExpected"},
        {"type": "Progressing", "status": "False", "reason": "RolloutComplete"},
        {"type": "MonitoringUnavailable", "status": "False", "reason": "MonitoringCRDsPresent"},
    ]
    assert condition_summary(healthy) == ["Ready"]
    sick = [
        {"type": "Ready", "status": "False", "reason": "InsufficientGPU"},
        {"type": "Degraded", "status": "True", "reason": "InsufficientGPU"},
        {"type": "ScalingActive", "status": "False", "reason": "MetricsUnavailable"},
    ]
    assert condition_summary(sick) == [
        "Ready=False(InsufficientGPU)",
        "Degraded=True(InsufficientGPU)",
        "ScalingActive=False(MetricsUnavailable)",
    ]
    assert condition_summary([]) == []


def test_workload_row_reads_status_and_flags_a_stale_one():
    obj = {
        "metadata": {"name": "w", "namespace": "ns", "generation": 3},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 2,
            "phase": "Progressing",
            "replicas": 2,
            "readyReplicas": 1,
            "desiredReplicas": 2,
            "throughputOpsPerSec": 12.5,
        },
    }
    row = workload_row(obj)
    assert (row.namespace, row.name, row.phase, row.desired, row.current, row.ready, row.throughput) == (
        "ns",
        "w",
        "Progressing",
        2,
        2,
        1,
        12.5,
    )
    assert row.stale
    assert workload_row({"metadata": {"name": "new", "namespace": "ns"}}).phase == "Unknown"


def test_live_queries_select_only_the_workload():
    for name, promql in live_queries("team-a", "digits", "30s").items():
        assert '{namespace="team-a", workload="digits"}' in promql, name
    assert LiveMetrics(requests_per_s=50.0, errors_per_s=1.0).error_ratio == 0.02
    assert LiveMetrics(requests_per_s=0.0, errors_per_s=0.0).error_ratio is None


# --- errors without a cluster ------------------------------------------------------------------------------------


def test_missing_kubeconfig_names_the_path_and_what_to_run(tmp_path):
    missing = tmp_path / "nowhere" / "kubeconfig"
    out = hdcctl("status", env={"KUBECONFIG": str(missing)})
    assert out.returncode == 1
    assert f"no kubeconfig at {missing} ($KUBECONFIG)" in out.stderr
    assert "make cluster-up" in out.stderr and "export KUBECONFIG=" in out.stderr
    out = hdcctl("status", "--kubeconfig", str(missing))
    assert out.returncode == 1 and f"no kubeconfig at {missing} (--kubeconfig)" in out.stderr
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)
    bare = subprocess.run(
        [sys.executable, "-m", "hdc_operator.cli", "status"], capture_output=True, text=True, env=env, timeout=120
    )
    assert bare.returncode == 1 and f"no kubeconfig at {tmp_path}/.kube/config (the default)" in bare.stderr


def _kubeconfig(path: pathlib.Path, server: str) -> pathlib.Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


def test_unreachable_api_server_names_server_kubeconfig_and_what_to_run(tmp_path):
    port = free_port()  # nothing listens there
    kc = _kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}")
    out = hdcctl("status", "--kubeconfig", str(kc))
    assert out.returncode == 1
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port} (kubeconfig {kc})" in out.stderr
    assert "Connection refused" in out.stderr and "make cluster-up" in out.stderr


def test_a_kubeconfig_that_is_not_one_is_named(tmp_path):
    kc = tmp_path / "kc"
    kc.write_text("just: text\n")
    out = hdcctl("status", "--kubeconfig", str(kc))
    assert out.returncode == 1 and f"the kubeconfig {kc} cannot be used" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "a", "-A"], "-n/--namespace and -A/--all-namespaces exclude each other"),
        (["-o", "yaml"], "-o/--output: expected table or json, got 'yaml'"),
        (["--prometheus", "localhost:9090"], "--prometheus: expected an http:// or https:// URL"),
    ],
)
def test_usage_errors(args, message):
    out = hdcctl("status", *args)
    assert out.returncode == 2 and message in out.stderr


# --- hdcctl bench -----------------------------------------------------------------------------------------------


def test_bench_passes_arguments_and_exit_status_through():
    out = hdcctl("bench", "--help")
    assert out.returncode == 0 and "hdc-bench" in out.stdout and "--kernels" in out.stdout
    bad = hdcctl("bench", "--no-such-option")
    assert bad.returncode == 2 and "No such option" in bad.stderr + bad.stdout


def test_bench_without_the_worker_package_says_how_to_get_it(monkeypatch):
    # A Python without hd_compute (the operator image) cannot be produced in this venv: the lookup is replaced.
    from hdc_operator import cli
    from hdc_operator.commands import bench

    monkeypatch.setattr(bench, "bench_command", lambda: None)
    result = CliRunner().invoke(cli.app, ["bench", "--kernels"])
    assert result.exit_code == 1
    assert "make install" in result.output and "hdc-bench is part of the worker package" in result.output


# --- against the real control plane -------------------------------------------------------------------------------


def kubectl(cluster, *args, input=None, check=True):
    out = subprocess.run(
        [prom.tool("kubectl"), "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    assert not check or out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out


def wait_for(fn, what: str, timeout_s: float = 120, interval: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


def install_crd(cluster):
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_for(
        lambda: (
            kubectl(
                cluster,
                "wait",
                "--for",
                "condition=Established",
                "--timeout=30s",
                "crd/hdcworkloads.hdcompute.io",
                check=False,
            ).returncode
            == 0
        ),
        "the CRD Established",
    )


def workload(name: str, ns: str, **spec) -> dict:
    return {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hdc": {"dimension": 1024}, "continuousBenchmark": {"enabled": False}, **spec},
    }


@pytest.fixture(scope="module")
def live(k8s_cluster, tmp_path_factory):
    """A namespace with two HDCWorkloads reconciled by a real operator: `ok` (1 replica, a real worker process behind
    its pod, scraped by a real Prometheus, under load) and `greedy` (16 GPUs: Degraded/InsufficientGPU)."""
    from dev_harness import LocalMonitoring
    from kubernetes import client
    from operator_process import OperatorProcess

    from hdc_operator.dev.load import LoadGenerator

    tmp = tmp_path_factory.mktemp("status")
    core = client.CoreV1Api(k8s_cluster.api)
    ns = f"t-status-{os.urandom(3).hex()}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    install_crd(k8s_cluster)
    operator = OperatorProcess(k8s_cluster.kubeconfig, tmp, "--namespace", ns, "--resync-interval", "5")
    mon = LocalMonitoring(k8s_cluster.kubeconfig, tmp, ns)
    load = None
    try:
        operator.start()
        mon.start()
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload("ok", ns)))
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload("greedy", ns, resources={"gpus": 16})))
        mon.wait_workers(1)
        load = LoadGenerator(mon.status_file, ns, "ok", "MAP", 1024, 2).start()
        yield {"cluster": k8s_cluster, "ns": ns, "operator": operator, "mon": mon, "tmp": tmp}
    finally:
        if load is not None:
            load.stop()
        mon.stop()
        operator.stop()
        try:
            core.delete_namespace(ns)
        except Exception:
            pass


def status_json(live, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = hdcctl("status", "--kubeconfig", live["cluster"].kubeconfig, "-o", "json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out


def by_name(report: dict) -> dict:
    return {w["name"]: w for w in report["workloads"]}


@pytest.mark.k8s
def test_status_shows_phase_replicas_and_condition_reasons(live):
    ns = live["ns"]

    def settled():
        report = by_name(status_json(live, "-n", ns)[0])
        ok, greedy = report.get("ok"), report.get("greedy")
        good = ok and ok["phase"] == "Running" and ok["replicas"]["ready"] == 1
        bad = greedy and "Degraded=True(InsufficientGPU)" in greedy["attention"]
        return report if good and bad else None

    report = wait_for(settled, "ok Running and greedy Degraded/InsufficientGPU")
    assert report["ok"]["replicas"] == {"spec": 1, "desired": 1, "current": 1, "ready": 1}
    assert report["ok"]["attention"] == ["Ready"] and report["ok"]["live"] is None
    assert report["greedy"]["phase"] == "Degraded"
    assert {c["type"]: c["reason"] for c in report["greedy"]["conditions"]}["Degraded"] == "InsufficientGPU"

    table = hdcctl("status", "--kubeconfig", live["cluster"].kubeconfig, "-n", ns)
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "PHASE" in lines["NAME"] and "CONDITIONS" in lines["NAME"] and "NAMESPACE" not in lines["NAME"]
    assert "Running" in lines["ok"] and "1/1/1" in lines["ok"]
    assert "Degraded" in lines["greedy"] and "Degraded=True(InsufficientGPU)" in lines["greedy"]


@pytest.mark.k8s
def test_all_namespaces_and_an_empty_namespace(live):
    report, _ = status_json(live, "-A")
    assert report["scope"] == "all namespaces"
    assert {("ok", live["ns"]), ("greedy", live["ns"])} <= {(w["name"], w["namespace"]) for w in report["workloads"]}
    table = hdcctl("status", "--kubeconfig", live["cluster"].kubeconfig, "-A")
    assert table.returncode == 0 and "NAMESPACE" in table.stdout
    empty = hdcctl("status", "--kubeconfig", live["cluster"].kubeconfig, "-n", "kube-public")
    assert empty.returncode == 0 and "No HDCWorkloads in namespace kube-public." in empty.stdout


@pytest.mark.k8s
def test_live_metrics_from_prometheus(live):
    url = live["mon"].url

    def measured():
        report = by_name(status_json(live, "-n", live["ns"], "--prometheus", url, "--window", "20s")[0])
        m = report["ok"]["live"]
        return report if m and m["requestsPerSec"] and m["latencyMs"]["p95"] is not None else None

    report = wait_for(measured, "live metrics of ok in Prometheus", timeout_s=90, interval=2)
    m = report["ok"]["live"]
    assert m["targetsUp"] == 1 and m["requestsPerSec"] > 0 and m["hypervectorOpsPerSec"] > 0
    assert 0 < m["latencyMs"]["p50"] <= m["latencyMs"]["p95"] <= m["latencyMs"]["p99"]
    assert m["errorRatio"] == 0 and m["firingAlerts"] == []
    assert set(m["byOperation"]) >= {"bind", "bundle"}
    assert report["greedy"]["live"]["targetsUp"] == 0 and report["greedy"]["live"]["requestsPerSec"] is None

    table = hdcctl(
        "status", "--kubeconfig", live["cluster"].kubeconfig, "-n", live["ns"], "--prometheus", url, "--window", "20s"
    )
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.startswith("NAME"))
    for column in ("REQ/S", "P95", "ERRORS", "FIRING"):
        assert column in header


@pytest.mark.k8s
def test_prometheus_down_still_shows_the_cluster(live):
    port = free_port()
    report, out = status_json(live, "-n", live["ns"], "--prometheus", f"http://127.0.0.1:{port}")
    assert report["prometheus"]["error"].startswith(f"Prometheus at http://127.0.0.1:{port} is unreachable")
    assert by_name(report)["ok"]["phase"] and by_name(report)["ok"]["live"] is None
    assert "live metrics left out, the cluster's view is shown" in out.stderr
    table = hdcctl(
        "status",
        "--kubeconfig",
        live["cluster"].kubeconfig,
        "-n",
        live["ns"],
        "--prometheus",
        f"http://127.0.0.1:{port}",
    )
    assert table.returncode == 0 and "ok" in table.stdout and "is unreachable" in table.stdout


@pytest.mark.k8s
def test_watch_refreshes_until_interrupted(live):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hdc_operator.cli",
            "status",
            "--kubeconfig",
            live["cluster"].kubeconfig,
            "-n",
            live["ns"],
            "--watch",
            "--interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum("Ctrl-C to stop" in line for line in lines) < 2:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert sum("Ctrl-C to stop" in line for line in lines) >= 2, "".join(lines) + proc.stderr.read()
        assert any(line.startswith("ok ") for line in lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.k8s
def test_missing_crd_says_how_to_install_it(live):
    """Last in the module: deletes the HDCWorkload CRD (and with it every workload) and installs it again."""
    cluster = live["cluster"]
    live["mon"].stop()
    live["operator"].stop()  # kopf exits when the CRD it watches disappears; stop it first
    try:
        kubectl(cluster, "delete", "crd", "hdcworkloads.hdcompute.io", "--wait=true", "--timeout=90s")
        out = hdcctl("status", "--kubeconfig", cluster.kubeconfig, "-n", live["ns"])
        assert out.returncode == 1
        assert "does not serve hdcworkloads.hdcompute.io: the HDCWorkload CRD is not installed" in out.stderr
        assert "kubectl apply --server-side -f crds/hdcworkload.yaml" in out.stderr and "docs/install.md" in out.stderr
    finally:
        install_crd(cluster)
