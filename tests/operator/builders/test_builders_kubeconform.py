"""kubeconform -strict on every rendered child and on deploy/examples, without a cluster or a network.

Schemas: the Kubernetes API's (v1.36, standalone strict) from the kubernetes-validate package; the
prometheus-operator CRDs (tools share/, hack/build-tools.sh), CloudNativePG's Cluster CRD (tests/cnpg_support.py)
and our HDCWorkload CRD converted to JSON schema here. Strict: an unknown field anywhere fails, which the negative
tests prove.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pathlib
import re
import subprocess

import paths
import pytest
import yaml
from cnpg_support import cnpg_cluster_crd

from hdc_operator.builders import Capabilities, build_children
from hdc_operator.spec import load_crd, parse_workload

REPO = paths.REPO
KUBE_VERSION = "v1.36.0"  # the pinned kube-apiserver's minor (hack/tools/go.mod)
CORE_SCHEMAS = (
    "configmap-v1",
    "service-v1",
    "persistentvolumeclaim-v1",
    "deployment-apps-v1",
    "poddisruptionbudget-policy-v1",
    "horizontalpodautoscaler-autoscaling-v2",
)

SPECS = {
    "defaults": {},
    "everything": {
        "autoscaling": {
            "mode": "hpa",
            "minReplicas": 2,
            "maxReplicas": 6,
            "targetOpsPerReplica": 1234.5,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                },
                "scaleDown": {"stabilizationWindowSeconds": 300},
            },
        },
        "state": {
            "backend": "postgres",
            "postgres": {"cluster": {"instances": 3, "size": "10Gi", "storageClassName": "standard"}},
        },
        "resources": {"gpus": 4, "cpu": 8, "memory": "64Gi"},
        "scheduling": {
            "nodeSelector": {"pool": "gpu"},
            "priorityClassName": "high",
            "tolerations": [
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "hdc",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                }
            ],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"a": "b"}},
                            },
                        }
                    ]
                }
            },
        },
        "tracing": {"enabled": True, "otlpEndpoint": "http://otel-collector:4318", "samplingRatio": 0.1},
        "baselines": [{"name": "bind_32k_dimension", "operation": "bind", "maxLatencyMs": 10, "maxMemoryMb": 256}],
        "monitoring": {
            "serviceMonitor": {"labels": {"release": "prom"}},
            "prometheusRule": {"labels": {"r": "1"}},
            "dashboards": {"labels": {"team": "ml"}},
        },
        "podDisruptionBudget": {"maxUnavailable": "25%"},
    },
    "cpu-only": {"resources": {"gpus": 0}, "hdc": {"device": "cpu", "vsa": "BSC"}, "autoscaling": {"mode": "operator"}},
    "local-state": {
        "state": {"backend": "local"},
        "persistence": {"enabled": True, "size": "10Gi", "storageClassName": "standard"},
    },
    "database-secret": {"state": {"backend": "postgres", "postgres": {"secretName": "hdc-db", "secretKey": "url"}}},
}


def tools_bin() -> pathlib.Path:
    proc = subprocess.run([str(REPO / "hack" / "build-tools.sh"), "--check"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(proc.stderr.strip(), pytrace=False)  # says to run `make tools`
    return pathlib.Path(proc.stdout.strip())


@functools.lru_cache(maxsize=None)
def core_schema(name: str) -> dict:
    """A standalone strict JSON schema of a Kubernetes kind ("deployment-apps-v1"). kubernetes-validate's
    schemas refer to a shared /api/_definitions.json; kubeconform (and jsonschema) need each standalone."""
    import kubernetes_validate

    schemas = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    source = schemas / f"{KUBE_VERSION}-local-strict"
    prefix = "/api/_definitions.json#/$defs/"
    schema = json.loads((source / f"{name}.json").read_text())
    schema.pop("$id", None)
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    used: dict[str, dict] = {}
    todo = [schema]
    while todo:  # only the definitions the kind reaches
        # the kind refers to the shared file, the definitions to each other within it
        for ref in re.findall(r'"\$ref": "(?:' + re.escape(prefix) + r'|#/\$defs/)([^"]+)"', json.dumps(todo.pop())):
            if ref not in used:
                used[ref] = definitions[ref]
                todo.append(definitions[ref])
    schema["$defs"] = used
    return json.loads(json.dumps(schema).replace(prefix, "#/$defs/"))


def to_json_schema(schema: dict, strict: bool = True) -> dict:
    """An openAPIV3Schema as JSON schema (draft 4, as kubeconform's openapi2jsonschema.py makes them):
    int-or-string and nullable spelled out, objects closed unless they preserve unknown fields."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in out["properties"].items()}
        if strict and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(out["additionalProperties"], strict)
    if isinstance(out.get("items"), dict):
        out["items"] = to_json_schema(out["items"], strict)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s, strict) for s in schema[key]]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_schemas(crd: dict) -> dict[str, dict]:
    """file name (kubeconform's {{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json) -> JSON schema."""
    out = {}
    for version in crd["spec"]["versions"]:
        schema = to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        schema["$schema"] = "http://json-schema.org/draft-04/schema#"
        # metadata is ObjectMeta, checked by the API server; here any object
        schema["properties"]["metadata"] = {"type": "object"}
        kind = crd["spec"]["names"]["kind"].lower()
        out[f"{crd['spec']['group']}/{kind}_{version['name']}.json"] = schema
    return out


