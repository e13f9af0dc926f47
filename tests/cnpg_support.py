"""CloudNativePG's Cluster CRD, from its upstream release through the Go module cache (checksummed by the Go
checksum database, never copied into the repository): what the operator's `<name>-state` Cluster is checked
against (kubeconform -strict, and a real API server in the k8s tests)."""

from __future__ import annotations

import functools
import json
import pathlib
import subprocess

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
