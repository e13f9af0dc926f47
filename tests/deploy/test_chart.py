"""The Helm chart charts/hdc-operator, without a cluster: lint, kubeconform -strict of what it renders, its values
schema, its RBAC against the operator's code, its wiring against the operator's settings, its generated README.

The chart on a real control plane (install, upgrade, uninstall, the operator running as its ServiceAccount):
tests/deploy/test_chart_k8s.py.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess

import paths
import pytest
import yaml
from test_builders_kubeconform import kubeconform_runner, prometheus_operator_crds, tools_bin

REPO = paths.REPO
CHART = REPO / "charts" / "hdc-operator"
KUBE_VERSION = "1.36.0"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
CHART_CORE_SCHEMAS = (
    "serviceaccount-v1",
    "clusterrole-rbac-v1",
    "clusterrolebinding-rbac-v1",
    "role-rbac-v1",
    "rolebinding-rbac-v1",
    "service-v1",
    "configmap-v1",
    "deployment-apps-v1",
    "poddisruptionbudget-policy-v1",
    "customresourcedefinition-apiextensions-v1",
)


def helm(
    *args: str, check: bool = True, kubeconfig: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/hdc-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/hdc-helm/config",
        "HELM_DATA_HOME": "/tmp/hdc-helm/data",
    }
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    result = subprocess.run(
        [str(tools_bin() / "helm"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n{result.stdout[-2000:]}"
        )
    return result


def set_args(values: dict[str, str] | None) -> list[str]:
    return [a for k, v in (values or {}).items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


def render(
    values: dict | None = None,
    *,
    namespace: str = "hdc-system",
    monitoring_api: bool = True,
    extra: tuple[str, ...] = (),
) -> list[dict]:
    """The chart's objects for `values` (dotted keys -> JSON values), as helm template renders them."""
    args = [
        "template",
        "hdc",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *set_args(values),
        *extra,
    ]
    if monitoring_api:
        args += ["--api-versions", SERVICE_MONITOR_API]
    return [o for o in yaml.safe_load_all(helm(*args).stdout) if o]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def rules_table(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, merged over the rules."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


# --- lint, kubeconform -------------------------------------------------------------------------------------------


def test_helm_lint_strict():
    result = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def kubeconform_chart(tmp_path_factory):
    """kubeconform -strict over objects, with the Kubernetes kinds the chart renders, the repository's CRDs
    (HDCWorkload, kopf peering) and the prometheus-operator CRDs (no network)."""
    crds = [d for p in sorted((REPO / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    run = kubeconform_runner(
        tmp_path_factory.mktemp("chart-schemas"), CHART_CORE_SCHEMAS, crds + prometheus_operator_crds()
    )
    return lambda objects: run("".join("---\n" + yaml.safe_dump(o) for o in objects))


VALUE_SETS = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"], "prometheusAdapter.enabled": True},
    "single-replica-standalone": {
        "replicaCount": 1,
        "peering.enabled": False,
        "rbac.clusterObservation": False,
        "grafanaDashboards.enabled": False,
        "metrics.service.enabled": False,
    },
    "everything": {
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount.annotations": {"iam": "role"},
        "operator.extraEnv": [{"name": "X", "value": "1"}],
        "operator.prometheusUrl": "http://prom:9090",
        "podAnnotations": {"a": "b"},
        "podLabels": {"team": "ml"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "metrics.serviceMonitor.labels": {"release": "p"},
        "prometheusAdapter.enabled": True,
        "metrics.service.type": "NodePort",
    },
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_chart_passes_kubeconform_strict(kubeconform_chart, name):
    objects = render(VALUE_SETS[name], extra=("--include-crds",))
    assert find(objects, "CustomResourceDefinition", "hdcworkloads.hdcompute.io")
    proc = kubeconform_chart(objects)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Valid: {len(objects)}, Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout, proc.stdout


def test_kubeconform_catches_a_bad_field_the_values_schema_lets_through(kubeconform_chart):
    """The check is real: podSecurityContext is passed through verbatim, so a misspelt field reaches kubeconform."""
    objects = render({"podSecurityContext.runAsUserr": 1})
    proc = kubeconform_chart(objects)
    assert proc.returncode != 0 and "Deployment hdc-hdc-operator is invalid" in proc.stdout, proc.stdout


def test_chart_crds_equal_the_repository_crds():
    """One source of truth: crds/ at the repository root; the chart carries byte-equal copies of every file."""
    root = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(chart) == set(root), f"chart crds/ {sorted(chart)} != repository crds/ {sorted(root)}"
    for name in root:
        assert chart[name] == root[name], f"charts/hdc-operator/crds/{name} differs from crds/{name}: copy it again"
    kinds = {
        d["spec"]["names"]["kind"]
        for p in (CHART / "crds").glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d
    }
    assert kinds == {"HDCWorkload", "KopfPeering", "ClusterKopfPeering"}


# --- values.schema.json ---------------------------------------------------------------------------------------------

BAD_VALUES = [
    ({"replicaCount": 0}, "/replicaCount", "minimum"),
    ({"replicaCount": "two"}, "/replicaCount", "got string, want integer"),
    ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy", "must be one of"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "does not match pattern"),
    ({"peering.enabled": False}, "/peering/enabled", "must be true"),  # two replicas need peering
    ({"operator.logLevel": "LOUD"}, "/operator/logLevel", "must be one of"),
    ({"operator.prometheusUrl": "prometheus:9090"}, "/operator/prometheusUrl", "does not match pattern"),
    ({"operator.workers": 0}, "/operator/workers", "minimum"),
    ({"metrics.port": 70000}, "/metrics/port", "maximum"),
    ({"peering.lifetimeSeconds": 1}, "/peering/lifetimeSeconds", "minimum"),
    ({"metrics.serviceMonitor.interval": "soon"}, "/metrics/serviceMonitor/interval", "does not match pattern"),
    ({"securityContext.readOnlyRootFilesystem": False}, "/securityContext/readOnlyRootFilesystem", "must be true"),
    ({"podSecurityContext.runAsNonRoot": False}, "/podSecurityContext/runAsNonRoot", "must be true"),
    (
        {"prometheusAdapter.rules": [{"seriesQuery": "x"}]},
        "/prometheusAdapter/rules/0",
        "missing property 'metricsQuery'",
    ),
    ({"metricsPort": 9000}, "", "additional properties 'metricsPort' not allowed"),
    ({"rbac.creat": True}, "/rbac", "additional properties 'creat' not allowed"),
]


@pytest.mark.parametrize("values,field,message", BAD_VALUES, ids=[next(iter(v)) for v, _, _ in BAD_VALUES])
def test_values_schema_rejects_bad_values_naming_the_field(values, field, message):
    result = helm("template", "hdc", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert f"at '{field}'" in result.stderr and message in result.stderr, result.stderr


def test_values_schema_accepts_the_defaults_and_every_value_set():
    for values in VALUE_SETS.values():
        render(values)  # raises on a schema error


# --- RBAC: exactly what the operator's code calls ---------------------------------------------------------------------


def expected_namespaced_rules() -> dict[tuple[str, str], set[str]]:
    """Derived from the operator: its child kinds (hdc_operator.apply.CHILD_KINDS: watched ones are listed and
    watched, the others read by name; every one applied by server-side apply, which creates when absent; pruned
    ones deleted), plus its fixed calls (handlers.py, apply.py)."""
    from hdc_operator.names import CHILD_KINDS, GROUP, PLURAL

    table: dict[tuple[str, str], set[str]] = {
        (GROUP, PLURAL): {
            "list",
            "watch",
            "patch",
        },  # kopf index/events; kopf's finalizer handling; KubeApi.patch_annotations
        (GROUP, f"{PLURAL}/status"): {"patch"},  # KubeApi.patch_status
        (GROUP, f"{PLURAL}/scale"): {"patch"},  # KubeApi.patch_scale (autoscaling mode operator)
        ("", "pods"): {"list", "watch"},  # the hdc_pods index
        ("", "events"): {"create"},  # KubeApi.post_event
    }
    for kind in CHILD_KINDS:
        group = kind.api_version.rpartition("/")[0]
        verbs = {"list", "watch"} if kind.watched else {"get"}
        verbs |= {"create", "patch"} | ({"delete"} if kind.prune else set())
        table[(group, kind.plural)] = verbs
    return table


def test_cluster_wide_rbac_is_exactly_what_the_operator_calls():
    objects = render({})
    roles = find(objects, "ClusterRole")
    main = find(objects, "ClusterRole", "hdc-hdc-operator")[0]
    expected = expected_namespaced_rules() | {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
    assert rules_table(main["rules"]) == expected
    observer = find(objects, "ClusterRole", "hdc-hdc-operator-observer")[0]
    assert rules_table(observer["rules"]) == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    assert len(roles) == 2 and not find(objects, "Role")
    for binding in find(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "hdc-hdc-operator", "namespace": "hdc-system"}
        ]
    assert {b["roleRef"]["name"] for b in find(objects, "ClusterRoleBinding")} == {r["metadata"]["name"] for r in roles}


def test_namespaced_rbac_writes_only_in_the_watched_namespaces():
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_table(role["rules"]) == expected_namespaced_rules() | {
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}
        }
    bindings = find(objects, "RoleBinding")
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings) == [
        ("team-a", "Role"),
        ("team-b", "Role"),
    ]
    # cluster-scoped: only the read-only observation of CRDs and namespaces
    cluster_verbs = {v for r in find(objects, "ClusterRole") for rule in r["rules"] for v in rule["verbs"]}
    assert cluster_verbs == {"list", "watch"}
    assert rules_table(find(objects, "ClusterRole")[0]["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }
    peerings = find(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not find(objects, "ClusterKopfPeering")
    # and without observation, nothing cluster-scoped at all
    bare = render({"watchNamespaces": ["team-a"], "rbac.clusterObservation": False})
    assert not find(bare, "ClusterRole") and not find(bare, "ClusterRoleBinding")


def test_the_plain_manifests_grant_the_same_namespaced_rules():
    """deploy/operator/rbac.yaml (for running the operator without Helm) and the chart agree on every namespaced
    rule (both equal the rules derived from the code); it additionally grants what a namespaced install needs
    cluster-wide (namespaces, kopfpeerings), the chart only in that mode."""
    plain = [d for d in yaml.safe_load_all((REPO / "deploy" / "operator" / "rbac.yaml").read_text()) if d]
    table = rules_table(next(d for d in plain if d["kind"] == "ClusterRole")["rules"])
    extra = {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
        ("kopf.dev", "kopfpeerings"),
        ("kopf.dev", "clusterkopfpeerings"),
    }
    assert {k: v for k, v in table.items() if k not in extra} == expected_namespaced_rules()
    assert all(table[k] == {"list", "watch"} for k in extra if k[0] != "kopf.dev")
    assert all(table[k] == {"get", "list", "watch", "patch"} for k in extra if k[0] == "kopf.dev")


def test_rbac_create_false_renders_no_rbac():
    objects = render({"rbac.create": False, "serviceAccount.create": False, "serviceAccount.name": "mine"})
    assert not [
        o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount")
    ]
    deployment = find(objects, "Deployment")[0]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# --- the operator Deployment against the operator's settings -------------------------------------------------------


def container_env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_operator_deployment_shape():
    objects = render({})
    deployment = find(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "ghcr.io/hd-compute/hdc-operator:0.1.0"
    # restricted Pod Security Standard, read-only root with an emptyDir at /tmp
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert next(v for v in pod["volumes"] if v["name"] == "tmp")["emptyDir"]["sizeLimit"] == "64Mi"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8081, "healthz": 8082}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    # the Service and ServiceMonitor reach the metrics port
    service = find(objects, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    monitor = find(objects, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


@pytest.mark.parametrize(
    "values,namespaces,peering",
    [
        ({}, (), "hdc-hdc-operator"),
        ({"watchNamespaces": ["team-a", "team-b"], "peering.name": "hdc-peers"}, ("team-a", "team-b"), "hdc-peers"),
        ({"replicaCount": 1, "peering.enabled": False}, (), ""),
    ],
)
def test_the_operator_reads_the_charts_settings(values, namespaces, peering):
    """The Deployment's HDC_OPERATOR_* environment goes through the operator's own load_config unchanged."""
    from hdc_operator.config import load_config

    values = {
        "operator.logLevel": "DEBUG",
        "operator.resyncIntervalSeconds": 30,
        "operator.workers": 8,
        "metrics.port": 9100,
        "livenessPort": 9101,
        "peering.lifetimeSeconds": 20,
        **values,
    }
    container = find(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = container_env(find(render(values), "Deployment")[0])
    assert all(e["name"].startswith("HDC_OPERATOR_") for e in container["env"]), container["env"]
    cfg = load_config({}, env=env)
    assert (
        cfg.namespaces,
        cfg.peering,
        cfg.log_level,
        cfg.resync_interval_s,
        cfg.workers,
        cfg.metrics_port,
        cfg.liveness_port,
        cfg.peering_lifetime_s,
    ) == (namespaces, peering, "DEBUG", 30.0, 8, 9100, 9101, 20)
    peering_objects = [o for o in render(values) if o["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    assert {o["metadata"]["name"] for o in peering_objects} == ({peering} if peering else set())


def test_pod_disruption_budget_keeps_a_peer_only_when_there_are_two():
    pdb = find(render({}), "PodDisruptionBudget")[0]
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "hdc-operator", "app.kubernetes.io/instance": "hdc"}},
    }
    assert not find(render({"replicaCount": 1, "peering.enabled": False}), "PodDisruptionBudget")
    assert not find(render({"podDisruptionBudget.enabled": False}), "PodDisruptionBudget")


def test_service_monitor_only_where_the_api_is_served():
    assert find(render({}, monitoring_api=True), "ServiceMonitor")
    assert not find(render({}, monitoring_api=False), "ServiceMonitor")
    assert not find(render({"metrics.serviceMonitor.enabled": False}), "ServiceMonitor")


# --- prometheus-adapter rules and the operator's dashboard -----------------------------------------------------------


def adapter_rules(values: dict | None = None) -> list[dict]:
    objects = render({"prometheusAdapter.enabled": True, **(values or {})})
    config = find(objects, "ConfigMap", "hdc-hdc-operator-prometheus-adapter")[0]["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def test_adapter_rules_serve_the_metrics_the_hpa_builder_asks_for():
    from hdc_operator.builders.hpa import THROUGHPUT_METRIC, UTILIZATION_METRIC

    rules = adapter_rules()
    served = {r["name"]["as"] for r in rules}
    assert {THROUGHPUT_METRIC, UTILIZATION_METRIC, "hdc_operations_per_second"} <= served
    for rule in rules:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    rate = next(r for r in rules if r["name"]["as"] == "hdc_operations_per_second")
    assert rate["seriesQuery"].startswith("hdc_operation_total{") and "rate(<<.Series>>" in rate["metricsQuery"]
    assert not find(render({}), "ConfigMap", "hdc-hdc-operator-prometheus-adapter")  # off by default


def test_adapter_rules_come_from_values():
    custom = [
        {
            "seriesQuery": 'hdc_gpu_utilization_percent{pod!=""}',
            "metricsQuery": "avg(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        }
    ]
    assert adapter_rules({"prometheusAdapter.rules": custom}) == custom


def test_operator_dashboard_queries_only_the_operators_metrics():
    from hdc_operator.metrics import OperatorMetrics

    names = set()
    for family in OperatorMetrics().registry.collect():  # labelled counters have no samples yet: add the suffixes
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    objects = render({})
    dashboard = json.loads(find(objects, "ConfigMap", "hdc-hdc-operator-dashboards")[0]["data"]["hdc-operator.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    used = {m for e in exprs for m in re.findall(r"\b(hdc_operator_[a-z_]+)\b", e)}
    assert used and used <= names, used - names
    assert {
        "hdc_operator_reconcile_duration_seconds_bucket",
        "hdc_operator_reconcile_errors_total",
        "hdc_operator_managed_workloads",
        "hdc_operator_api_writes_total",
    } <= used
    assert (
        find(objects, "ConfigMap", "hdc-hdc-operator-dashboards")[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    )


# --- README generated from values.yaml -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def readme_module():
    spec = importlib.util.spec_from_file_location("chart_readme", CHART / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_generated_from_the_current_values():
    assert (CHART / "README.md").read_text() == readme_module().render(), (
        "charts/hdc-operator/README.md is stale: run python charts/hdc-operator/readme.py"
    )


def test_every_value_is_described():
    module = readme_module()
    text = (CHART / "values.yaml").read_text()
    assert module.undocumented(yaml.safe_load(text), module.described_keys(text)) == []


def test_the_readme_check_notices_an_undescribed_value():
    module = readme_module()
    text = (CHART / "values.yaml").read_text() + "\nnewKnob: 3\n"
    assert module.undocumented(yaml.safe_load(text), module.described_keys(text)) == ["newKnob"]
    described = dict(module.described_keys(text + "# -- A knob.\nother: 1\n"))
    assert described[("other",)] == "A knob." and ("image", "tag") in described
