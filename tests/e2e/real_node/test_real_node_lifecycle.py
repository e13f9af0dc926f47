"""`hack/real-node.sh up` joins a real kubelet to the local cluster, and `down` leaves the host as `up` found it.

The host state compared is everything the node's parts change outside their own directory (docs/testing.md, "A
real node"): mounts, network namespaces, links, the kubepods cgroups, the nftables ruleset (iptables-nft's tables
and chains), the sysctls the kubelet, the bridge plugin and kube-proxy set, the kubelet's and containerd's host
paths, and processes. A pod runs while the node is up, so its sandbox, veth, CNI rules and mounts exist when
`down` starts.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
from kubernetes import client
from real_node_support import WAIT_S, RealNode, real_node_or_skip
from test_operator_k8s import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.real_node]

HOST_PATHS = (
    "/run/containerd",
    "/var/lib/cni",
    "/run/netns",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
)
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
)


def lines(*command: str) -> list[str]:
    return sorted(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines())


def host_state(node: RealNode) -> dict[str, object]:
    """What the real node may change on the host, in a form that compares equal when nothing changed."""
    node_dir = os.path.join(node.cluster_dir(), f"real-node-{node.cluster_name()}")
    processes = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if node_dir.encode() in f.read():
                    processes.append(cmdline)
        except OSError:  # the process exited meanwhile
            pass
    return {
        "mounts": lines("findmnt", "-rn", "-o", "TARGET"),
        "links": [line.split(":")[1].strip().split("@")[0] for line in lines("ip", "-o", "link")],
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else None,
        "cgroups": sorted(glob.glob("/sys/fs/cgroup/kubepods*") + glob.glob("/sys/fs/cgroup/*/kubepods*")),
        "nftables": lines("nft", "-s", "list", "ruleset"),  # -s: without counters, which traffic changes
        "sysctls": {s: open(f"/proc/sys/{s}").read().strip() for s in SYSCTLS if os.path.exists(f"/proc/sys/{s}")},
        "paths": {p: os.path.exists(p) for p in HOST_PATHS},
        "processes": processes,
    }


def busybox_pod(node: RealNode, name: str, args: list[str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **node.placement(),
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": node.test_image, "imagePullPolicy": "Never", "args": args}],
        },
    }


def test_down_leaves_the_host_as_up_found_it(k8s_cluster, k8s_namespace):
    node = real_node_or_skip(k8s_cluster)
    was_up = node.run("status", timeout=60).returncode == 0
    if was_up:  # the baseline is the host without the node
        assert node.run("down").returncode == 0
    before = host_state(node)

    up = node.run("up")
    assert up.returncode == 0, up.stderr
    try:
        core = client.CoreV1Api(k8s_cluster.api)
        core.create_namespaced_pod(k8s_namespace, busybox_pod(node, "sleeper", ["sleep", "3600"]))
        wait_for(
            lambda: core.read_namespaced_pod("sleeper", k8s_namespace).status.phase == "Running",
            WAIT_S,
            "a pod running on the real node",
        )
        during = host_state(node)
        # The comparison below means something only if up changed the host: a sandbox's netns, the CNI bridge,
        # the kubelet's cgroups, rules, and the node's processes.
        for key in ("mounts", "links", "netns", "cgroups", "nftables", "processes"):
            assert during[key] != before[key], key
    finally:
        down = node.run("down")
    assert down.returncode == 0, down.stderr
    after = host_state(node)
    changed = {k: {"before": before[k], "after": after[k]} for k in before if before[k] != after[k]}
    assert not changed, changed
    if was_up:
        assert node.run("up").returncode == 0


def test_the_node_is_a_real_kubelet_labelled_and_tainted(real_node):
    core = client.CoreV1Api(real_node.cluster.api)
    node = core.read_node(real_node.name)
    key, value = real_node.label
    assert node.metadata.labels[key] == value
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [(key, value, "NoSchedule")]
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})  # kwok does not play its kubelet
    info = node.status.node_info
    assert info.kubelet_version.startswith("v1.") and info.container_runtime_version.startswith("containerd://2.")
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_pods_that_do_not_tolerate_the_taint_go_to_the_cpu_node(real_node, k8s_namespace):
    """The real node attracts no other test's pods; an untolerating pod without GPUs lands on the kwok CPU node."""
    core = client.CoreV1Api(real_node.cluster.api)
    pod = busybox_pod(real_node, "elsewhere", ["sleep", "3600"])
    del pod["spec"]["nodeSelector"], pod["spec"]["tolerations"]
    core.create_namespaced_pod(k8s_namespace, pod)
    node_name = wait_for(lambda: core.read_namespaced_pod("elsewhere", k8s_namespace).spec.node_name, WAIT_S, "binding")
    assert node_name == "hdc-cpu-0"
