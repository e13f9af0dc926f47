"""The real node of hack/real-node.sh as the tests see it: its name, label, taint, test image and script."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import paths
import pytest

REAL_NODE_SH = paths.REPO / "hack" / "real-node.sh"
REAL_NODE_UNSUPPORTED = 3  # hack/real-node.sh's EXIT_UNSUPPORTED: this machine cannot run a real node
WAIT_S = 120  # bound on every wait of these tests; pytest's timeout (600 s) is the outer one


@dataclass
class RealNode:
    """A kubelet, containerd and runc on this machine, joined to the local cluster of the run (k8s_cluster).

    Its pods must select it and tolerate its taint (`placement`); its images are imported, never pulled.
    """

    cluster: object  # conftest.K8sCluster
    name: str = "hdc-real-0"
    label: tuple[str, str] = ("hdc.dev/real-node", "true")  # also its NoSchedule taint
    # The busybox test image of hack/real-node/build-tools.sh: httpd for probes, sh, id, tail; user 10001:10001.
    test_image: str = "localhost/hdc-real-node/busybox:test"

    def placement(self) -> dict:
        """The pod spec fields that put a pod on this node: its label as nodeSelector, a toleration of its taint."""
        key, value = self.label
        return {
            "nodeSelector": {key: value},
            "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}],
        }

    def cluster_name(self) -> str:
        return os.path.basename(self.cluster.kubeconfig).removesuffix(".kubeconfig")

    def cluster_dir(self) -> str:
        return os.path.dirname(self.cluster.kubeconfig)

    def run(self, verb: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """hack/real-node.sh VERB for this run's cluster (HDC_CLUSTER_NAME/DIR from its kubeconfig's path)."""
        env = {**os.environ, "HDC_CLUSTER_NAME": self.cluster_name(), "HDC_CLUSTER_DIR": self.cluster_dir()}
        return subprocess.run([str(REAL_NODE_SH), verb], capture_output=True, text=True, timeout=timeout, env=env)


def real_node_or_skip(cluster: object) -> RealNode:
    """The RealNode of this run's local cluster; skips, with the script's reason, where this machine cannot run one
    (not root, no overlayfs, no cgroup controllers) or the cluster is not the local one."""
    if not cluster.local:
        pytest.skip("HDC_TEST_KUBECONFIG names a cluster this run does not run; a real node joins the local one only")
    node = RealNode(cluster)
    check = node.run("check", timeout=60)
    if check.returncode == REAL_NODE_UNSUPPORTED:
        pytest.skip(check.stderr.strip())
    if check.returncode != 0:
        pytest.fail(f"hack/real-node.sh check failed (exit {check.returncode}):\n{check.stderr}", pytrace=False)
    return node
