"""Our worker image as a real container on the real node (hack/real-node.sh), in the pod the operator renders.

The Deployment is `build_deployment` of a CPU HDCWorkload with a local state backend, as the operator applies it
(its probes, its security context: non-root 10001, read-only root filesystem, no capabilities), placed on the
real node. A kubelet starts the image imported from `make images` (never pulled); the startup, readiness and
liveness probes pass against the worker's own /livez and /readyz; the API answers through the API server's pod
proxy (a memory created, added to and queried: its SQLite store writes to the state volume, not the read-only
root); deleting the pod sends SIGTERM and the worker closes its store and exits within the grace period.

Marked `images`: it needs the archives of `make images`, so `make test-images` runs it, not `make test`.
"""

from __future__ import annotations

import json
import subprocess
import time

import paths
import pytest
from kubernetes import client
from real_node_support import WAIT_S
from test_operator_k8s import kubectl, kubectl_bin, wait_for

from hdc_operator.builders.deployment import build_deployment
from hdc_operator.spec import parse_workload

pytestmark = [pytest.mark.images, pytest.mark.slow]

IMAGES_JSON = paths.REPO / "out" / "images" / "images.json"
DIM = 1024


def worker_deployment(node, namespace: str, image: str) -> dict:
    workload = parse_workload(
        {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "metadata": {"name": "real", "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"},
            "spec": {
                "image": image,
                "imagePullPolicy": "Never",
                "resources": {"gpus": 0, "cpu": "500m", "memory": "3Gi"},
                "hdc": {"device": "cpu", "dimension": DIM, "vsa": "BSC"},
                "state": {"backend": "local"},
                "continuousBenchmark": {"enabled": False},
            },
        }
    )
    deployment = build_deployment(workload)
    deployment["metadata"].pop("ownerReferences", None)  # no HDCWorkload object behind it here
    pod = deployment["spec"]["template"]["spec"]
    placement = node.placement()
    pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **placement["nodeSelector"]}
    pod["tolerations"] = pod.get("tolerations", []) + placement["tolerations"]
    return deployment


def test_the_worker_image_runs_under_a_real_kubelet(real_node, k8s_namespace):
    if not IMAGES_JSON.exists():
        pytest.fail("out/images/images.json is missing: run `make images` (make test-images does)", pytrace=False)
    image = json.loads(IMAGES_JSON.read_text())["worker"]["image"]
    cluster = real_node.cluster
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    deployment = worker_deployment(real_node, k8s_namespace, image)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    apps.create_namespaced_deployment(k8s_namespace, deployment)

    def ready_pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(k8s_namespace).items
        for p in pods:
            statuses = p.status.container_statuses or []
            if statuses and statuses[0].ready and p.spec.node_name == real_node.name:
                return p
        return None

    pod = wait_for(ready_pod, 4 * WAIT_S, "the worker pod Ready on the real node (its probes, through the kubelet)")
    name = pod.metadata.name
    status = pod.status.container_statuses[0]
    assert status.restart_count == 0 and status.image_id, status
    logs = kubectl(cluster, "logs", "-n", k8s_namespace, name).stdout
    assert '"event":"worker_ready"' in logs.replace(" ", ""), logs[-2000:]

    created = kubectl(
        cluster,
        "get",
        "--raw",
        f"/api/v1/namespaces/{k8s_namespace}/pods/{name}:8080/proxy/health",
        check=False,
    )
    health = json.loads(created.stdout)
    assert health["state"]["backend"] == "sqlite" and health["state"]["caught_up"] is True, health

    # writes go to the state volume: the root filesystem is read-only
    code = (
        "import sys, hd_compute as hd; from hd_compute.client import Client; "
        f"c = Client(sys.argv[1]); c.memory_create('m', vsa='BSC', dimension={DIM}); "
        f"x = hd.random(8, {DIM}, 'BSC', seed=3); c.memory_add('m', x); "
        "print(c.memory_query('m', x[5:6], k=1).indices.tolist())"
    )
    pod_ip = core.read_namespaced_pod(name, k8s_namespace).status.pod_ip
    out = subprocess.run(
        [str(paths.REPO / ".venv" / "bin" / "python"), "-c", code, f"http://{pod_ip}:8080"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[[5]]", out.stderr[-3000:]

    # SIGTERM: the kubelet stops the container when the pod is deleted; the worker closes its store and exits
    follow = subprocess.Popen(
        [kubectl_bin(), "--kubeconfig", cluster.kubeconfig, "logs", "-f", "-n", k8s_namespace, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    apps.patch_namespaced_deployment_scale("real", k8s_namespace, {"spec": {"replicas": 0}})
    tail, _ = follow.communicate(timeout=grace + 60)
    stopped = time.monotonic() - started
    assert '"event":"shutdown_completed"' in tail.replace(" ", ""), tail[-3000:]
    assert '"event":"state_closed"' in tail.replace(" ", ""), tail[-3000:]
    assert stopped < grace, f"the worker took {stopped:.1f} s of its {grace} s grace period"
    wait_for(lambda: not core.list_namespaced_pod(k8s_namespace).items, WAIT_S, "the pod gone")
