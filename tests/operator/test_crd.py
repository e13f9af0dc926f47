"""The HDCWorkload CRD (crds/hdcworkload.yaml) and its Python mirror (hdc_operator.spec).

Pure tests: the defaults are the contract's, every CEL rule has a mirror, bad specs name their field.
k8s tests (the real kube-apiserver): the CRD installs, the API server defaults a spec exactly as parse_workload
does, rejects every bad spec below with a message naming the field, and scales through the scale subresource.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess

import paths
import pytest
import yaml
from cnpg_support import install_cnpg_crd, remove_cnpg_crd

from hdc_operator import spec as specmod
from hdc_operator.spec import InvalidSpec, default_spec, parse_workload, validate_workload

REPO = paths.REPO

# The contract's fully defaulted spec (notes: "The HDCWorkload contract"), written out by hand.
CONTRACT_DEFAULTS = {
    "image": "ghcr.io/hd-compute/hdc-worker:0.1.0",
    "imagePullPolicy": "IfNotPresent",
    "replicas": 1,
    "hdc": {"dimension": 10000, "vsa": "MAP", "device": "auto"},
    "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
    "scheduling": {"nodeSelector": {}, "tolerations": [], "affinity": {}, "priorityClassName": ""},
    "probes": {
        "liveness": {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readiness": {"initialDelaySeconds": 0, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
        "startup": {"initialDelaySeconds": 0, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 60},
    },
    "health": {"cudaMemoryThresholdMb": 1000, "memoryThresholdPercent": 90, "diskThresholdPercent": 85},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "interval": "5s", "labels": {}},
        "prometheusRule": {"enabled": True, "labels": {}},
        "dashboards": {"enabled": True, "labels": {}},
    },
    "baselines": [],
    "alerts": {
        "highLatency": {"p95ThresholdMs": 100, "for": "5m"},
        "highMemoryUsage": {"thresholdMb": 8192, "for": "2m"},
        "lowGpuUtilization": {"thresholdPercent": 20, "for": "10m"},
        "highErrorRate": {"thresholdPercent": 1, "for": "5m"},
        "benchmarkRegression": {"for": "5m"},
        "slo": {"availabilityTargetPercent": 99.9, "latencyTargetMs": 100, "latencyTargetPercent": 99},
    },
    "autoscaling": {
        "mode": "none",
        "minReplicas": 1,
        "maxReplicas": 10,
        "targetUtilizationPercent": 70,
        "targetOpsPerReplica": None,
        "tolerancePercent": 10,
        "behavior": {},
    },
    "tracing": {"enabled": False, "otlpEndpoint": "", "samplingRatio": 1.0},
    "logging": {"level": "INFO", "format": "json"},
    "continuousBenchmark": {"enabled": True, "intervalSeconds": 300, "degradationThreshold": 0.1},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "state": {"backend": "none"},
    "persistence": {"enabled": False, "size": "1Gi", "storageClassName": ""},
}

# (id, spec, the field the error must name). Each is rejected by parse_workload AND by the API server.
BAD_SPECS = [
    ("dimension-too-small", {"hdc": {"dimension": 63}}, "spec.hdc.dimension"),
    ("dimension-too-large", {"hdc": {"dimension": 1048577}}, "spec.hdc.dimension"),
    ("vsa-enum", {"hdc": {"vsa": "XOR"}}, "spec.hdc.vsa"),
    ("device-enum", {"hdc": {"device": "tpu"}}, "spec.hdc.device"),
    ("cuda-without-gpus", {"hdc": {"device": "cuda"}, "resources": {"gpus": 0}}, "spec.hdc.device"),
    ("gpus-negative", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("gpus-too-many", {"resources": {"gpus": 17}}, "spec.resources.gpus"),
    ("cpu-not-a-quantity", {"resources": {"cpu": "two"}}, "spec.resources.cpu"),
    ("memory-negative", {"resources": {"memory": "-8Gi"}}, "spec.resources.memory"),
    ("pull-policy-enum", {"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
    ("replicas-negative", {"replicas": -1}, "spec.replicas"),
    ("min-above-max", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.autoscaling.minReplicas"),
    ("autoscaling-mode-enum", {"autoscaling": {"mode": "keda"}}, "spec.autoscaling.mode"),
    (
        "target-utilization-above-100",
        {"autoscaling": {"targetUtilizationPercent": 101}},
        "spec.autoscaling.targetUtilizationPercent",
    ),
    ("target-ops-zero", {"autoscaling": {"targetOpsPerReplica": 0}}, "spec.autoscaling.targetOpsPerReplica"),
    (
        "behavior-policy-type",
        {"autoscaling": {"behavior": {"scaleUp": {"policies": [{"type": "Nodes", "value": 1, "periodSeconds": 60}]}}}},
        "spec.autoscaling.behavior.scaleUp.policies[0].type",
    ),
    ("memory-percent-above-100", {"health": {"memoryThresholdPercent": 101}}, "spec.health.memoryThresholdPercent"),
    ("disk-percent-negative", {"health": {"diskThresholdPercent": -1}}, "spec.health.diskThresholdPercent"),
    (
        "error-rate-above-100",
        {"alerts": {"highErrorRate": {"thresholdPercent": 150}}},
        "spec.alerts.highErrorRate.thresholdPercent",
    ),
    (
        "gpu-util-negative",
        {"alerts": {"lowGpuUtilization": {"thresholdPercent": -5}}},
        "spec.alerts.lowGpuUtilization.thresholdPercent",
    ),
    ("for-not-a-duration", {"alerts": {"highLatency": {"for": "5 minutes"}}}, "spec.alerts.highLatency.for"),
    (
        "availability-100",
        {"alerts": {"slo": {"availabilityTargetPercent": 100}}},
        "spec.alerts.slo.availabilityTargetPercent",
    ),
    (
        "interval-not-a-duration",
        {"monitoring": {"serviceMonitor": {"interval": "often"}}},
        "spec.monitoring.serviceMonitor.interval",
    ),
    ("baseline-without-bound", {"baselines": [{"name": "b", "operation": "bind"}]}, "spec.baselines[0]"),
    (
        "baseline-duplicate-name",
        {
            "baselines": [
                {"name": "b", "operation": "bind", "maxLatencyMs": 1},
                {"name": "b", "operation": "bundle", "maxLatencyMs": 2},
            ]
        },
        "spec.baselines[1]",
    ),
    (
        "baseline-operation-enum",
        {"baselines": [{"name": "b", "operation": "teleport", "maxLatencyMs": 1}]},
        "spec.baselines[0].operation",
    ),
    (
        "baseline-name-pattern",
        {"baselines": [{"name": "Bad Name", "operation": "bind", "maxLatencyMs": 1}]},
        "spec.baselines[0].name",
    ),
    ("baseline-missing-operation", {"baselines": [{"name": "b", "maxLatencyMs": 1}]}, "spec.baselines[0].operation"),
    (
        "baseline-latency-zero",
        {"baselines": [{"name": "b", "operation": "bind", "maxLatencyMs": 0}]},
        "spec.baselines[0].maxLatencyMs",
    ),
    ("sampling-ratio-above-1", {"tracing": {"samplingRatio": 1.5}}, "spec.tracing.samplingRatio"),
    ("tracing-without-endpoint", {"tracing": {"enabled": True}}, "spec.tracing.otlpEndpoint"),
    ("otlp-endpoint-not-a-url", {"tracing": {"otlpEndpoint": "collector:4318"}}, "spec.tracing.otlpEndpoint"),
    ("log-level-enum", {"logging": {"level": "TRACE"}}, "spec.logging.level"),
    (
        "degradation-threshold-zero",
        {"continuousBenchmark": {"degradationThreshold": 0}},
        "spec.continuousBenchmark.degradationThreshold",
    ),
    (
        "max-unavailable-garbage",
        {"podDisruptionBudget": {"maxUnavailable": "half"}},
        "spec.podDisruptionBudget.maxUnavailable",
    ),
    ("persistence-size-zero", {"persistence": {"size": "0"}}, "spec.persistence.size"),
    ("state-backend-enum", {"state": {"backend": "redis"}}, "spec.state.backend"),
    ("local-state-with-two-replicas", {"state": {"backend": "local"}, "replicas": 2}, "spec.state.backend"),
    ("local-state-autoscaled", {"state": {"backend": "local"}, "autoscaling": {"mode": "hpa"}}, "spec.state.backend"),
    ("persistence-without-local-state", {"persistence": {"enabled": True}}, "spec.persistence.enabled"),
    ("postgres-without-a-database", {"state": {"backend": "postgres"}}, "spec.state.postgres"),
    (
        "postgres-with-two-databases",
        {"state": {"backend": "postgres", "postgres": {"secretName": "db", "cluster": {}}}},
        "spec.state.postgres",
    ),
    ("postgres-settings-without-postgres", {"state": {"postgres": {"secretName": "db"}}}, "spec.state.postgres"),
    (
        "cluster-size-zero",
        {"state": {"backend": "postgres", "postgres": {"cluster": {"size": "0"}}}},
        "spec.state.postgres.cluster.size",
    ),
    (
        "toleration-effect-enum",
        {"scheduling": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "Sometimes"}]}},
        "spec.scheduling.tolerations[0].effect",
    ),
    ("wrong-type", {"replicas": "three"}, "spec.replicas"),
]


def body(name="w", spec=None, **metadata):
    obj = {"apiVersion": "hdcompute.io/v1alpha1", "kind": "HDCWorkload", "metadata": {"name": name, **metadata}}
    if spec is not None:
        obj["spec"] = spec
    return obj


# --- pure --------------------------------------------------------------------------------------------------


def test_defaults_are_the_contracts():
    assert default_spec() == CONTRACT_DEFAULTS
    assert parse_workload(body()).spec == CONTRACT_DEFAULTS
    assert parse_workload(body(spec={})).spec == CONTRACT_DEFAULTS


def test_given_values_win_and_siblings_are_still_defaulted():
    w = parse_workload(body(spec={"hdc": {"vsa": "BSC"}, "alerts": {"highLatency": {"for": "1m"}}}))
    assert w.spec["hdc"] == {"dimension": 10000, "vsa": "BSC", "device": "auto"}
    assert w.spec["alerts"]["highLatency"] == {"p95ThresholdMs": 100, "for": "1m"}


def test_null_counts_as_missing_except_where_nullable():
    w = parse_workload(body(spec={"hdc": None, "autoscaling": {"targetOpsPerReplica": None}}))
    assert w.spec["hdc"] == CONTRACT_DEFAULTS["hdc"]
    assert w.spec["autoscaling"]["targetOpsPerReplica"] is None


def test_the_parser_does_not_change_its_input():
    given = body(spec={"hdc": {"vsa": "HRR"}})
    before = copy.deepcopy(given)
    parse_workload(given)
    assert given == before


def test_workload_metadata_and_accessors():
    w = parse_workload(
        body(
            "demo",
            {"replicas": 7, "autoscaling": {"mode": "operator", "maxReplicas": 4}},
            namespace="ml",
            uid="u-1",
            generation=3,
            labels={"team": "a"},
        )
    )
    assert (w.name, w.namespace, w.uid, w.generation, dict(w.labels)) == ("demo", "ml", "u-1", 3, {"team": "a"})
    assert (w.replicas, w.desired_replicas, w.autoscaling_mode) == (7, 4, "operator")
    assert (w.dimension, w.vsa, w.device, w.gpus) == (10000, "MAP", "auto", 1)
    assert w.selector == "app.kubernetes.io/name=hdc-worker,app.kubernetes.io/instance=demo"
    assert parse_workload(body()).namespace == "default"
    assert parse_workload(body(), namespace="x").namespace == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.name = "other"  # frozen


@pytest.mark.parametrize("case_id,spec,field", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_rejected_naming_the_field(case_id, spec, field):
    with pytest.raises(InvalidSpec) as err:
        parse_workload(body(spec=spec))
    assert err.value.field == field
    assert field in str(err.value)
    assert validate_workload(body(spec=spec))[0][0] == field


def test_every_error_is_listed_not_just_the_first():
    errors = validate_workload(body(spec={"hdc": {"dimension": 1, "vsa": "nope"}, "replicas": -2}))
    assert {f for f, _ in errors} == {"spec.hdc.dimension", "spec.hdc.vsa", "spec.replicas"}


@pytest.mark.parametrize(
    "obj,field",
    [
        ({"apiVersion": "v1", "kind": "HDCWorkload", "metadata": {"name": "w"}}, "apiVersion"),
        ({"apiVersion": "hdcompute.io/v1alpha1", "kind": "Deployment", "metadata": {"name": "w"}}, "kind"),
        ({"apiVersion": "hdcompute.io/v1alpha1", "kind": "HDCWorkload", "metadata": {}}, "metadata.name"),
        (body("9-starts-with-a-digit"), "metadata.name"),
        (body("x" * 53), "metadata.name"),
        (body(spec={"unknownField": 1}), "spec.unknownField"),
        (body(spec={"hdc": {"dimensions": 4096}}), "spec.hdc.dimensions"),
        ("not a mapping", "<object>"),
    ],
)
def test_bad_objects_name_the_field(obj, field):
    with pytest.raises(InvalidSpec) as err:
        parse_workload(obj)
    assert err.value.field == field


def test_int_or_string_quantities_and_percentages_are_accepted():
    w = parse_workload(
        body(
            spec={
                "resources": {"cpu": 4, "memory": "512Mi", "gpus": 0},
                "podDisruptionBudget": {"maxUnavailable": "25%"},
                "hdc": {"device": "cpu"},
            }
        )
    )
    assert (w.spec["resources"]["cpu"], w.spec["podDisruptionBudget"]["maxUnavailable"]) == (4, "25%")
    for cpu in ("500m", "0.5", "1e3", "2k"):
        parse_workload(body(spec={"resources": {"cpu": cpu}}))


def test_every_cel_rule_of_the_crd_has_a_python_mirror_and_a_bad_case():
    rules = specmod.cel_rules()
    assert len(rules) >= 8
    assert all(r["rule"] in specmod.CEL_MIRRORS for _, r in rules)
    assert set(specmod.CEL_MIRRORS) == {r["rule"] for _, r in rules}, "a mirror whose rule left the CRD"
    # each rule's message is produced by at least one BAD_SPECS case (or the bad-name case)
    produced = set()
    for _, spec, _ in BAD_SPECS:
        produced |= {m for _, m in validate_workload(body(spec=spec))}
    produced |= {m for _, m in validate_workload(body("9bad"))}
    assert {r["message"] for _, r in rules} <= produced


def test_a_cel_rule_without_mirror_is_refused_at_load():
    schema = {
        "type": "object",
        "properties": {
            "x": {"type": "integer", "x-kubernetes-validations": [{"rule": "self > 1", "message": "x must be > 1"}]}
        },
    }
    with pytest.raises(RuntimeError, match="self > 1"):
        specmod.check_mirrors(schema)


def test_crd_shape():
    crd = specmod.load_crd()
    assert crd["spec"]["group"] == "hdcompute.io" and crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["hdcw"] and crd["spec"]["names"]["plural"] == "hdcworkloads"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["VSA", "DIM", "GPUS", "REPLICAS", "READY", "THROUGHPUT", "STATUS", "AGE"]

    def preserve_paths(schema, path=""):
        found = [path] if schema.get("x-kubernetes-preserve-unknown-fields") else []
        for key, sub in schema.get("properties", {}).items():
            found += preserve_paths(sub, f"{path}.{key}")
        if "items" in schema:
            found += preserve_paths(schema["items"], path + "[]")
        return found

    assert preserve_paths(version["schema"]["openAPIV3Schema"]) == [".spec.scheduling.affinity"]


# --- on the real API server ----------------------------------------------------------------------------------


def kubectl_bin() -> str:
    out = subprocess.run(
        [str(REPO / "hack" / "build-tools.sh"), "--print-bin-dir"], capture_output=True, text=True, check=True
    )
    return os.path.join(out.stdout.strip(), "kubectl")


def kubectl(cluster, *args, stdin: str | None = None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [kubectl_bin(), "--kubeconfig", cluster.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def crd_installed(k8s_cluster):
    kubectl(k8s_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "hdcworkload.yaml"))
    kubectl(k8s_cluster, "wait", "--for=condition=Established", "--timeout=60s", "crd/hdcworkloads.hdcompute.io")
    return k8s_cluster


def apply(cluster, namespace, obj, check=True):
    return kubectl(cluster, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(obj), check=check)


def get(cluster, namespace, name) -> dict:
    return json.loads(kubectl(cluster, "get", "-n", namespace, "hdcw", name, "-o", "json").stdout)


@pytest.mark.k8s
def test_api_server_defaults_equal_parse_workload(crd_installed, k8s_namespace):
    local = body("full-defaults")
    apply(crd_installed, k8s_namespace, local)
    server = get(crd_installed, k8s_namespace, "full-defaults")
    assert parse_workload(server).spec == parse_workload(local, namespace=k8s_namespace).spec == CONTRACT_DEFAULTS
    w = parse_workload(server)
    assert (w.namespace, w.generation) == (k8s_namespace, 1) and w.uid == server["metadata"]["uid"]


@pytest.mark.k8s
def test_api_server_defaults_a_partial_spec_equal_parse_workload(crd_installed, k8s_namespace):
    local = body(
        "partial",
        {
            "hdc": {"vsa": "FHRR", "dimension": 4096},
            "resources": {"gpus": 0, "cpu": 1},
            "baselines": [{"name": "bind_32k_dimension", "operation": "bind", "maxLatencyMs": 10}],
            "autoscaling": {"mode": "hpa", "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}},
            "tracing": {"enabled": True, "otlpEndpoint": "http://otel:4318", "samplingRatio": 0.25},
        },
    )
    apply(crd_installed, k8s_namespace, local)
    assert (
        parse_workload(get(crd_installed, k8s_namespace, "partial")).spec
        == parse_workload(local, namespace=k8s_namespace).spec
    )


@pytest.mark.k8s
@pytest.mark.parametrize("case_id,spec,field", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_api_server_rejects_bad_spec_naming_the_field(crd_installed, k8s_namespace, case_id, spec, field):
    proc = apply(crd_installed, k8s_namespace, body("bad", spec), check=False)
    assert proc.returncode != 0, f"the API server accepted {spec}"
    assert field in proc.stderr, proc.stderr
    assert "invalid" in proc.stderr.lower() or "Unsupported value" in proc.stderr, proc.stderr


@pytest.mark.k8s
def test_api_server_rejects_a_bad_name_and_an_unknown_field(crd_installed, k8s_namespace):
    proc = apply(crd_installed, k8s_namespace, body("9bad"), check=False)
    assert proc.returncode != 0 and "metadata.name must be a DNS-1035 label" in proc.stderr
    proc = apply(crd_installed, k8s_namespace, body("unknown", {"hdc": {"dimensions": 4096}}), check=False)
    assert proc.returncode != 0 and "spec.hdc.dimensions" in proc.stderr


@pytest.mark.k8s
def test_a_local_state_workload_cannot_be_scaled_past_one_replica(crd_installed, k8s_namespace):
    """The scale subresource (kubectl scale, an HPA) writes spec.replicas under the same CEL rules: two writers on
    one local state directory are refused by the API server, not discovered later."""
    apply(crd_installed, k8s_namespace, body("local", {"state": {"backend": "local"}}))
    proc = kubectl(crd_installed, "scale", "-n", k8s_namespace, "hdcw/local", "--replicas=2", check=False)
    assert proc.returncode != 0 and "spec.state.backend: local" in proc.stderr, proc.stderr
    assert get(crd_installed, k8s_namespace, "local")["spec"]["replicas"] == 1


@pytest.mark.k8s
def test_kubectl_scale_writes_spec_replicas_through_the_scale_subresource(crd_installed, k8s_namespace):
    apply(crd_installed, k8s_namespace, body("scaled"))
    kubectl(crd_installed, "scale", "-n", k8s_namespace, "hdcw/scaled", "--replicas=3")
    server = get(crd_installed, k8s_namespace, "scaled")
    assert server["spec"]["replicas"] == 3
    assert parse_workload(server).desired_replicas == 3
    # the scale subresource itself reads it back (what an HPA reads)
    scale = json.loads(
        kubectl(
            crd_installed,
            "get",
            "--raw",
            f"/apis/hdcompute.io/v1alpha1/namespaces/{k8s_namespace}/hdcworkloads/scaled/scale",
        ).stdout
    )
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3


@pytest.mark.k8s
def test_printer_columns(crd_installed, k8s_namespace):
    apply(
        crd_installed, k8s_namespace, body("cols", {"hdc": {"vsa": "BSC", "dimension": 8192}, "resources": {"gpus": 2}})
    )
    out = kubectl(crd_installed, "get", "-n", k8s_namespace, "hdcw").stdout.splitlines()
    assert out[0].split() == ["NAME", "VSA", "DIM", "GPUS", "REPLICAS", "READY", "THROUGHPUT", "STATUS", "AGE"]
    assert out[1].split()[:4] == ["cols", "BSC", "8192", "2"]


# --- the rendered children and the examples on the real API server ---------------------------------------------

EVERYTHING = {
    "autoscaling": {
        "mode": "hpa",
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetOpsPerReplica": 1000,
        "behavior": {
            "scaleDown": {
                "stabilizationWindowSeconds": 60,
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}],
            }
        },
    },
    "state": {"backend": "postgres", "postgres": {"cluster": {"instances": 2, "size": "2Gi"}}},
    "scheduling": {
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "hdc", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "Exists"}]},
                    }
                ]
            }
        },
    },
    "tracing": {"enabled": True, "otlpEndpoint": "http://otel-collector:4318"},
    "baselines": [
        {"name": "bundle_10k_vectors", "operation": "bundle", "maxLatencyMs": 50, "minThroughputOpsPerSec": 1000}
    ],
    "podDisruptionBudget": {"maxUnavailable": "50%"},
}


def restricted(cluster, namespace):
    """Pod Security Standard `restricted`, enforced and warned about, in the namespace."""
    kubectl(
        cluster,
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "--overwrite",
    )


def children_of(cluster, namespace, name, capabilities=None):
    from hdc_operator.builders import Capabilities, build_children

    return build_children(parse_workload(get(cluster, namespace, name)), capabilities or Capabilities.all())


@pytest.mark.k8s
@pytest.mark.parametrize(
    "spec",
    [{}, EVERYTHING, {"resources": {"gpus": 0}, "hdc": {"device": "cpu"}}],
    ids=["defaults", "everything", "cpu-only"],
)
def test_server_side_dry_run_accepts_every_rendered_child(crd_installed, k8s_namespace, spec):
    restricted(crd_installed, k8s_namespace)
    apply(crd_installed, k8s_namespace, body("dry", spec))
    children = children_of(crd_installed, k8s_namespace, "dry")
    assert {"Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= {c["kind"] for c in children}
    cnpg = any(c["kind"] == "Cluster" for c in children)  # a CloudNativePG Cluster: its CRD, as its users have it
    if cnpg:
        install_cnpg_crd(kubectl_bin(), crd_installed.kubeconfig)
    try:
        _dry_run_every_child(crd_installed, children)
    finally:
        if cnpg:
            remove_cnpg_crd(kubectl_bin(), crd_installed.kubeconfig)


def _dry_run_every_child(crd_installed, children):
    for child in children:
        proc = kubectl(
            crd_installed,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=hdc-operator",
            "-f",
            "-",
            stdin=yaml.safe_dump(child),
            check=False,
        )
        assert proc.returncode == 0, f"{child['kind']}: {proc.stderr}"
        assert "would violate PodSecurity" not in proc.stderr, proc.stderr


@pytest.mark.k8s
def test_examples_apply_and_default_as_parse_workload_says(crd_installed, k8s_namespace):
    examples = sorted((REPO / "deploy" / "examples").glob("*.yaml"))
    files = [arg for p in examples for arg in ("-f", str(p))]
    kubectl(crd_installed, "apply", "--dry-run=server", "-n", k8s_namespace, *files)
    for path in examples:
        kubectl(crd_installed, "apply", "-n", k8s_namespace, "-f", str(path))
        local = yaml.safe_load(path.read_text())
        server = get(crd_installed, k8s_namespace, local["metadata"]["name"])
        assert parse_workload(server).spec == parse_workload(local).spec, path.name


@pytest.mark.k8s
def test_rendered_pods_pass_restricted_admission_and_schedule_on_gpu_nodes(crd_installed, k8s_namespace):
    """The real thing, not a dry run: the Deployment's pods are admitted under `restricted`, tolerate the GPU
    nodes' taint and get scheduled there; deleting the HDCWorkload garbage-collects every child."""
    import time

    from hdc_operator.builders import Capabilities

    restricted(crd_installed, k8s_namespace)
    apply(
        crd_installed,
        k8s_namespace,
        body("live", {"replicas": 2, "resources": {"gpus": 1, "cpu": "100m", "memory": "64Mi"}}),
    )
    children = children_of(crd_installed, k8s_namespace, "live", Capabilities.all())
    kubectl(
        crd_installed,
        "apply",
        "--server-side",
        "--field-manager=hdc-operator",
        "-f",
        "-",
        stdin="".join("---\n" + yaml.safe_dump(c) for c in children),
    )

    def pods():
        out = kubectl(
            crd_installed, "get", "pods", "-n", k8s_namespace, "-l", "hdcompute.io/workload=live", "-o", "json"
        ).stdout
        return json.loads(out)["items"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scheduled = [p for p in pods() if p["spec"].get("nodeName")]
        if len(scheduled) == 2:
            break
        time.sleep(0.5)
    else:
        events = kubectl(crd_installed, "get", "events", "-n", k8s_namespace).stdout
        pytest.fail(f"2 worker pods were not scheduled: {[p['status'] for p in pods()]}\n{events}")
    nodes = json.loads(kubectl(crd_installed, "get", "nodes", "-o", "json").stdout)["items"]
    gpu_nodes = {n["metadata"]["name"] for n in nodes if int(n["status"]["allocatable"].get("nvidia.com/gpu", "0")) > 0}
    assert {p["spec"]["nodeName"] for p in scheduled} <= gpu_nodes

    kubectl(crd_installed, "delete", "-n", k8s_namespace, "hdcw", "live", "--wait=true")
    kinds = "deployment,service,pdb,configmap,servicemonitor,prometheusrule"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = kubectl(
            crd_installed, "get", kinds, "-n", k8s_namespace, "-l", "hdcompute.io/workload=live", "-o", "name"
        ).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"children left after the HDCWorkload was deleted: {left}")


