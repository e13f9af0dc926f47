"""The local harness (hdc_operator.dev): fake pods -> real worker processes -> a real Prometheus.

Unit part: how a pod becomes a process (environment, labels, file_sd). The `k8s` part runs the real operator on
the real control plane, the pod mirror and Prometheus as `hdcctl dev` processes, and checks processes and targets
follow the pods through scaling, pod deletion and a crashed worker.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time

import paths
import pytest
import yaml

from hdc_operator.dev import prometheus as prom
from hdc_operator.dev.workers import container_env, file_sd_groups, local_env, pod_worker, target_labels

REPO = paths.REPO


def pod(name="w-abc", namespace="ns", node="hdc-gpu-0", workload="mirror", deleting=False, phase="Running", env=None):
    meta = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": {"hdcompute.io/workload": workload, "app.kubernetes.io/managed-by": "hdc-operator"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "worker", "env": env or []}]},
        "status": {"phase": phase},
    }


# --- pure parts ---------------------------------------------------------------------------------------------


def test_container_env_resolves_values_field_refs_and_references():
    env = container_env(
        pod(
            env=[
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "HDC_DIMENSION", "value": "1024"},
                {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.pod.name=$(POD_NAME),x=$(UNDEFINED)"},
                {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]
        )
    )
    assert env == {
        "POD_NAME": "w-abc",
        "POD_NAMESPACE": "ns",
        "HDC_DIMENSION": "1024",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=w-abc,x=$(UNDEFINED)",
    }


def test_secret_key_refs_are_read_when_a_reader_is_given():
    secrets = {("ns", "db", "uri"): "postgresql://u:pw@h/db"}
    env = [
        {"name": "HDC_STATE_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "uri"}}},
        {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "db", "key": "other"}}},
    ]
    read = lambda ns, name, key: secrets.get((ns, name, key))  # noqa: E731
    assert container_env(pod(env=env), read_secret=read) == {"HDC_STATE_DATABASE_URL": "postgresql://u:pw@h/db"}
    assert dict(pod_worker(pod(env=env), read).env) == {"HDC_STATE_DATABASE_URL": "postgresql://u:pw@h/db"}
    assert container_env(pod(env=env)) == {}  # without a reader, as before


def test_only_scheduled_live_pods_get_a_process():
    assert pod_worker(pod()) is not None
    assert pod_worker(pod(node=None)) is None  # Pending, not bound to a node
    assert pod_worker(pod(deleting=True)) is None
    assert pod_worker(pod(phase="Failed")) is None
    assert pod_worker(pod(phase="Succeeded")) is None


def test_local_overrides_win_over_the_pods_environment():
    w = pod_worker(
        pod(
            env=[
                {"name": "HDC_PORT", "value": "8080"},
                {"name": "HDC_HOST", "value": "0.0.0.0"},
                {"name": "HDC_DEVICE", "value": "cuda"},
                {"name": "HDC_STATE_DIR", "value": "/var/lib"},
                {"name": "HDC_VSA", "value": "BSC"},
            ]
        )
    )
    env = local_env(dict(w.env), port=4321, state_dir="/tmp/s", base={"PATH": "/bin", "OMP_NUM_THREADS": "4"})
    assert env["HDC_PORT"] == "4321" and env["HDC_HOST"] == "127.0.0.1" and env["HDC_DEVICE"] == "cpu"
    assert env["HDC_STATE_DIR"] == "/tmp/s" and env["HDC_VSA"] == "BSC" and env["PATH"] == "/bin"
    assert env["OMP_NUM_THREADS"] == "4"
    assert local_env({}, port=1, state_dir="s", base={})["OMP_NUM_THREADS"] == "1"


def test_targets_carry_the_service_monitor_labels():
    from hdc_operator.builders.servicemonitor import RELABELINGS

    w = pod_worker(pod(name="mirror-5d8-x", namespace="team", workload="mirror"))
    labels = target_labels(w)
    assert {r["targetLabel"] for r in RELABELINGS} <= set(labels)
    assert labels == {"namespace": "team", "pod": "mirror-5d8-x", "workload": "mirror", "job": "mirror"}
    b = pod_worker(pod(name="a", workload="mirror"))
    assert file_sd_groups([(w, 2), (b, 1)]) == file_sd_groups([(b, 1), (w, 2)])  # stable text
    assert file_sd_groups([(b, 1)]) == [{"targets": ["127.0.0.1:1"], "labels": target_labels(b)}]


def test_prometheus_config_is_accepted_by_promtool(tmp_path):
    sd = tmp_path / "workers.json"
    sd.write_text(json.dumps(file_sd_groups([(pod_worker(pod()), 1234)])))
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(prom.rule_groups_from_cluster([])))
    cfg = prom.prometheus_config(
        file_sd=[sd],
        rule_files=[rules],
        alertmanager="127.0.0.1:9093",
        static_jobs={"hdc-operator": {"targets": ["127.0.0.1:8081"]}},
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([prom.tool("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["hdc-workers", "hdc-operator"]


def test_rule_groups_from_cluster_are_ordered_and_complete():
    objs = [
        {"metadata": {"namespace": "b", "name": "x"}, "spec": {"groups": [{"name": "g3", "rules": []}]}},
        {
            "metadata": {"namespace": "a", "name": "y"},
            "spec": {"groups": [{"name": "g1", "rules": []}, {"name": "g2", "rules": []}]},
        },
        {"metadata": {"namespace": "a", "name": "z"}, "spec": {}},
    ]
    assert [g["name"] for g in prom.rule_groups_from_cluster(objs)["groups"]] == ["g1", "g2", "g3"]


def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "f.json"
    prom.write_atomic(path, "old")
    prom.write_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary left


def test_a_crashing_process_is_restarted_with_back_off_and_reported(tmp_path):
    import sys

    from hdc_operator.dev.workers import PodMirror

    lines = []
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    mirror = PodMirror(lambda: [pod()], tmp_path / "sd.json", tmp_path / "work", command=crash, log=lines.append)
    try:
        mirror.sync()
        first = mirror.workers[("ns", "w-abc", "uid-w-abc")]
        first.proc.wait(30)
        mirror.sync()  # sees the exit: counted, restart scheduled in 1 s
        assert first.restarts == 1 and first.last_exit == 3 and not first.ready
        status = json.loads((tmp_path / "work" / "status.json").read_text())["workers"]
        assert status[0]["restarts"] == 1 and status[0]["last_exit"] == 3 and status[0]["pid"] is None
        assert json.loads((tmp_path / "sd.json").read_text()) == []  # no target while it is down
        assert any("exited with 3; restart 1 in 1 s" in line for line in lines)
        deadline = time.monotonic() + 30
        while first.restarts < 2 and time.monotonic() < deadline:
            mirror.sync()
            time.sleep(0.1)
        assert first.restarts == 2 and any("restart 2 in 2 s" in line for line in lines)
    finally:
        mirror.close()


def test_mirror_starts_a_real_worker_and_stops_it_with_its_pod(tmp_path):
    from hdc_operator.dev.workers import PodMirror

    pods = [
        pod(
            env=[
                {"name": "HDC_DIMENSION", "value": "256"},
                {"name": "HDC_BENCHMARK_ENABLED", "value": "false"},
                {"name": "HDC_SHUTDOWN_GRACE_SECONDS", "value": "2"},
            ]
        )
    ]
    mirror = PodMirror(lambda: pods, tmp_path / "sd.json", tmp_path / "work", log=lambda line: None)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            mirror.sync()
            (mw,) = mirror.workers.values()
            if mw.ready:
                break
            time.sleep(0.3)
        assert mw.ready, (tmp_path / "work" / "ns" / "w-abc" / "worker.log").read_text()[-3000:]
        groups = json.loads((tmp_path / "sd.json").read_text())
        assert groups == [
            {
                "targets": [f"127.0.0.1:{mw.port}"],
                "labels": {"namespace": "ns", "pod": "w-abc", "workload": "mirror", "job": "mirror"},
            }
        ]
        pods[0]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # the pod starts terminating
        mirror.sync()
        assert mirror.workers == {} and json.loads((tmp_path / "sd.json").read_text()) == []
        mw.proc.wait(15)  # SIGTERM: the worker shuts down within its grace period
        assert mw.proc.returncode == 0
    finally:
        mirror.close()


# --- the real thing ---------------------------------------------------------------------------------------------


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


def process_alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.k8s
def test_fake_pods_are_backed_by_real_workers_scraped_with_pod_labels(k8s_cluster, k8s_namespace, tmp_path):
    from dev_harness import LocalMonitoring
    from kubernetes import client
    from operator_process import OperatorProcess

    ns, name = k8s_namespace, "mirror"
    core = client.CoreV1Api(k8s_cluster.api)
    kubectl(k8s_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    operator = OperatorProcess(k8s_cluster.kubeconfig, tmp_path, "--namespace", ns, "--resync-interval", "5")
    mon = LocalMonitoring(k8s_cluster.kubeconfig, tmp_path, ns)
    workload = {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 2, "hdc": {"dimension": 1024}, "continuousBenchmark": {"enabled": False}},
    }
    try:
        # (kubectl wait fails at once while a new CRD has no status.conditions yet: hence wait around it)
        mon.wait(
            lambda: (
                kubectl(
                    k8s_cluster,
                    "wait",
                    "--for",
                    "condition=Established",
                    "--timeout=30s",
                    "crd/hdcworkloads.hdcompute.io",
                )
                is not None
            ),
            "the CRD Established",
        )
        operator.start()
        mon.start()
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(workload))

        def api_pods() -> set[str]:
            return {
                p.metadata.name
                for p in core.list_namespaced_pod(ns, label_selector=f"hdcompute.io/workload={name}").items
                if p.metadata.deletion_timestamp is None and p.spec.node_name
            }

        def mirrored(n: int):
            return mon.wait_workers(n, api_pods)

        seen = {}

        def scraped(n: int, since: float | None = None):
            """n targets up, exactly the pods'; `since`: each scraped after that time (a restarted Prometheus
            serves the previous run's last samples for its 5-minute lookback until it scrapes again)."""

            def check():
                sel = f'up{{namespace="{ns}",workload="{name}"}}'
                up = mon.query(sel if since is None else f"{sel} and timestamp({sel}) > {since}")
                seen["up"], seen["pods"] = [(s["metric"]["pod"], s["value"][1]) for s in up], api_pods()
                # Exactly the pods' targets are up. A removed target may keep its last up=0 sample for the
                # lookback when Prometheus writes no staleness marker for it (seen under load); that the
                # target itself is gone is checked on the file_sd.
                live = [s for s in up if s["value"][1] == "1"]
                return live if len(live) == n and {s["metric"]["pod"] for s in live} == api_pods() else None

            try:
                return mon.wait(check, f"Prometheus scraping {n} targets with the pods' labels")
            except AssertionError as exc:
                import urllib.request

                with urllib.request.urlopen(f"{mon.url}/api/v1/targets", timeout=5) as resp:
                    targets = [
                        (t["labels"].get("pod"), t["health"], t.get("lastScrape"))
                        for t in json.load(resp)["data"]["activeTargets"]
                    ]
                raise AssertionError(
                    f"{exc}\nlast up: {seen}\nactive targets: {targets}\nfile_sd: {mon.file_sd.read_text()}"
                ) from None

        for w in mirrored(2):
            assert w["workload"] == name and w["namespace"] == ns
            # a real worker, configured from the pod's environment and the local overrides
            env = pathlib.Path(f"/proc/{w['pid']}/environ").read_bytes().split(b"\0")
            assert f"POD_NAME={w['pod']}".encode() in env and b"HDC_DIMENSION=1024" in env
            assert b"HDC_DEVICE=cpu" in env and f"HDC_PORT={w['port']}".encode() in env
        for series in scraped(2):
            assert series["metric"]["job"] == name and series["metric"]["namespace"] == ns

        # the operator's PrometheusRule reached Prometheus
        def rule_groups():
            import urllib.request

            with urllib.request.urlopen(f"{mon.url}/api/v1/rules", timeout=5) as resp:
                names = {g["name"] for g in json.load(resp)["data"]["groups"]}
            return names if f"hdc.{ns}.{name}.alerts" in names else None

        mon.wait(rule_groups, "the workload's rule groups loaded in Prometheus")

        # scale up: 3 pods -> 3 processes, 3 targets
        kubectl(k8s_cluster, "scale", "hdcw", name, "-n", ns, "--replicas=3")
        mirrored(3)
        scraped(3)

        # a worker dies: it is restarted on the same port and counted
        victim = mon.workers()[0]
        os.kill(victim["pid"], signal.SIGKILL)
        restarted = mon.wait(
            lambda: next(
                (
                    w
                    for w in mon.workers()
                    if w["pod"] == victim["pod"]
                    and w["restarts"] == 1
                    and w["ready"]
                    and w["pid"] not in (None, victim["pid"])
                ),
                None,
            ),
            "the killed worker restarted",
        )
        assert restarted["last_exit"] == -signal.SIGKILL and restarted["port"] == victim["port"]

        # a pod deleted: its process stops, the ReplicaSet's new pod gets one
        gone = mon.workers()[1]
        core.delete_namespaced_pod(gone["pod"], ns)
        mon.wait(lambda: not process_alive(gone["pid"]), f"the process of deleted pod {gone['pod']} stopped")
        assert gone["pod"] not in {w["pod"] for w in mirrored(3)}

        # Prometheus stopped and started again (same port and TSDB): the targets come back
        assert mon.stop_prometheus() == 0
        with pytest.raises(OSError):
            mon.query("up")
        restarted_at = time.time()
        mon.start_prometheus()
        scraped(3, since=restarted_at)

        # the API server stopped: the mirror keeps its processes (ready, same pids) and carries on after
        if k8s_cluster.local:
            pids = {w["pod"]: w["pid"] for w in mon.workers()}
            k8s_cluster.stop_component("kube-apiserver")
            try:
                mon.wait(
                    lambda: "listing pods failed, keeping 3 processes" in mon.mirror_log.read_text(),
                    "the mirror to notice the API server is down",
                    60,
                )
                assert {w["pod"]: w["pid"] for w in mon.workers()} == pids
                assert all(w["ready"] for w in mon.workers())
            finally:
                k8s_cluster.start_component("kube-apiserver")
            assert {w["pod"]: w["pid"] for w in mirrored(3)} == pids

        # scale down: processes of removed pods stop (SIGTERM, at most the grace period), targets follow
        before = {w["pod"]: w["pid"] for w in mon.workers()}
        kubectl(k8s_cluster, "scale", "hdcw", name, "-n", ns, "--replicas=1")
        left = mirrored(1)
        for pod_name, pid in before.items():
            if pod_name != left[0]["pod"]:
                mon.wait(lambda: not process_alive(pid), f"process {pid} of removed pod {pod_name} stopped", 20)  # noqa: B023
        scraped(1)
        assert len(json.loads(mon.file_sd.read_text())) == 1
    finally:
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
        last = [w["pid"] for w in mon.workers()]
        codes = mon.stop()
        operator.stop()
    assert codes == (0, 0), mon.log_tails()
    assert not [pid for pid in last if pid and process_alive(pid)], "the mirror left worker processes behind"
    assert json.loads(mon.file_sd.read_text()) == []


