"""Shared pytest configuration: the test folders on sys.path, GPU skipping, the `device` fixture, the cluster."""

import os
import subprocess
import sys
from dataclasses import dataclass

import paths
import pytest
import torch

MODELS = ["MAP", "BSC", "HRR", "FHRR"]

# The tests live in folders that mirror the source (docs/testing.md), and some share helpers by importing another
# test module by its (unique) name, e.g. `from test_chart import helm`: every folder of tests/ is importable from
# the start, so that works whichever file pytest collects first.
for _folder in sorted({p.parent for p in (paths.REPO / "tests").rglob("test_*.py")}):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Runs a test on the CPU and, where CUDA exists, on the GPU."""
    return request.param


@pytest.fixture(params=MODELS)
def vsa(request):
    return request.param


# --- Kubernetes: a real API server for the tests marked `k8s` (docs/testing.md) ---------------------------


REPO = paths.REPO
CLUSTER_SH = REPO / "hack" / "cluster.sh"


@dataclass
class K8sCluster:
    """A running cluster: its kubeconfig, a client for it, and (when local) control of its processes."""

    kubeconfig: str
    api: "object"  # kubernetes.client.ApiClient
    local: bool  # True: hack/cluster.sh runs it here, so its processes can be stopped and started

    def _component(self, verb: str, name: str) -> None:
        if not self.local:
            raise RuntimeError(f"cannot {verb} {name}: the cluster is not run by hack/cluster.sh here")
        subprocess.run([str(CLUSTER_SH), f"{verb}-component", name], check=True, timeout=180)

    def stop_component(self, name: str) -> None:
        """Stops one control-plane process (e.g. kube-apiserver)."""
        self._component("stop", name)

    def start_component(self, name: str) -> None:
        """Starts the stopped control-plane processes again and waits until the API is served."""
        self._component("start", name)


@pytest.fixture(scope="session")
def k8s_cluster():
    """A real Kubernetes API server, once per test run.

    HDC_TEST_KUBECONFIG set: that cluster (kind, a real one) is used as it is. Otherwise hack/cluster.sh brings
    up the local kwok cluster (built tools, fake GPU nodes); one already running (`make cluster-up`) is reused
    and left running, one started here is deleted at the end unless HDC_KEEP_CLUSTER=1.
    """
    from kubernetes import config

    external = os.environ.get("HDC_TEST_KUBECONFIG")
    if external:
        if not os.path.isfile(external):
            raise pytest.UsageError(f"HDC_TEST_KUBECONFIG={external} is not a file")
        api = config.new_client_from_config(config_file=external)
        yield K8sCluster(external, api, local=False)
        api.close()
        return

    # A cold tools build takes longer than a test may (pytest's timeout covers fixture set-up): `make test`
    # builds them first (`make tools`); a bare pytest run without them fails here, with the command to run.
    tools = subprocess.run([str(REPO / "hack" / "build-tools.sh"), "--check"], capture_output=True, text=True)
    if tools.returncode != 0:
        pytest.fail(tools.stderr.strip(), pytrace=False)
    was_running = subprocess.run([str(CLUSTER_SH), "running"], check=False).returncode == 0
    up = subprocess.run([str(CLUSTER_SH), "up"], check=False, capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"hack/cluster.sh up failed (exit {up.returncode}):\n{up.stderr[-4000:]}", pytrace=False)
    last = up.stdout.strip().splitlines()[-1]
    assert last.startswith("export KUBECONFIG="), f"unexpected last line from hack/cluster.sh up: {last!r}"
    kubeconfig = last.removeprefix("export KUBECONFIG=")
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        yield K8sCluster(kubeconfig, api, local=True)
    finally:
        api.close()
        if not was_running and os.environ.get("HDC_KEEP_CLUSTER") != "1":
            subprocess.run([str(CLUSTER_SH), "down"], check=False, timeout=120)


@pytest.fixture
def k8s_namespace(k8s_cluster, request):
    """A fresh namespace for one test, deleted (with everything in it) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_cluster.api)
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + "-" + os.urandom(3).hex()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except Exception:  # the API server may be down when a restart test failed; the cluster is disposable
        pass
