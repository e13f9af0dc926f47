"""The operator's speed on a real control plane (issue 5's benchmark; `make bench-operator`).

Part 1, reconcile latency: for N HDCWorkloads (default 100), the time from the create call to all children
present (first seen by watches), against the floor: the same child objects server-side applied directly by a
client, measured the same way in the same run, alternating one operator workload and one floor workload.
Part 2, scale: M HDCWorkloads (default 1,000, gpus: 0, one replica each) created at once on kwok CPU nodes:
time until all are Running, the operator's peak RSS (VmHWM), and its API write calls over an idle minute.

    python benchmarks/operator/bench_operator.py --kubeconfig "$KUBECONFIG" --json out/bench-operator.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import platform
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the operator process harness the e2e tests use

from kubernetes import client, config, watch  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from hdc_operator.apply import ApiError, KubeApi  # noqa: E402
from hdc_operator.builders import Capabilities, build_children  # noqa: E402
from hdc_operator.names import API_VERSION, GROUP, KIND, MANAGED_SELECTOR, PLURAL, VERSION  # noqa: E402
from hdc_operator.spec import parse_workload  # noqa: E402


def cpu_nodes(count: int) -> list[dict]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"bench-cpu-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"kubernetes.io/hostname": f"bench-cpu-{i}", "type": "kwok"},
            },
            "status": {
                "allocatable": {"cpu": "1000", "memory": "8Ti", "pods": "250"},
                "capacity": {"cpu": "1000", "memory": "8Ti", "pods": "250"},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
            },
        }
        for i in range(count)
    ]


class ChildWatcher:
    """First-seen times of every (kind, name) created in a namespace, from one watch per child kind."""

    def __init__(self, api_client, namespace: str):
        self.seen: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        policy, custom = client.PolicyV1Api(api_client), client.CustomObjectsApi(api_client)
        self.streams = [
            ("Deployment", apps.list_namespaced_deployment, {}),
            ("Service", core.list_namespaced_service, {}),
            ("ConfigMap", core.list_namespaced_config_map, {}),
            ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget, {}),
            (
                "ServiceMonitor",
                custom.list_namespaced_custom_object,
                {"group": "monitoring.coreos.com", "version": "v1", "plural": "servicemonitors"},
            ),
            (
                "PrometheusRule",
                custom.list_namespaced_custom_object,
                {"group": "monitoring.coreos.com", "version": "v1", "plural": "prometheusrules"},
            ),
        ]
        self.namespace = namespace
        self.threads = [threading.Thread(target=self._run, args=s, daemon=True) for s in self.streams]
        self.ready = threading.Barrier(len(self.threads) + 1)

    def _run(self, kind, fn, kw):
        w = watch.Watch()
        first = True
        while not self.stop.is_set():
            if first:
                self.ready.wait()
                first = False
            for event in w.stream(
                fn, namespace=self.namespace, label_selector=MANAGED_SELECTOR, timeout_seconds=30, **kw
            ):
                now = time.perf_counter()
                obj = event["object"]
                name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
                if event["type"] == "ADDED":
                    with self.lock:
                        self.seen.setdefault((kind, name), now)
                if self.stop.is_set():
                    break

    def start(self):
        for t in self.threads:
            t.start()
        self.ready.wait()
        time.sleep(1.0)  # the watches are established

    def wait_all(self, keys, timeout_s=60) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with self.lock:
                if all(k in self.seen for k in keys):
                    return max(self.seen[k] for k in keys)
            time.sleep(0.002)
        missing = [k for k in keys if k not in self.seen]
        raise TimeoutError(f"children never appeared: {missing}")


def workload_body(name: str, namespace: str) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"resources": {"gpus": 0}},
    }


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def ensure_namespace(core, name):
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def delete_namespace(core, name, timeout_s=600):
    try:
        core.delete_namespace(name)
    except client.ApiException:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except client.ApiException as exc:
            if exc.status == 404:
                return
        time.sleep(1)


def latency_part(args, api_client, tmp) -> dict:
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    ns_op, ns_floor = f"bench-op-latency-{os.getpid()}", f"bench-op-floor-{os.getpid()}"
    for ns in (ns_op, ns_floor):
        ensure_namespace(core, ns)
    (tmp / "latency").mkdir(exist_ok=True)
    proc = OperatorProcess(args.kubeconfig, tmp / "latency", "--namespace", ns_op, "--log-level", "WARNING").start()
    kube = KubeApi(api_client)
    watchers = {ns: ChildWatcher(api_client, ns) for ns in (ns_op, ns_floor)}
    for w in watchers.values():
        w.start()
    op_lat, floor_lat = [], []
    caps = Capabilities(service_monitor=True, prometheus_rule=True)
    try:
        for i in range(args.latency_workloads):
            name = f"lat-{i}"
            # The floor: the same children (built outside the timing), applied one after another by a client.
            body = workload_body(f"floor-{i}", ns_floor)
            body["metadata"]["uid"] = f"00000000-0000-0000-0000-{i:012d}"
            body["metadata"]["generation"] = 1
            children = build_children(parse_workload(body), caps)
            for c in children:
                c["metadata"].pop("ownerReferences", None)
            keys = [(c["kind"], c["metadata"]["name"]) for c in children]
            t0 = time.perf_counter()
            for c in children:
                kube.apply(c)
            floor_lat.append(watchers[ns_floor].wait_all(keys) - t0)

            op_keys = [(k, n.replace(f"floor-{i}", name)) for k, n in keys]
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(GROUP, VERSION, ns_op, PLURAL, workload_body(name, ns_op))
            op_lat.append(watchers[ns_op].wait_all(op_keys) - t0)
    finally:
        for w in watchers.values():
            w.stop.set()
        delete_namespace(core, ns_op)  # while the operator runs: it removes its finalizers
        proc.stop()
        delete_namespace(core, ns_floor)
    result = {"workloads": args.latency_workloads, "children_per_workload": len(keys)}
    for label, values in (("operator", op_lat), ("floor", floor_lat)):
        result[label] = {
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "mean_ms": round(statistics.mean(values) * 1000, 1),
        }
    result["ratio_p50"] = round(result["operator"]["p50_ms"] / result["floor"]["p50_ms"], 2)
    result["ratio_p99"] = round(result["operator"]["p99_ms"] / result["floor"]["p99_ms"], 2)
    return result


def vm_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def scale_part(args, api_client, tmp) -> dict:
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    kube = KubeApi(api_client)
    nodes = max(1, -(-args.scale_workloads // 200))
    for node in cpu_nodes(nodes):  # raw server-side apply: the typed client insists on every nodeInfo field
        kube.request(
            "PATCH",
            f"/api/v1/nodes/{node['metadata']['name']}",
            body=node,
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", "bench"), ("force", "true")],
        )
    ns = f"bench-op-scale-{os.getpid()}"  # a fresh one: a namespace still terminating refuses new objects
    ensure_namespace(core, ns)
    (tmp / "scale").mkdir(exist_ok=True)
    proc = OperatorProcess(
        args.kubeconfig,
        tmp / "scale",
        "--namespace",
        ns,
        "--log-level",
        "WARNING",
        "--resync-interval",
        str(args.resync_interval),
    ).start()
    pid = proc.proc.pid
    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        GROUP, VERSION, ns, PLURAL, workload_body(f"w-{i}", ns)
                    ),
                    range(args.scale_workloads),
                )
            )
        created_s = time.perf_counter() - t0
        running = 0
        deadline = time.monotonic() + args.scale_timeout
        while time.monotonic() < deadline:
            items = kube.list(API_VERSION, PLURAL, ns)
            running = sum(
                1
                for w in items
                if (w.get("status") or {}).get("phase") == "Running"
                and (w.get("status") or {}).get("readyReplicas") == 1
            )
            if running == args.scale_workloads:
                break
            time.sleep(2)
        all_ready_s = time.perf_counter() - t0
        if running != args.scale_workloads:
            reasons: dict[str, int] = {}
            for w in items:
                for c in (w.get("status") or {}).get("conditions") or ():
                    if c["type"] == "Degraded" and c["status"] == "True":
                        key = f"{c['reason']}: {c['message'][:160]}"
                        reasons[key] = reasons.get(key, 0) + 1
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
            raise TimeoutError(
                f"only {running}/{args.scale_workloads} Running after {args.scale_timeout} s; Degraded: {top}"
            )
        time.sleep(10)  # the last status writes' own events come back
        writes0, rec0 = proc.writes(), proc.metric_sum("hdc_operator_reconciles_total")
        time.sleep(60)
        idle_writes = proc.writes() - writes0
        idle_reconciles = proc.metric_sum("hdc_operator_reconciles_total") - rec0
        peak_rss_mib = vm_kb(pid, "VmHWM") / 1024
        rss_mib = vm_kb(pid, "VmRSS") / 1024
        busy_writes = writes0
    finally:
        delete_namespace(core, ns, timeout_s=900)
        proc.stop()
        for node in cpu_nodes(nodes):
            try:
                kube.request("DELETE", f"/api/v1/nodes/{node['metadata']['name']}", ok_missing=True)
            except ApiError as exc:  # the result stands; say what is left behind
                print(f"bench: node {node['metadata']['name']} not deleted: {exc}", file=sys.stderr)
    return {
        "workloads": args.scale_workloads,
        "nodes": nodes,
        "create_calls_s": round(created_s, 1),
        "all_running_s": round(all_ready_s, 1),
        "operator_peak_rss_mib": round(peak_rss_mib, 1),
        "operator_rss_after_idle_mib": round(rss_mib, 1),
        "writes_until_idle": int(busy_writes),
        "idle_minute_writes": int(idle_writes),
        "idle_minute_reconciles": int(idle_reconciles),
        "resync_interval_s": args.resync_interval,
    }


def install_crd(kube: KubeApi) -> None:
    """crds/hdcworkload.yaml, server-side applied, then waited on until Established."""
    import yaml

    crd = yaml.safe_load((REPO / "crds" / "hdcworkload.yaml").read_text())
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    kube.request(
        "PATCH",
        path,
        body=crd,
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", "bench"), ("force", "true")],
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = ((kube.request("GET", path) or {}).get("status") or {}).get("conditions") or ()
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise TimeoutError("the HDCWorkload CRD was not Established within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--latency-workloads", type=int, default=100)
    parser.add_argument("--scale-workloads", type=int, default=1000)
    parser.add_argument("--scale-timeout", type=float, default=900)
    parser.add_argument("--resync-interval", type=float, default=30)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    if not args.kubeconfig:
        parser.error("--kubeconfig (or KUBECONFIG) is required: hack/cluster.sh up prints it")
    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    install_crd(KubeApi(api_client))
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-operator-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": os.getloadavg(),
    }
    if not args.skip_latency:
        result["latency"] = lat = latency_part(args, api_client, tmp)
        print(
            f"reconcile latency over {lat['workloads']} workloads ({lat['children_per_workload']} children each): "
            f"operator p50 {lat['operator']['p50_ms']} ms, p99 {lat['operator']['p99_ms']} ms; floor (direct apply) "
            f"p50 {lat['floor']['p50_ms']} ms, p99 {lat['floor']['p99_ms']} ms; ratio p50 {lat['ratio_p50']}x, "
            f"p99 {lat['ratio_p99']}x",
            flush=True,
        )
    if not args.skip_scale:
        result["scale"] = sc = scale_part(args, api_client, tmp)
        print(
            f"{sc['workloads']} workloads: all Running in {sc['all_running_s']} s (creates took "
            f"{sc['create_calls_s']} s); operator peak RSS {sc['operator_peak_rss_mib']} MiB; API writes in an idle "
            f"minute: {sc['idle_minute_writes']} ({sc['idle_minute_reconciles']} reconciles in it)",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
