"""The test cluster is a real Kubernetes control plane: scheduling, garbage collection, validation, restarts.

These run against the local kwok cluster (hack/cluster.sh: real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler; fake GPU nodes) or the cluster named by HDC_TEST_KUBECONFIG. See docs/testing.md.
"""

import json
import os
import time

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.k8s

GPU = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
WAIT_S = 120  # bound on every wait below; the pytest timeout (600 s) is the outer bound
# kwok's nodes never pull or run images; on kind, deploy/kind/run-e2e.sh sets a pause image the nodes hold.
IMAGE = os.environ.get("HDC_TEST_IMAGE", "hd-compute/placeholder:never-pulled")


def wait_for(what, check, timeout=WAIT_S, interval=0.5):
    """Polls check() until it returns a truthy value, which it returns; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def gpu_nodes(api):
    nodes = client.CoreV1Api(api).list_node(label_selector=f"{GPU_PRODUCT_LABEL}={GPU_PRODUCT}").items
    return [n for n in nodes if int(n.status.allocatable.get(GPU, "0")) > 0]


def gpu_deployment(name, replicas, gpus):
    labels = {"app": name}
    container = client.V1Container(
        name="worker",
        image=IMAGE,
        resources=client.V1ResourceRequirements(limits={GPU: str(gpus)}, requests={GPU: str(gpus)}),
    )
    pod = client.V1PodSpec(
        containers=[container],
        node_selector={GPU_PRODUCT_LABEL: GPU_PRODUCT},
        tolerations=[client.V1Toleration(key=GPU, operator="Exists", effect="NoSchedule")],
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def test_fake_gpu_nodes_are_tainted_labelled_and_ready(k8s_cluster):
    nodes = gpu_nodes(k8s_cluster.api)
    assert len(nodes) >= 1
    for node in nodes:
        assert 1 <= int(node.status.allocatable[GPU]) <= 8
        assert {"cpu", "memory", "pods"} <= set(node.status.allocatable)
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        assert (GPU, "present", "NoSchedule") in taints
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", node.metadata.name


def test_gpu_deployment_pods_run_on_gpu_nodes(k8s_cluster, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_cluster.api), client.CoreV1Api(k8s_cluster.api)
    apps.create_namespaced_deployment(k8s_namespace, gpu_deployment("gpu-ok", replicas=2, gpus=1))

    def ready():
        d = apps.read_namespaced_deployment("gpu-ok", k8s_namespace)
        return (d.status.ready_replicas or 0) == 2

    wait_for("2 ready replicas of a 1-GPU deployment", ready)
    gpu_node_names = {n.metadata.name for n in gpu_nodes(k8s_cluster.api)}
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=gpu-ok").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name in gpu_node_names
        assert pod.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def test_gpu_pod_without_toleration_is_not_scheduled_on_tainted_nodes(k8s_cluster, k8s_namespace):
    core = client.CoreV1Api(k8s_cluster.api)
    dep = gpu_deployment("no-toleration", replicas=1, gpus=1)
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="no-toleration"), spec=dep.spec.template.spec)
    pod.spec.tolerations = None
    core.create_namespaced_pod(k8s_namespace, pod)
    event = wait_for("a FailedScheduling event", lambda: failed_scheduling(core, k8s_namespace, "no-toleration"))
    assert "had untolerated taint" in event.message, event.message
    assert core.read_namespaced_pod("no-toleration", k8s_namespace).status.phase == "Pending"


def failed_scheduling(core, namespace, pod_name):
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod_name}").items
    return next((e for e in events if e.reason == "FailedScheduling"), None)


def test_deployment_asking_more_gpus_than_the_cluster_has_stays_pending(k8s_cluster, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_cluster.api), client.CoreV1Api(k8s_cluster.api)
    total = sum(int(n.status.allocatable[GPU]) for n in gpu_nodes(k8s_cluster.api))
    apps.create_namespaced_deployment(k8s_namespace, gpu_deployment("gpu-too-many", replicas=1, gpus=total + 1))

    def pod_name():
        pods = core.list_namespaced_pod(k8s_namespace, label_selector="app=gpu-too-many").items
        return pods[0].metadata.name if pods else None

    name = wait_for("the deployment's pod", pod_name)
    event = wait_for("a FailedScheduling event", lambda: failed_scheduling(core, k8s_namespace, name))
    assert f"Insufficient {GPU}" in event.message, event.message
    pod = core.read_namespaced_pod(name, k8s_namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_deleting_an_owner_cascades_to_its_dependents(k8s_cluster, k8s_namespace):
    core = client.CoreV1Api(k8s_cluster.api)
    owner = core.create_namespaced_config_map(
        k8s_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    for i in range(3):
        meta = client.V1ObjectMeta(name=f"dependent-{i}", owner_references=[ref])
        core.create_namespaced_secret(k8s_namespace, client.V1Secret(metadata=meta, string_data={"i": str(i)}))
    assert len(core.list_namespaced_secret(k8s_namespace).items) >= 3

    # Background propagation: the API server deletes only the owner; the garbage collector the rest.
    core.delete_namespaced_config_map("owner", k8s_namespace, propagation_policy="Background")

    def dependents_gone():
        names = {s.metadata.name for s in core.list_namespaced_secret(k8s_namespace).items}
        return not any(n.startswith("dependent-") for n in names)

    wait_for("the garbage collector to delete the dependents", dependents_gone)


def test_deleting_a_deployment_cascades_to_replicasets_and_pods(k8s_cluster, k8s_namespace):
    apps, core = client.AppsV1Api(k8s_cluster.api), client.CoreV1Api(k8s_cluster.api)
    apps.create_namespaced_deployment(k8s_namespace, gpu_deployment("cascade", replicas=1, gpus=1))
    wait_for(
        "the deployment's pod", lambda: core.list_namespaced_pod(k8s_namespace, label_selector="app=cascade").items
    )
    assert apps.list_namespaced_replica_set(k8s_namespace, label_selector="app=cascade").items

    apps.delete_namespaced_deployment("cascade", k8s_namespace, propagation_policy="Foreground")

    def all_gone():
        return not (
            apps.list_namespaced_deployment(k8s_namespace).items
            or apps.list_namespaced_replica_set(k8s_namespace).items
            or core.list_namespaced_pod(k8s_namespace).items
        )

    wait_for("the deployment, its replica set and its pods to be deleted", all_gone)


def create_rejected(create, *args):
    """Calls a create that must fail validation; returns the API server's Status message."""
    with pytest.raises(ApiException) as e:
        create(*args)
    assert e.value.status == 422, e.value
    status = json.loads(e.value.body)
    assert status["reason"] == "Invalid", status
    return status["message"]


