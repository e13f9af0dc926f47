"""Autoscaling mode operator end to end: the real operator process on the real control plane (kwok), the pod
mirror (a real hdc-worker process per fake pod), a real Prometheus scraping them (tests/dev_harness.py) and a
closed-loop load generator. Prints the measured times (scale-up, scale-down) for docs/autoscaling.md.
"""

from __future__ import annotations

import json
import subprocess
import time

import paths
import pytest

from hdc_operator.dev import prometheus as prom

REPO = paths.REPO
SCALE_DOWN_WINDOW_S = 20
TICK_S = 5
SCRAPE_S = 1


def kubectl(cluster, *args, input=None):
    out = subprocess.run(
        [prom.tool("kubectl"), "--kubeconfig", cluster.kubeconfig, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


def start_stack(cluster, mon, operator) -> None:
    """The CRD (applied, Established), the mirror with Prometheus, the operator."""
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    # (kubectl wait fails at once while a new CRD has no status.conditions yet: hence wait around it)
    mon.wait(
        lambda: (
            kubectl(cluster, "wait", "--for", "condition=Established", "--timeout=30s", "crd/hdcworkloads.hdcompute.io")
            is not None
        ),
        "the CRD Established",
    )
    mon.start()
    operator.start()


def scaled_workload(name: str, namespace: str, mode: str) -> dict:
    """1 to 3 replicas at 0.5 ops/s each (1 op/s x 50 %): any load wants 3, no load wants 1."""
    return {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "hdc": {"dimension": 1024},
            "continuousBenchmark": {"enabled": False},
            "autoscaling": {
                "mode": mode,
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetOpsPerReplica": 1,
                "targetUtilizationPercent": 50,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}},
            },
        },
    }


