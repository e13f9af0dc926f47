"""Properties over generated HDCWorkload specs (hypothesis; specs drawn from the CRD schema itself).

- Whatever spec parse_workload accepts builds children that are valid Kubernetes objects (JSON schema of the
  v1.36 API, strict; prometheus-operator CRD schemas), carry the contract labels and owner reference, and give
  the worker a configuration its own parser accepts.
- Whatever it rejects, it rejects naming a field of the object.
The k8s half (parse_workload accepts exactly what the API server accepts) is in tests/operator/test_crd.py and uses
`workload_specs` from here.
"""

from __future__ import annotations

import functools

import jsonschema
import paths
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_builders_kubeconform import core_schema, crd_schemas, tools_bin

from hd_compute.service.config import WorkerSettings
from hdc_operator.builders import Capabilities, build_children
from hdc_operator.spec import InvalidSpec, parse_workload, spec_schema

REPO = paths.REPO

# Candidate strings by field, valid and invalid, for string fields with a format the schema checks.
STRINGS = {
    "for": ["5m", "30s", "1h30m", "2d", "5 min", "", "m"],
    "interval": ["5s", "15s", "1m", "500ms", "fast", ""],
    "name": ["bundle_10k_vectors", "bind-32k", "a", "Bad Name", "-x", ""],
    "otlpEndpoint": ["", "http://otel:4318", "https://collector.example:4318/v1", "otel:4318"],
    "size": ["1Gi", "500Mi", "2", "0", "-1Gi", "big"],
    "image": ["ghcr.io/hd-compute/hdc-worker:0.1.0", "example.org/hdc@sha256:" + "a" * 64, ""],
    "priorityClassName": ["", "high-priority"],
    "storageClassName": ["", "standard", "fast-ssd"],
}
QUANTITIES = ["2", "500m", "0.5", "8Gi", "512Mi", "1e3", "0", "-1", "two", "25%"]
LABEL_KEYS = ["release", "team", "app.kubernetes.io/part-of", "example.com/tier"]


def _strategy(schema: dict, key: str = "") -> st.SearchStrategy:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return st.sampled_from(
            [
                {},
                {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
                            ]
                        }
                    }
                },
            ]
        )
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(-2, 64), st.sampled_from(QUANTITIES))
    if "enum" in schema:
        values = list(schema["enum"])
        return st.one_of(
            st.sampled_from(values), st.sampled_from(values), st.sampled_from(values), st.just("not-" + str(values[0]))
        )
    kind = schema.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum", -5), schema.get("maximum", 1 << 20)
        return st.integers(low - 1, min(high + 1, low + 100_000))
    if kind == "number":
        low, high = schema.get("minimum", 0), schema.get("maximum", 100_000)
        return st.one_of(
            st.floats(low - 1, high + 1, allow_nan=False, allow_infinity=False),
            st.integers(int(low) - 1, int(high) + 1),
        )
    if kind == "string":
        return st.sampled_from(STRINGS.get(key, ["", "a", "some-value"]))
    if kind == "array":
        return st.lists(_strategy(schema["items"], key), max_size=3)
    if kind == "object" and "properties" in schema:
        optional = {k: _strategy(sub, k) for k, sub in schema["properties"].items()}
        required = schema.get("required", ())
        return st.fixed_dictionaries(
            {k: _strategy(schema["properties"][k], k) for k in required},
            optional={k: v for k, v in optional.items() if k not in required},
        )
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(["a", "1", "x-y"]), max_size=2)
    return st.nothing()


@functools.lru_cache(maxsize=None)
def workload_specs() -> st.SearchStrategy:
    """HDCWorkload specs drawn from the CRD's own schema: mostly within bounds, sometimes just outside them,
    sometimes a bad enum, quantity or format; any subset of the fields."""
    return _strategy(spec_schema())


def body(spec, name="prop", uid="3a2b1c0d-0000-4000-8000-00000000000f"):
    return {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "metadata": {"name": name, "namespace": "ns1", "uid": uid},
        "spec": spec,
    }


@functools.lru_cache(maxsize=None)
def validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict JSON-schema validator of that child kind."""
    core = {
        ("v1", "ConfigMap"): "configmap-v1",
        ("v1", "Service"): "service-v1",
        ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1",
        ("apps/v1", "Deployment"): "deployment-apps-v1",
        ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1",
        ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2",
    }
    out = {gvk: jsonschema.Draft202012Validator(core_schema(name)) for gvk, name in core.items()}
    share = tools_bin().parent / "share" / "prometheus-operator-crds"
    for kind, file in (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")):
        crd = yaml.safe_load((share / f"monitoring.coreos.com_{file}.yaml").read_text())
        (schema,) = crd_schemas(crd).values()
        out[("monitoring.coreos.com/v1", kind)] = jsonschema.Draft4Validator(schema)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=workload_specs())
def test_accepted_specs_build_valid_children_and_rejected_ones_name_a_field(spec):
    try:
        workload = parse_workload(body(spec))
    except InvalidSpec as exc:
        event("rejected")
        assert exc.errors and all(f.startswith(("spec.", "metadata.name")) for f, _ in exc.errors), exc.errors
        return
    event("accepted")
    children = build_children(workload, Capabilities.all())
    kinds = [c["kind"] for c in children]
    assert kinds.count("Deployment") == 1 and kinds.count("Service") == 1
    for child in children:
        errors = sorted(validators()[(child["apiVersion"], child["kind"])].iter_errors(child), key=str)
        assert not errors, f"{child['kind']}: {errors[0].message} at {list(errors[0].absolute_path)}"
        meta = child["metadata"]
        assert meta["namespace"] == "ns1" and meta["labels"]["hdcompute.io/workload"] == "prop"
        assert meta["ownerReferences"][0]["controller"] is True
    # the worker accepts the configuration it is given
    deployment = next(c for c in children if c["kind"] == "Deployment")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"].startswith("HDC_")
    }
    settings_ = WorkerSettings.from_env(environ=env)
    assert settings_.dimension == workload.dimension and settings_.vsa == workload.vsa
    # pure and deterministic: the same workload builds the same children
    assert build_children(workload, Capabilities.all()) == children


@settings(max_examples=60, deadline=None)
@given(spec=workload_specs())
def test_parsing_is_idempotent(spec):
    """Parsing the defaulted spec again changes nothing (what the API server stores parses to itself)."""
    try:
        first = parse_workload(body(spec))
    except InvalidSpec:
        return
    assert parse_workload(body(dict(first.spec))).spec == first.spec