@pytest.mark.k8s
def test_parse_workload_accepts_exactly_what_the_api_server_accepts(crd_installed, k8s_namespace):
    """Generated specs (tests/operator/builders/test_builders_property.py) sent to the real API server (dry-run
    create, strict field validation): accepted by both or rejected by both, the field named alike; accepted ones
    default alike."""
    from hypothesis import HealthCheck, event, given, settings
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from test_builders_property import workload_specs

    api = client.CustomObjectsApi(crd_installed.api)
    outcomes = {"both rejected": 0, "both accepted": 0}

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spec=workload_specs())
    def check(spec):
        obj = body("prop", spec, namespace=k8s_namespace)
        try:
            local = parse_workload(obj)
        except InvalidSpec as exc:
            local = exc
        try:
            server = api.create_namespaced_custom_object(
                "hdcompute.io", "v1alpha1", k8s_namespace, "hdcworkloads", obj, dry_run="All", field_validation="Strict"
            )
        except ApiException as exc:
            assert exc.status in (400, 422), exc
            assert isinstance(local, InvalidSpec), f"the API server rejected what parse_workload accepted: {exc.body}"
            causes = json.loads(exc.body).get("details", {}).get("causes", [])
            server_fields = {c["field"].lstrip(".") for c in causes if c.get("field") not in ("<nil>", None)}
            assert server_fields, exc.body
            assert server_fields == {f for f, _ in local.errors}, (local.errors, exc.body)
            event("both rejected")
            outcomes["both rejected"] += 1
            return
        assert not isinstance(local, InvalidSpec), f"parse_workload rejected what the API server accepted: {local}"
        assert parse_workload(server).spec == local.spec
        event("both accepted")
        outcomes["both accepted"] += 1

    check()
    assert min(outcomes.values()) >= 10, outcomes  # both sides of the property were exercised