@pytest.mark.k8s
@pytest.mark.slow
def test_operator_mode_scales_on_load_holds_without_prometheus(k8s_cluster, k8s_namespace, tmp_path):
    from dev_harness import LocalMonitoring
    from operator_process import OperatorProcess

    from hdc_operator.dev.load import LoadGenerator

    ns, name = k8s_namespace, "scaled"
    mon = LocalMonitoring(k8s_cluster.kubeconfig, tmp_path, ns, scrape_interval=f"{SCRAPE_S}s")
    operator = OperatorProcess(
        k8s_cluster.kubeconfig,
        tmp_path,
        "--namespace",
        ns,
        "--resync-interval",
        "30",
        "--autoscale-interval",
        str(TICK_S),
        "--prometheus-url",
        mon.url,
    )
    workload = scaled_workload(name, ns, "operator")

    def hdcw() -> dict:
        return json.loads(kubectl(k8s_cluster, "get", "hdcw", name, "-n", ns, "-o", "json"))

    def replicas() -> int:
        return hdcw()["spec"]["replicas"]

    def scaling_condition() -> dict:
        return next((c for c in hdcw().get("status", {}).get("conditions", []) if c["type"] == "ScalingActive"), {})

    def autoscaled_events(reason: str = "Autoscaled", type_: str = "Normal") -> list[str]:
        out = json.loads(
            kubectl(
                k8s_cluster,
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                f"reason={reason},type={type_}",
                "-o",
                "json",
            )
        )
        return [e["message"] for e in out["items"]]

    def wait_replicas(n: int, timeout_s: float) -> float:
        start = time.monotonic()
        mon.wait(lambda: replicas() == n, f"spec.replicas == {n}", timeout_s)
        return time.monotonic() - start

    load = None
    numbers = {}
    try:
        start_stack(k8s_cluster, mon, operator)
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload))
        mon.wait_workers(1)
        # idle: no demand, the scaler is active and keeps 1 replica
        mon.wait(lambda: scaling_condition().get("status") == "True", "ScalingActive=True", 60)
        assert replicas() == 1

        # load: up to maxReplicas within stabilization (0 for scale-up) + scrape + tick (+ the 20 s rate window)
        load = LoadGenerator(mon.status_file, ns, name, "MAP", 1024, clients=2).start()
        numbers["scale_up_s"] = wait_replicas(3, 120)
        mon.wait_workers(3)
        status = hdcw()["status"]
        assert status["desiredReplicas"] == 3 and status["observedDemandOpsPerSec"] > 1.5
        assert status["throughputOpsPerSec"] > 1.5
        # TooManyReplicas: the recommendation (hundreds) was cut to maxReplicas
        assert status["lastScaleReason"].split(":")[0] in ("TooManyReplicas", "ScaleUpLimit"), autoscaled_events()
        assert any(m.startswith("scaled up from 1 to 3 replicas") for m in autoscaled_events()), autoscaled_events()

        # settled: no flapping while the load runs
        events_before, t0 = len(autoscaled_events()), time.monotonic()
        while time.monotonic() - t0 < 30:
            assert replicas() == 3
            time.sleep(2)
        assert len(autoscaled_events()) == events_before, autoscaled_events()
        numbers["load_ops_per_s"] = hdcw()["status"]["observedDemandOpsPerSec"]

        # load stops: down to minReplicas after the scale-down window
        load.stop()
        load = None
        stopped = time.monotonic()
        wait_replicas(1, 180)
        numbers["scale_down_s"] = time.monotonic() - stopped
        assert numbers["scale_down_s"] >= SCALE_DOWN_WINDOW_S
        assert any(m.startswith("scaled down from 3 to 1 replicas") for m in autoscaled_events()), autoscaled_events()
        # the status write follows the scale patch (same reconcile)
        mon.wait(lambda: hdcw()["status"].get("desiredReplicas") == 1, "status.desiredReplicas == 1", 30)
        assert "0 recommended" in hdcw()["status"]["lastScaleReason"], hdcw()["status"]

        # load again, then Prometheus stops and the load with it: replicas hold, the condition says why
        load = LoadGenerator(mon.status_file, ns, name, "MAP", 1024, clients=2).start()
        wait_replicas(3, 120)
        assert mon.stop_prometheus() == 0
        load.stop()
        load = None
        down_at = time.monotonic()
        mon.wait(lambda: scaling_condition().get("reason") == "MetricsUnavailable", "ScalingActive=False", 60)
        assert scaling_condition()["status"] == "False"
        numbers["metrics_unavailable_after_s"] = time.monotonic() - down_at
        mon.wait(lambda: autoscaled_events("MetricsUnavailable", "Warning"), "a Warning Event MetricsUnavailable", 30)
        while time.monotonic() - down_at < SCALE_DOWN_WINDOW_S + 3 * TICK_S:
            assert replicas() == 3, "scaled while Prometheus was down"
            time.sleep(2)
        # Prometheus back: the condition recovers, and the idle workload scales down
        mon.start_prometheus()
        back = time.monotonic()
        mon.wait(lambda: scaling_condition().get("status") == "True", "ScalingActive=True again", 90)
        numbers["recovered_after_s"] = time.monotonic() - back
        mon.wait(lambda: autoscaled_events("ScalingResumed"), "an Event ScalingResumed", 30)
        assert len(autoscaled_events("MetricsUnavailable", "Warning")) == 1  # one per transition, not per tick
        wait_replicas(1, 180)
        numbers["scale_down_after_restart_s"] = time.monotonic() - back
        # idle in mode operator (no load, the 60 s rate window drained): evaluations go on, API writes do not
        mon.wait_workers(1)
        time.sleep(max(0.0, 75 - (time.monotonic() - down_at)))
        writes, evaluations = operator.writes(), operator.metric_sum("hdc_operator_autoscaler_decisions_total")
        # at least 3 more evaluations (4 ticks when the machine is quiet; a loaded machine delays ticks)
        mon.wait(
            lambda: operator.metric_sum("hdc_operator_autoscaler_decisions_total") >= evaluations + 3,
            "3 more scaler evaluations",
            20 * TICK_S,
        )
        assert operator.writes() == writes, "an idle workload in mode operator was written to"
        assert operator.metric_sum("hdc_operator_autoscaler_scales_total", direction="up") >= 2
        assert operator.metric_sum("hdc_operator_autoscaler_decisions_total", reason="MetricsUnavailable") >= 1
        print("\nautoscaling e2e:", json.dumps({k: round(v, 1) for k, v in numbers.items()}))
    finally:
        if load is not None:
            load.stop()
        subprocess.run(
            [
                prom.tool("kubectl"),
                "--kubeconfig",
                k8s_cluster.kubeconfig,
                "delete",
                "hdcw",
                name,
                "-n",
                ns,
                "--wait=true",
                "--timeout=60s",
            ],
            capture_output=True,
            timeout=90,
        )
        mon.stop()
        operator.stop()
        print(operator.log()[-3000:] if numbers.get("scale_down_after_restart_s") is None else "")


