"""CloudNativePG's Cluster CRD, from its upstream release through the Go module cache (checksummed by the Go
checksum database, never copied into the repository): what the operator's `<name>-state` Cluster is checked
against (kubeconform -strict, and a real API server in the k8s tests)."""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess
import time

import pytest
import yaml

CNPG_MODULE = "github.com/cloudnative-pg/cloudnative-pg"
CNPG_VERSION = "v1.27.0"
CLUSTER_CRD = "config/crd/bases/postgresql.cnpg.io_clusters.yaml"


@functools.lru_cache(maxsize=None)
def cnpg_cluster_crd_path() -> pathlib.Path:
    """The CRD file in the module cache; downloads the module once (fails the test with go's message)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{CNPG_MODULE}@{CNPG_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
    )
    info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0 or "Dir" not in info:
        pytest.fail(f"cannot fetch {CNPG_MODULE}@{CNPG_VERSION}: {info.get('Error') or proc.stderr}", pytrace=False)
    path = pathlib.Path(info["Dir"]) / CLUSTER_CRD
    if not path.is_file():
        pytest.fail(f"{CLUSTER_CRD} is missing from {CNPG_MODULE}@{CNPG_VERSION}", pytrace=False)
    return path


def cnpg_cluster_crd() -> dict:
    return yaml.safe_load(cnpg_cluster_crd_path().read_text())


def _kubectl(kubectl_bin: str, kubeconfig: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([kubectl_bin, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=120)


def install_cnpg_crd(kubectl_bin: str, kubeconfig: str, timeout_s: float = 60) -> None:
    """Installs CloudNativePG's Cluster CRD on the cluster and waits until it is Established (cluster-scoped: the
    tests that install it remove it again, remove_cnpg_crd, so the others see a cluster without it). Polled, not
    `kubectl wait`: that fails at once while a new CRD has no status.conditions yet."""
    crd = str(cnpg_cluster_crd_path())
    proc = _kubectl(kubectl_bin, kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", crd)
    assert proc.returncode == 0, f"kubectl apply of CloudNativePG's CRD: {proc.stderr}"
    established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + timeout_s
    while _kubectl(kubectl_bin, kubeconfig, "get", "-f", crd, "-o", established).stdout != "True":
        assert time.monotonic() < deadline, f"CloudNativePG's CRD not Established within {timeout_s} s"
        time.sleep(0.2)


def remove_cnpg_crd(kubectl_bin: str, kubeconfig: str) -> None:
    """Deletes the CRD (and so its Clusters), waiting up to a minute for it to go."""
    _kubectl(kubectl_bin, kubeconfig, "delete", "-f", str(cnpg_cluster_crd_path()), "--timeout=60s")