def test_api_server_rejects_invalid_objects_with_its_validation_message(k8s_cluster, k8s_namespace):
    core, apps = client.CoreV1Api(k8s_cluster.api), client.AppsV1Api(k8s_cluster.api)
    bad_name = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Not_A_DNS_Name"))
    message = create_rejected(core.create_namespaced_config_map, k8s_namespace, bad_name)
    assert 'metadata.name: Invalid value: "Not_A_DNS_Name"' in message, message

    dep = gpu_deployment("negative", replicas=1, gpus=1)
    dep.spec.replicas = -1
    message = create_rejected(apps.create_namespaced_deployment, k8s_namespace, dep)
    assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0" in message, message

    # The prometheus-operator CRDs are installed with their OpenAPI schemas, so a bad ServiceMonitor fails too.
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "bad"},
        "spec": {"selector": {}, "endpoints": "not-a-list"},
    }
    custom = client.CustomObjectsApi(k8s_cluster.api)
    message = create_rejected(
        custom.create_namespaced_custom_object, "monitoring.coreos.com", "v1", k8s_namespace, "servicemonitors", monitor
    )
    assert "spec.endpoints" in message and "must be of type array" in message, message


def test_kube_apiserver_stops_and_restarts_with_state_intact(k8s_cluster, k8s_namespace):
    if not k8s_cluster.local:
        pytest.skip("HDC_TEST_KUBECONFIG names a cluster whose processes this run does not control")
    core = client.CoreV1Api(k8s_cluster.api)
    before = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before-restart"), data={"k": "v"})
    core.create_namespaced_config_map(k8s_namespace, before)

    k8s_cluster.stop_component("kube-apiserver")
    try:
        with pytest.raises(Exception) as down:  # connection refused: nothing listens any more
            core.read_namespaced_config_map("before-restart", k8s_namespace, _request_timeout=5)
        assert not isinstance(down.value, ApiException), down.value
    finally:
        k8s_cluster.start_component("kube-apiserver")

    assert core.read_namespaced_config_map("before-restart", k8s_namespace).data == {"k": "v"}
    after = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after-restart"))
    core.create_namespaced_config_map(k8s_namespace, after)
    # The controllers reconnect too: a new deployment is scheduled and becomes ready after the restart.
    apps = client.AppsV1Api(k8s_cluster.api)
    apps.create_namespaced_deployment(k8s_namespace, gpu_deployment("after-restart", replicas=1, gpus=1))
    wait_for(
        "a deployment created after the restart to become ready",
        lambda: (apps.read_namespaced_deployment("after-restart", k8s_namespace).status.ready_replicas or 0) == 1,
    )