@pytest.mark.k8s
@pytest.mark.slow
def test_hpa_mode_scales_through_prometheus_adapter(k8s_cluster, k8s_namespace, tmp_path):
    """Mode hpa: the operator's HPA, kube-controller-manager's HPA controller, the real prometheus-adapter with the
    chart's rules registered as custom.metrics.k8s.io (an APIService whose ExternalName Service points the
    aggregator at the adapter's local port), a real Prometheus scraping the mirror's workers."""
    import yaml
    from dev_harness import LocalMonitoring
    from operator_process import OperatorProcess
    from test_chart import adapter_rules, tools_bin
    from worker_process import free_port

    from hdc_operator.builders.hpa import THROUGHPUT_METRIC
    from hdc_operator.dev.load import LoadGenerator

    ns, name = k8s_namespace, "hpa"
    mon = LocalMonitoring(k8s_cluster.kubeconfig, tmp_path, ns, scrape_interval=f"{SCRAPE_S}s")
    operator = OperatorProcess(k8s_cluster.kubeconfig, tmp_path, "--namespace", ns, "--resync-interval", "30")
    port = free_port()
    (tmp_path / "adapter.yaml").write_text(yaml.safe_dump({"rules": adapter_rules()}))
    adapter_log = tmp_path / "adapter.log"
    registration = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hdc-prometheus-adapter", "namespace": ns},
            "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"name": "https", "port": port}]},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
            "spec": {
                "service": {"name": "hdc-prometheus-adapter", "namespace": ns, "port": port},
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]
    workload = scaled_workload(name, ns, "hpa")

    def replicas() -> int:
        return json.loads(kubectl(k8s_cluster, "get", "hdcw", name, "-n", ns, "-o", "json"))["spec"]["replicas"]

    def pod_metric() -> list[dict]:
        """The per-pod metric through the aggregated API ([] while the adapter has not listed the series yet)."""
        out = subprocess.run(
            [
                prom.tool("kubectl"),
                "--kubeconfig",
                k8s_cluster.kubeconfig,
                "get",
                "--raw",
                f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{ns}/pods/*/{THROUGHPUT_METRIC}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout)["items"] if out.returncode == 0 else []

    adapter = load = None
    numbers = {}
    try:
        start_stack(k8s_cluster, mon, operator)
        adapter = subprocess.Popen(
            [
                str(tools_bin() / "prometheus-adapter"),
                f"--config={tmp_path / 'adapter.yaml'}",
                f"--lister-kubeconfig={k8s_cluster.kubeconfig}",
                f"--authentication-kubeconfig={k8s_cluster.kubeconfig}",
                f"--authorization-kubeconfig={k8s_cluster.kubeconfig}",
                f"--prometheus-url={mon.url}/",
                f"--secure-port={port}",
                f"--cert-dir={tmp_path / 'certs'}",
                "--metrics-relist-interval=5s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(adapter_log, "wb"),
        )
        kubectl(
            k8s_cluster,
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": registration}),
        )
        kubectl(
            k8s_cluster,
            "wait",
            "--for=condition=Available",
            "--timeout=60s",
            "apiservice/v1beta1.custom.metrics.k8s.io",
        )
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload))
        hpa = mon.wait(
            lambda: json.loads(kubectl(k8s_cluster, "get", "hpa", "-n", ns, "-o", "json"))["items"],
            "the operator's HPA",
        )[0]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "name": name,
        }
        assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == THROUGHPUT_METRIC
        mon.wait_workers(1)

        load = LoadGenerator(mon.status_file, ns, name, "MAP", 1024, clients=2).start()
        started = time.monotonic()
        # the adapter answers through the aggregator with the per-pod rate the HPA reads
        items = mon.wait(
            lambda: [i for i in pod_metric() if float(i["value"].rstrip("m")) > 0] or None,
            "the custom metric through the aggregated API",
            120,
        )
        assert items[0]["describedObject"]["kind"] == "Pod"
        numbers["metric_visible_s"] = time.monotonic() - started
        mon.wait(lambda: replicas() == 3, "the HPA scaling the HDCWorkload to 3", 180)
        numbers["scale_up_s"] = time.monotonic() - started
        mon.wait_workers(3)
        status = json.loads(kubectl(k8s_cluster, "get", "hpa", name, "-n", ns, "-o", "json"))["status"]
        assert status["desiredReplicas"] == 3, status
        assert status["currentMetrics"][0]["pods"]["metric"]["name"] == THROUGHPUT_METRIC

        load.stop()
        load = None
        stopped = time.monotonic()
        mon.wait(lambda: replicas() == 1, "the HPA scaling the HDCWorkload down to 1", 300)
        numbers["scale_down_s"] = time.monotonic() - stopped
        print("\nhpa e2e:", json.dumps({k: round(v, 1) for k, v in numbers.items()}))
    except AssertionError:
        print(adapter_log.read_text(errors="replace")[-3000:] if adapter_log.exists() else "", operator.log()[-2000:])
        # what the HPA controller saw last (conditions: AbleToScale, ScalingActive, ScalingLimited; metrics)
        hpa_now = subprocess.run(
            [
                prom.tool("kubectl"),
                "--kubeconfig",
                k8s_cluster.kubeconfig,
                "get",
                "hpa",
                "-n",
                ns,
                "-o",
                "jsonpath={.items[*].status}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print("HPA status:", hpa_now.stdout[-4000:], hpa_now.stderr[-500:])
        raise
    finally:
        if load is not None:
            load.stop()
        subprocess.run(
            [
                prom.tool("kubectl"),
                "--kubeconfig",
                k8s_cluster.kubeconfig,
                "delete",
                "apiservice",
                "v1beta1.custom.metrics.k8s.io",
                "--ignore-not-found",
            ],
            capture_output=True,
            timeout=60,
        )
        if adapter is not None:
            adapter.terminate()
            adapter.wait(20)
        subprocess.run(
            [
                prom.tool("kubectl"),
                "--kubeconfig",
                k8s_cluster.kubeconfig,
                "delete",
                "hdcw",
                name,
                "-n",
                ns,
                "--wait=true",
                "--timeout=60s",
            ],
            capture_output=True,
            timeout=90,
        )
        mon.stop()
        operator.stop()
