"""Real containers on the real node (hack/real-node.sh), from the busybox test image: what a kubelet, containerd
and runc do that kwok's fake nodes cannot show. Probes gate readiness and restart a dead container, the security
context holds inside the container (uid, gid, read-only root), a memory limit is enforced by the kernel (OOMKilled),
and Services work through kube-proxy and CoreDNS from inside a pod.
"""

from __future__ import annotations

import pytest
from kubernetes import client
from real_node_support import WAIT_S, RealNode
from test_operator_k8s import kubectl, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.real_node]

UID = 10001  # the worker image's user (operator/hdc_operator/builders/deployment.py)
HTTP_PORT = 8080
# busybox httpd serving /tmp/www (an emptyDir: the root filesystem is read-only); ready.html is what the readiness
# probe asks for.
SERVE = f"mkdir -p /tmp/www && echo ok > /tmp/www/ready.html && exec busybox httpd -f -p {HTTP_PORT} -h /tmp/www"


def pod(node: RealNode, name: str, args: list[str], **container: object) -> dict:
    """A pod of the test image on the real node, with the worker pods' security context (restricted PSS)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **node.placement(),
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": UID,
                "runAsGroup": UID,
                "fsGroup": UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": node.test_image,
                    "imagePullPolicy": "Never",
                    "args": args,
                    "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    **container,
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def http_probe(path: str, port: object = "http", period: int = 1, failures: int = 1) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures}


def ready(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    status = core.read_namespaced_pod(name, namespace).status
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def container_status(core: client.CoreV1Api, namespace: str, name: str) -> client.V1ContainerStatus | None:
    statuses = core.read_namespaced_pod(name, namespace).status.container_statuses
    return statuses[0] if statuses else None


def exec_in(node: RealNode, namespace: str, name: str, *command: str, check: bool = True) -> str:
    """Runs a command in the pod's container through the API server and the kubelet (kubectl exec)."""
    result = kubectl(node.cluster, "exec", "-n", namespace, name, "--", *command, check=check)
    return result.stdout + result.stderr


def test_readiness_follows_the_probe_and_the_security_context_holds_inside(real_node, k8s_namespace):
    core = client.CoreV1Api(real_node.cluster.api)
    core.create_namespaced_pod(
        k8s_namespace,
        pod(real_node, "web", ["sh", "-c", SERVE], readinessProbe=http_probe("/ready.html")),
    )
    wait_for(lambda: ready(core, k8s_namespace, "web"), WAIT_S, "the pod Ready through its readiness probe")
    status = core.read_namespaced_pod("web", k8s_namespace)
    assert status.spec.node_name == real_node.name
    assert status.status.pod_ip.startswith("10.244.")  # the CNI bridge's range, not a kwok address

    # The kubelet really probes: remove what the probe asks for and the pod turns unready; put it back, Ready.
    exec_in(real_node, k8s_namespace, "web", "busybox", "rm", "/tmp/www/ready.html")
    wait_for(lambda: not ready(core, k8s_namespace, "web"), WAIT_S, "the pod unready once the probe fails")
    exec_in(real_node, k8s_namespace, "web", "sh", "-c", "echo ok > /tmp/www/ready.html")
    wait_for(lambda: ready(core, k8s_namespace, "web"), WAIT_S, "the pod Ready again")

    assert exec_in(real_node, k8s_namespace, "web", "busybox", "id", "-u").strip() == str(UID)
    assert exec_in(real_node, k8s_namespace, "web", "busybox", "id", "-g").strip() == str(UID)
    denied = exec_in(real_node, k8s_namespace, "web", "busybox", "touch", "/written", check=False)
    assert "Read-only file system" in denied, denied
    exec_in(real_node, k8s_namespace, "web", "busybox", "touch", "/tmp/written")  # the emptyDir is writable
    # No capabilities: even a file the user owns cannot be given to root.
    denied = exec_in(real_node, k8s_namespace, "web", "busybox", "chown", "0", "/tmp/written", check=False)
    assert "Operation not permitted" in denied, denied