@pytest.mark.k8s
def test_the_rendered_hpa_scales_the_hdcworkload_through_its_scale_subresource(crd_installed, k8s_namespace):
    """The real HPA controller (kube-controller-manager) reads the HDCWorkload's scale subresource and writes
    spec.replicas: below minReplicas it scales up before it needs any metric."""
    import time

    from hdc_operator.builders import Capabilities

    apply(
        crd_installed,
        k8s_namespace,
        body("auto", {"replicas": 1, "autoscaling": {"mode": "hpa", "minReplicas": 3, "maxReplicas": 5}}),
    )
    w = parse_workload(get(crd_installed, k8s_namespace, "auto"))
    # what the operator's status writer reports (the scale subresource's status half)
    kubectl(
        crd_installed,
        "patch",
        "-n",
        k8s_namespace,
        "hdcw",
        "auto",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"replicas": 1, "selector": w.selector}}),
    )
    (hpa,) = [
        c
        for c in children_of(crd_installed, k8s_namespace, "auto", Capabilities.none())
        if c["kind"] == "HorizontalPodAutoscaler"
    ]
    kubectl(crd_installed, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(hpa))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if get(crd_installed, k8s_namespace, "auto")["spec"]["replicas"] == 3:
            break
        time.sleep(1)
    else:
        described = kubectl(crd_installed, "describe", "hpa", "-n", k8s_namespace, "auto").stdout
        pytest.fail(f"the HPA did not scale the HDCWorkload to minReplicas:\n{described}")
    hpa = kubectl(crd_installed, "get", "hpa", "-n", k8s_namespace, "auto", "-o", "json").stdout
    status = json.loads(hpa)["status"]
    able = [c for c in status.get("conditions", []) if c["type"] == "AbleToScale"]
    assert able and able[0]["status"] == "True", status
