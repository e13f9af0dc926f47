"""hack/cluster/kwok-stages.yaml: kwok's own default Stages (a Stage in the config replaces all of them) plus ours.

The copies must stay equal to the kwok release hack/build-tools.sh builds, except the one documented change to
pod-ready; a cluster that lost a default Stage would leave nodes NotReady or pods Pending
(tests/deploy/test_k8s_cluster.py shows they are not). The two marker-image Stages are exercised on the real
control plane by
tests/operator/test_operator_k8s.py::test_failing_pods_make_the_workload_degraded_until_the_image_is_fixed.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import paths
import pytest
import yaml

REPO = paths.REPO
STAGES = REPO / "hack" / "cluster" / "kwok-stages.yaml"
MARKERS = {"hdc-test.invalid/image-pull-backoff:never", "hdc-test.invalid/crash-loop-backoff:always"}
DEFAULTS = {
    "node-initialize": "node/fast/node-initialize.yaml",
    "node-heartbeat-with-lease": "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod-ready": "pod/fast/pod-ready.yaml",
    "pod-complete": "pod/fast/pod-complete.yaml",
    "pod-delete": "pod/fast/pod-delete.yaml",
}


def stages() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(STAGES.read_text()) if d}


def kwok_version() -> str:
    """The kwok release hack/build-tools.sh builds (hack/tools/go.mod pins it)."""
    return re.search(r"^\s*sigs\.k8s\.io/kwok (v\S+)", (REPO / "hack" / "tools" / "go.mod").read_text(), re.M).group(1)


def kwok_module_dir() -> pathlib.Path | None:
    try:
        cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = pathlib.Path(cache or os.path.expanduser("~/go/pkg/mod")) / "sigs.k8s.io" / f"kwok@{kwok_version()}"
    return path if path.is_dir() else None


def test_the_file_holds_kwoks_defaults_and_our_two_stages():
    found = stages()
    assert set(found) == set(DEFAULTS) | {"hdc-test-image-pull-backoff", "hdc-test-crash-loop-backoff"}
    assert all(d["apiVersion"] == "kwok.x-k8s.io/v1alpha1" and d["kind"] == "Stage" for d in found.values())
    for name in ("hdc-test-image-pull-backoff", "hdc-test-crash-loop-backoff"):
        spec = found[name]["spec"]
        image = next(e for e in spec["selector"]["matchExpressions"] if e["key"] == ".spec.containers.[].image")
        assert image["operator"] == "In" and set(image["values"]) <= MARKERS
        assert spec["weight"] > 0  # picked over pod-ready when both match a new pod
    ready_exprs = found["pod-ready"]["spec"]["selector"]["matchExpressions"]
    assert {
        "key": ".spec.containers.[].image",
        "operator": "NotIn",
        "values": sorted(MARKERS, reverse=True),
    } in ready_exprs


def test_the_default_stages_are_kwoks_own():
    module = kwok_module_dir()
    if module is None:
        pytest.skip("the Go module cache has no kwok source (hack/build-tools.sh was served from its tool cache)")
    found = stages()
    for name, rel in DEFAULTS.items():
        upstream = yaml.safe_load((module / "kustomize" / "stage" / rel).read_text())
        ours = found[name]
        if name == "pod-ready":  # our one change: the marker images are left out
            ours["spec"]["selector"]["matchExpressions"] = [
                e for e in ours["spec"]["selector"]["matchExpressions"] if e["key"] != ".spec.containers.[].image"
            ]
        assert ours == upstream, f"{name} differs from kwok's {rel}"