def test_a_failing_liveness_probe_restarts_the_container(real_node, k8s_namespace):
    core = client.CoreV1Api(real_node.cluster.api)
    # Nothing listens on port 9: every liveness probe fails, and the kubelet kills and restarts the container.
    core.create_namespaced_pod(
        k8s_namespace, pod(real_node, "dying", ["sleep", "3600"], livenessProbe=http_probe("/", port=9))
    )

    def restarted() -> client.V1ContainerStatus | None:
        s = container_status(core, k8s_namespace, "dying")
        return s if s and s.restart_count >= 1 and s.last_state.terminated else None

    status = wait_for(restarted, WAIT_S, "a restart after the liveness probe failed")
    assert status.last_state.terminated.exit_code == 137  # SIGKILL after the 1 s grace period (sleep ignores TERM)
    events = core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=dying").items
    assert any(e.reason == "Unhealthy" and "Liveness probe failed" in e.message for e in events)
    assert any(e.reason == "Killing" and "failed liveness probe" in e.message for e in events)


def test_a_memory_limit_is_enforced_as_an_oom_kill(real_node, k8s_namespace):
    core = client.CoreV1Api(real_node.cluster.api)
    # tail buffers /dev/zero, which has no newline, until the cgroup's limit stops it.
    spec = pod(real_node, "hungry", ["tail", "/dev/zero"], resources={"limits": {"memory": "32Mi"}})
    spec["spec"]["restartPolicy"] = "Never"
    core.create_namespaced_pod(k8s_namespace, spec)

    def terminated() -> client.V1ContainerStateTerminated | None:
        s = container_status(core, k8s_namespace, "hungry")
        return s.state.terminated if s else None

    state = wait_for(terminated, WAIT_S, "the container to be killed at its memory limit")
    assert (state.reason, state.exit_code) == ("OOMKilled", 137)
    wait_for(  # the kubelet writes the phase in a later status update than the container's state
        lambda: core.read_namespaced_pod("hungry", k8s_namespace).status.phase == "Failed", WAIT_S, "phase Failed"
    )


def test_services_and_cluster_dns_from_inside_a_pod(real_node, k8s_namespace):
    core = client.CoreV1Api(real_node.cluster.api)
    core.create_namespaced_pod(
        k8s_namespace, pod(real_node, "web", ["sh", "-c", SERVE], readinessProbe=http_probe("/ready.html"))
    )
    core.create_namespaced_service(
        k8s_namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    core.create_namespaced_pod(k8s_namespace, pod(real_node, "client", ["sleep", "3600"]))
    wait_for(lambda: ready(core, k8s_namespace, "web") and ready(core, k8s_namespace, "client"), WAIT_S, "both pods")

    # The Service's name through CoreDNS, its ClusterIP through kube-proxy's rules, to the other pod's httpd.
    # An HTTP/1.0 GET through busybox nc: the static busybox's wget crashes (SIGSEGV) in an image without glibc's
    # NSS modules, its nc does not.
    host = f"web.{k8s_namespace}.svc.cluster.local"
    url = f"http://{host}/ready.html"
    get = f"printf 'GET /ready.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {host} 80"

    def fetched() -> str | None:
        out = exec_in(real_node, k8s_namespace, "client", "busybox", "sh", "-c", get, check=False)
        return (
            out
            if out.startswith("HTTP/1.") and " 200 " in out.splitlines()[0] and out.rstrip().endswith("ok")
            else None
        )

    wait_for(fetched, WAIT_S, f"{url} answered from the client pod")
    # The API server, as in-cluster clients (the operator, kopf) reach it: kubernetes.default.svc resolves to the
    # kubernetes Service IP, whose endpoint is forwarded to the API server.
    api_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    answer = exec_in(real_node, k8s_namespace, "client", "busybox", "nslookup", "kubernetes.default.svc.cluster.local")
    assert api_ip in answer, answer
    # busybox nc has no -z: a plain HTTP request to the API server's TLS port gets Go's TLS server's own answer
    probe = f"printf 'GET /livez HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {api_ip} 443"
    answer = exec_in(real_node, k8s_namespace, "client", "busybox", "sh", "-c", probe)
    assert "Client sent an HTTP request to an HTTPS server" in answer, answer