@pytest.mark.parametrize("command", ["workers", "prometheus"])
def test_cli_names_a_missing_kubeconfig(command, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hdc_operator.cli import app

    monkeypatch.delenv("KUBECONFIG", raising=False)
    runner = CliRunner()
    missing = runner.invoke(
        app, ["dev", command, "--file-sd", str(tmp_path / "sd.json"), "--kubeconfig", str(tmp_path / "nope")]
    )
    assert missing.exit_code == 2 and f"--kubeconfig: {tmp_path / 'nope'} is not a file" in missing.output
    unset = runner.invoke(app, ["dev", command, "--file-sd", str(tmp_path / "sd.json")])
    assert unset.exit_code == 2 and "no kubeconfig given" in unset.output


def test_load_rate_can_be_read_while_the_load_thread_records():
    """The demo reads LoadStats.rate() from its display thread while the load's thread appends (a CI run of the
    demo died of "deque mutated during iteration")."""
    import threading

    from hdc_operator.dev.load import LoadStats

    stats = LoadStats()
    stop = threading.Event()

    def record():
        while not stop.is_set():
            stats.recent.append((time.monotonic(), True))

    thread = threading.Thread(target=record)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        rates = []
        while time.monotonic() < deadline:
            rates.append(stats.rate())
    finally:
        stop.set()
        thread.join()
    assert rates and max(rates) > 0
