"""An HDCWorkload reconciled by the operator onto the real node, its pod our worker image under a real kubelet.

The operator (a host process on the local control plane) renders the workload as for any user; the workload's
`scheduling` puts it on the real node. The kubelet starts the imported worker image; the operator reports the
workload Running from the real pod; a busybox pod reaches the worker through the workload's ClusterIP Service by
its DNS name (CoreDNS, kube-proxy) and gets a similarity computed; the pod deleted under a stream of requests
from the host answers every request it had accepted and exits within its grace period (SIGTERM), and the
Deployment's new pod turns Ready through the probes.

Marked `images`: it needs the archives of `make images`, so `make test-images` runs it, not `make test`.
"""

from __future__ import annotations

import json
import threading
import time

import paths
import pytest
from kubernetes import client
from operator_process import OperatorProcess
from real_node_support import WAIT_S
from test_operator_k8s import kubectl, wait_for
from test_real_node_pods import exec_in, pod, ready

import hd_compute as hd
from hd_compute.client import Client, RetryPolicy, WorkerError
from hd_compute.service.codec import hv_to_json

pytestmark = [pytest.mark.images, pytest.mark.slow]

IMAGES_JSON = paths.REPO / "out" / "images" / "images.json"
DIM = 256


def test_an_hdcworkload_runs_on_the_real_node_and_serves_through_its_service(real_node, k8s_namespace, tmp_path):
    if not IMAGES_JSON.exists():
        pytest.fail("out/images/images.json is missing: run `make images` (make test-images does)", pytrace=False)
    image = json.loads(IMAGES_JSON.read_text())["worker"]["image"]
    cluster, ns, name = real_node.cluster, k8s_namespace, "onreal"
    core = client.CoreV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(paths.REPO / "crds"))
    kubectl(cluster, "wait", "--for", "condition=Established", "--timeout=60s", "crd/hdcworkloads.hdcompute.io")
    placement = real_node.placement()
    workload = {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": image,
            "imagePullPolicy": "Never",
            "resources": {"gpus": 0, "cpu": "500m", "memory": "3Gi"},
            "hdc": {"device": "cpu", "dimension": DIM, "vsa": "MAP"},
            "continuousBenchmark": {"enabled": False},
            "scheduling": {"nodeSelector": placement["nodeSelector"], "tolerations": placement["tolerations"]},
        },
    }
    operator = OperatorProcess(cluster.kubeconfig, tmp_path, "--namespace", ns, "--resync-interval", "5").start()
    try:
        kubectl(cluster, "apply", "-f", "-", input=json.dumps(workload))

        def running_pod() -> client.V1Pod | None:
            pods = core.list_namespaced_pod(ns, label_selector=f"hdcompute.io/workload={name}").items
            live = [p for p in pods if p.metadata.deletion_timestamp is None and p.spec.node_name == real_node.name]
            return live[0] if len(live) == 1 and ready(core, ns, live[0].metadata.name) else None

        first = wait_for(running_pod, 4 * WAIT_S, "the workload's pod Ready on the real node", operator)

        def reported_running() -> dict | None:
            w = custom.get_namespaced_custom_object("hdcompute.io", "v1alpha1", ns, "hdcworkloads", name)
            status = w.get("status", {})
            return w if status.get("phase") == "Running" and status.get("readyReplicas") == 1 else None

        wait_for(reported_running, WAIT_S, "the operator's status: Running, 1 ready replica", operator)

        # through the Service, by name, from a pod on the real node (CoreDNS, kube-proxy's ClusterIP rules)
        core.create_namespaced_pod(ns, pod(real_node, "caller", ["sleep", "3600"]))
        wait_for(lambda: ready(core, ns, "caller"), WAIT_S, "the caller pod")
        vectors = hd.random(3, DIM, "MAP", seed=4)
        body = json.dumps({"queries": hv_to_json(vectors[:1]), "others": hv_to_json(vectors)})
        request = (
            f"POST /v1/ops/similarity HTTP/1.0\\r\\nHost: {name}\\r\\nContent-Type: application/json\\r\\n"
            f"Content-Length: {len(body)}\\r\\n\\r\\n{body}"
        )
        # stdin stays open after the request: busybox nc half-closes at its EOF, and the worker drops a connection
        # whose client has gone before its answer
        script = f"(printf '%b' '{request}'; sleep 10) | busybox nc -w 15 {name}.{ns}.svc.cluster.local 8080"

        seen: list[str] = []

        def similarity() -> dict | None:
            out = exec_in(real_node, ns, "caller", "busybox", "sh", "-c", script, check=False).replace("\r\n", "\n")
            seen.append(out)  # (kubectl's output, read as text, has its CRLFs as LFs already)
            head, _, payload = out.partition("\n\n")
            return json.loads(payload) if head.startswith("HTTP/1.") and " 200 " in head.split("\n")[0] else None

        try:
            answer = wait_for(similarity, WAIT_S, "a similarity through the Service")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast answer: {seen[-1][:2000] if seen else None!r}") from None
        scores = answer["similarities"][0]
        assert max(range(3), key=lambda i: scores[i]) == 0 and abs(scores[0] - 1.0) < 1e-5, answer

        # SIGTERM under load: requests from the host to the pod's IP until it stops accepting
        url = f"http://{first.status.pod_ip}:8080"
        answered, refused, failed = [], [], []
        stop = threading.Event()

        def load() -> None:
            with Client(url, retry=RetryPolicy(attempts=1), timeout=30) as c:
                while not stop.is_set():
                    try:
                        c.similarity(vectors[:1], vectors)
                        answered.append(time.monotonic())
                    except WorkerError as exc:  # an HTTP error answer: the worker answered, but wrongly
                        failed.append(repr(exc))
                    except Exception as exc:  # noqa: BLE001 - refused or reset: the pod has stopped accepting
                        refused.append(repr(exc))
                        if len(refused) > 20:
                            return
                        time.sleep(0.05)

        thread = threading.Thread(target=load)
        thread.start()
        wait_for(lambda: len(answered) >= 20, WAIT_S, "requests answered before the deletion")
        grace = first.spec.termination_grace_period_seconds
        deleted_at = time.monotonic()
        core.delete_namespaced_pod(first.metadata.name, ns)

        def gone() -> bool:
            try:
                core.read_namespaced_pod(first.metadata.name, ns)
                return False
            except client.ApiException as exc:
                return exc.status == 404

        wait_for(gone, grace + WAIT_S, "the deleted pod gone")
        stopped_after = time.monotonic() - deleted_at
        stop.set()
        thread.join(60)
        assert not failed, failed[:5]  # a request the worker accepted was answered, never a 5xx
        assert len(answered) >= 20 and stopped_after < grace + 10, (len(answered), stopped_after, grace)

        replacement = wait_for(running_pod, 4 * WAIT_S, "the Deployment's new pod Ready", operator)
        assert replacement.metadata.name != first.metadata.name
    finally:
        kubectl(cluster, "delete", "hdcw", name, "-n", ns, "--wait=true", "--timeout=60s", check=False)
        operator.stop()