def kubeconform_runner(schema_dir: pathlib.Path, core_names, crds):
    """A function that runs kubeconform -strict over a YAML stream (returns the CompletedProcess), with the
    standalone Kubernetes schemas `core_names` and the JSON schemas of `crds`, written under schema_dir."""
    binary = tools_bin() / "kubeconform"
    core = schema_dir / "core"
    core.mkdir()
    for name in core_names:
        (core / f"{name}.json").write_text(json.dumps(core_schema(name)))
    for crd in crds:
        for name, schema in crd_schemas(crd).items():
            (schema_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (schema_dir / name).write_text(json.dumps(schema))

    def run(stream: str) -> subprocess.CompletedProcess:
        path = schema_dir / f"input-{os.urandom(4).hex()}.yaml"
        path.write_text(stream)
        return subprocess.run(
            [
                str(binary),
                "-strict",
                "-summary",
                "-output",
                "text",
                "-schema-location",
                f"{core}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
                "-schema-location",
                f"{schema_dir}/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def prometheus_operator_crds() -> list[dict]:
    return [
        yaml.safe_load(p.read_text())
        for p in sorted((tools_bin().parent / "share" / "prometheus-operator-crds").glob("*.yaml"))
    ]


@pytest.fixture(scope="module")
def kubeconform(tmp_path_factory):
    """Runs kubeconform -strict over a YAML stream; returns the CompletedProcess."""
    return kubeconform_runner(
        tmp_path_factory.mktemp("schemas"),
        CORE_SCHEMAS,
        [load_crd(), cnpg_cluster_crd()] + prometheus_operator_crds(),
    )


def stream(objects) -> str:
    return "".join("---\n" + yaml.safe_dump(o) for o in objects)


def render(spec: dict, uid="6f1c2b7e-0000-4000-8000-000000000001") -> list[dict]:
    w = parse_workload(
        {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "metadata": {"name": "demo", "namespace": "ml", "uid": uid},
            "spec": spec,
        }
    )
    return build_children(w, Capabilities.all())


@pytest.mark.parametrize("name", SPECS)
def test_rendered_children_pass_kubeconform_strict(kubeconform, name):
    children = render(SPECS[name])
    proc = kubeconform(stream(children))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(children)}, Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout, proc.stdout


def test_every_child_kind_was_checked(kubeconform):
    kinds = {c["kind"] for spec in SPECS.values() for c in render(spec)}
    assert kinds == {
        "PersistentVolumeClaim",
        "Cluster",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    }


def test_examples_pass_kubeconform_strict_against_the_crd(kubeconform):
    paths = sorted((REPO / "deploy" / "examples").glob("*.yaml"))
    proc = kubeconform("".join("---\n" + p.read_text() for p in paths))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(paths)}, Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout, proc.stdout


BREAKAGES = [
    ("Deployment", ["spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRootFS"], True),
    ("Service", ["spec", "portz"], []),
    ("ServiceMonitor", ["spec", "endpoints", 0, "intervall"], "5s"),
    ("PrometheusRule", ["spec", "groups", 0, "rulez"], []),
    ("HorizontalPodAutoscaler", ["spec", "metrics", 0, "pods", "target", "averageValu"], "1"),
    ("PodDisruptionBudget", ["spec", "maxUnavailable"], {"pods": 1}),
    ("PersistentVolumeClaim", ["spec", "accessModes"], "ReadWriteOnce"),
    ("ConfigMap", ["data", "x"], 1),
    ("Cluster", ["spec", "storage", "sizee"], "1Gi"),
]


def test_kubeconform_catches_each_broken_child(kubeconform):
    """The check is real: one wrong field in each kind of child, each caught (one kubeconform run)."""
    broken = []
    for kind, path, value in BREAKAGES:
        child = next(c for spec in SPECS.values() for c in render(spec) if c["kind"] == kind)
        child["metadata"]["name"] = f"broken-{kind.lower()}"
        node = child
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        broken.append(child)
    proc = kubeconform(stream(broken))
    assert proc.returncode != 0
    assert f"Valid: 0, Invalid: {len(BREAKAGES)}, Errors: 0" in proc.stdout, proc.stdout
    for kind, _, _ in BREAKAGES:
        assert f"{kind} broken-{kind.lower()} is invalid" in proc.stdout, (kind, proc.stdout)


def test_kubeconform_catches_a_bad_hdcworkload(kubeconform):
    bad = {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": "x"},
        "spec": {"hdc": {"dimension": 32}, "bogus": True},
    }
    proc = kubeconform(stream([bad]))
    assert proc.returncode != 0 and "Invalid: 1" in proc.stdout
