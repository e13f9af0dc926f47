"""The pure manifest builders (hdc_operator.builders): every child of an HDCWorkload, without a cluster.

Server-side checks of the same children (dry-run apply, kubeconform) are in tests/test_builders_k8s.py.
"""

from __future__ import annotations

import ast
import copy

import paths
import pytest

from hd_compute.service.config import ENV_VARS, WorkerSettings
from hdc_operator import alerts
from hdc_operator.builders import Capabilities, build_children
from hdc_operator.builders.deployment import CONFIG_HASH_ANNOTATION, GPU_TOLERATION
from hdc_operator.builders.hpa import hpa_metrics, quantity
from hdc_operator.names import CHILD_KINDS
from hdc_operator.spec import parse_workload

REPO = paths.REPO
BUILDERS = REPO / "operator" / "hdc_operator" / "builders"

CONTRACT_LABELS = {
    "app.kubernetes.io/name": "hdc-worker",
    "app.kubernetes.io/component": "worker",
    "app.kubernetes.io/managed-by": "hdc-operator",
}


def workload(spec=None, name="demo", namespace="ml", uid="0b9f6a2e-1111-2222-3333-444455556666"):
    return parse_workload(
        {
            "apiVersion": "hdcompute.io/v1alpha1",
            "kind": "HDCWorkload",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": 2},
            "spec": spec or {},
        }
    )


def children(spec=None, capabilities=None, **kw) -> dict[str, dict]:
    capabilities = Capabilities.all() if capabilities is None else capabilities
    return {c["kind"]: c for c in build_children(workload(spec, **kw), capabilities)}


def deployment(spec=None, **kw) -> dict:
    return children(spec, **kw)["Deployment"]


def pod(spec=None, **kw) -> dict:
    return deployment(spec, **kw)["spec"]["template"]["spec"]


def env(spec=None, **kw) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod(spec, **kw)["containers"][0]["env"]}


def test_builders_import_neither_kopf_nor_the_kubernetes_client():
    for path in BUILDERS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(("kopf", "kubernetes")), f"{path.name} imports {name}"


def test_default_children_in_order():
    built = build_children(workload(), Capabilities.all())
    kinds = [(c["apiVersion"], c["kind"]) for c in built]
    assert kinds == [
        (k.api_version, k.kind)
        for k in CHILD_KINDS
        if k.kind not in ("PersistentVolumeClaim", "Cluster", "HorizontalPodAutoscaler")  # not in a default spec
    ]
    names = {c["kind"]: c["metadata"]["name"] for c in built}
    assert names == {
        "Deployment": "demo",
        "Service": "demo",
        "PodDisruptionBudget": "demo",
        "ServiceMonitor": "demo",
        "PrometheusRule": "demo",
        "ConfigMap": "demo-dashboards",
    }


def test_every_child_has_namespace_labels_and_a_controller_owner_reference():
    # no one spec has every kind: the claim is a local backend's, the Cluster and the HPA need a shared one
    local = build_children(
        workload({"state": {"backend": "local"}, "persistence": {"enabled": True}}), Capabilities.all()
    )
    shared = {"autoscaling": {"mode": "hpa"}, "state": {"backend": "postgres", "postgres": {"cluster": {}}}}
    built = build_children(workload(shared), Capabilities.all())
    kinds = {(c["apiVersion"], c["kind"]) for c in local + built}
    assert kinds == {(k.api_version, k.kind) for k in CHILD_KINDS}
    built += local
    for child in built:
        meta = child["metadata"]
        assert meta["namespace"] == "ml"
        assert (
            meta["labels"].items()
            >= {**CONTRACT_LABELS, "app.kubernetes.io/instance": "demo", "hdcompute.io/workload": "demo"}.items()
        )
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "hdcompute.io/v1alpha1",
                "kind": "HDCWorkload",
                "name": "demo",
                "uid": "0b9f6a2e-1111-2222-3333-444455556666",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], child["kind"]


def test_no_owner_reference_without_a_uid():
    for child in build_children(workload(uid=""), Capabilities.all()):
        assert "ownerReferences" not in child["metadata"]


def test_pods_carry_the_contract_labels_and_selectors_select_them():
    d = deployment()
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {**CONTRACT_LABELS, "app.kubernetes.io/instance": "demo", "hdcompute.io/workload": "demo"}
    selector = {"app.kubernetes.io/name": "hdc-worker", "app.kubernetes.io/instance": "demo"}
    c = children()
    assert d["spec"]["selector"] == {"matchLabels": selector}
    assert c["Service"]["spec"]["selector"] == selector
    assert c["PodDisruptionBudget"]["spec"]["selector"] == {"matchLabels": selector}
    assert c["ServiceMonitor"]["spec"]["selector"] == {"matchLabels": selector}
    assert c["ServiceMonitor"]["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


def test_restricted_security_context():
    p = pod()
    (container,) = p["containers"]
    assert p["securityContext"]["runAsNonRoot"] is True and p["securityContext"]["runAsUser"] == 10001
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert p["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/var/lib/hdc": "state"}
    assert {v["name"]: v for v in p["volumes"]}["state"] == {"name": "state", "emptyDir": {}}


def test_persistence_mounts_a_claim_instead_of_an_empty_dir():
    c = children(
        {
            "state": {"backend": "local"},
            "persistence": {"enabled": True, "size": "5Gi", "storageClassName": "fast"},
            "replicas": 1,
        }
    )
    pvc = c["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "demo-state"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "fast",
    }
    volumes = {v["name"]: v for v in c["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "persistentVolumeClaim": {"claimName": "demo-state"}}
    local = {"state": {"backend": "local"}, "persistence": {"enabled": True}}
    assert "storageClassName" not in children(local)["PersistentVolumeClaim"]["spec"]
    assert "PersistentVolumeClaim" not in children()


def test_gpu_limit_and_default_toleration():
    p = pod({"resources": {"gpus": 2, "cpu": "4", "memory": "16Gi"}})
    res = p["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"}}
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_cpu_only_pods_get_no_gpu_limit_and_no_gpu_toleration():
    p = pod({"resources": {"gpus": 0, "cpu": 1}, "hdc": {"device": "cpu"}})
    assert "nvidia.com/gpu" not in p["containers"][0]["resources"]["limits"]
    assert p["containers"][0]["resources"]["requests"]["cpu"] == "1"
    assert "tolerations" not in p


def test_user_tolerations_are_merged_with_the_gpu_one_without_duplicates():
    mine = {"key": "dedicated", "operator": "Equal", "value": "hdc", "effect": "NoSchedule"}
    assert pod({"scheduling": {"tolerations": [mine]}})["tolerations"] == [mine, GPU_TOLERATION]
    assert pod({"scheduling": {"tolerations": [dict(GPU_TOLERATION), mine]}})["tolerations"] == [GPU_TOLERATION, mine]
    assert pod({"resources": {"gpus": 0}, "scheduling": {"tolerations": [mine]}})["tolerations"] == [mine]


def test_scheduling_is_passed_through():
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100"]}]}
                ]
            }
        }
    }
    p = pod({"scheduling": {"nodeSelector": {"pool": "gpu"}, "affinity": affinity, "priorityClassName": "high"}})
    assert (p["nodeSelector"], p["affinity"], p["priorityClassName"]) == ({"pool": "gpu"}, affinity, "high")
    assert not {"nodeSelector", "affinity", "priorityClassName"} & set(pod())


def test_probes_wire_the_worker_endpoints_with_the_spec_timings():
    container = pod({"probes": {"startup": {"failureThreshold": 120, "periodSeconds": 2}}})["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/livez", "port": "http", "scheme": "HTTP"},
        "initialDelaySeconds": 0,
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["periodSeconds"] == 5
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert (container["startupProbe"]["failureThreshold"], container["startupProbe"]["periodSeconds"]) == (120, 2)


def test_worker_env_parses_into_the_spec_values():
    spec = {
        "hdc": {"dimension": 4096, "vsa": "HRR", "device": "cpu"},
        "resources": {"gpus": 0},
        "health": {"cudaMemoryThresholdMb": 512, "memoryThresholdPercent": 80.5, "diskThresholdPercent": 70},
        "logging": {"level": "DEBUG", "format": "console"},
        "continuousBenchmark": {"enabled": False, "intervalSeconds": 60, "degradationThreshold": 0.25},
    }
    variables = env(spec)
    hdc_vars = {k: v for k, v in variables.items() if k.startswith("HDC_")}
    assert set(hdc_vars) <= set(ENV_VARS.values()), set(hdc_vars) - set(ENV_VARS.values())
    settings = WorkerSettings.from_env(environ=hdc_vars)  # the worker's own parser
    assert (settings.dimension, settings.vsa, settings.device) == (4096, "HRR", "cpu")
    assert (settings.port, settings.host, settings.state_dir) == (8080, "0.0.0.0", "/var/lib/hdc")
    assert settings.state_backend == "none"  # spec.state.backend's default
    assert (settings.health_cuda_memory_mb, settings.health_memory_percent, settings.health_disk_percent) == (
        512,
        80.5,
        70,
    )
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")
    assert (
        settings.benchmark_enabled,
        settings.benchmark_interval_seconds,
        settings.benchmark_degradation_threshold,
    ) == (False, 60, 0.25)
    assert settings.shutdown_grace_seconds < pod(spec)["terminationGracePeriodSeconds"]


def test_tracing_env():
    off = env()
    assert off["OTEL_SDK_DISABLED"] == "true" and "OTEL_EXPORTER_OTLP_ENDPOINT" not in off
    on = env({"tracing": {"enabled": True, "otlpEndpoint": "http://otel:4318", "samplingRatio": 0.2}})
    assert "OTEL_SDK_DISABLED" not in on
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318"
    assert (on["OTEL_TRACES_SAMPLER"], on["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.2")
    assert "k8s.pod.name=$(POD_NAME)" in on["OTEL_RESOURCE_ATTRIBUTES"]
    names = [e["name"] for e in pod()["containers"][0]["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # $(POD_NAME) is expanded


def test_config_hash_changes_with_the_worker_config_only():
    def digest(spec):
        return deployment(spec)["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]

    base = digest({})
    assert digest({}) == base
    assert digest({"hdc": {"dimension": 4096}}) != base
    assert digest({"logging": {"level": "DEBUG"}}) != base
    assert digest({"image": "example.org/hdc:2"}) != base
    assert digest({"alerts": {"highLatency": {"p95ThresholdMs": 50}}}) == base  # alerts do not restart pods
    assert digest({"replicas": 4}) == base


def test_replicas_follow_spec_and_are_clamped_when_autoscaled():
    assert deployment({"replicas": 3})["spec"]["replicas"] == 3
    assert deployment({"replicas": 0})["spec"]["replicas"] == 0
    scaled = {"autoscaling": {"mode": "operator", "minReplicas": 2, "maxReplicas": 5}}
    assert deployment({**scaled, "replicas": 1})["spec"]["replicas"] == 2
    assert deployment({**scaled, "replicas": 9})["spec"]["replicas"] == 5
    assert deployment({**scaled, "replicas": 4})["spec"]["replicas"] == 4


def test_service():
    svc = children()["Service"]
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]


def test_service_monitor_scrapes_with_the_contract_target_labels():
    sm = children({"monitoring": {"serviceMonitor": {"interval": "15s", "labels": {"release": "prom"}}}})[
        "ServiceMonitor"
    ]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets == {
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
        "workload": ["__meta_kubernetes_pod_label_hdcompute_io_workload"],
    }


def test_extra_labels_never_override_the_contract_labels():
    sm = children({"monitoring": {"serviceMonitor": {"labels": {"app.kubernetes.io/name": "evil"}}}})["ServiceMonitor"]
    assert sm["metadata"]["labels"]["app.kubernetes.io/name"] == "hdc-worker"


def test_prometheus_rule_groups_come_from_the_alerts_module():
    w = workload(
        {
            "baselines": [{"name": "bundle_10k_vectors", "operation": "bundle", "maxLatencyMs": 50}],
            "monitoring": {"prometheusRule": {"labels": {"role": "alert-rules"}}},
        }
    )
    rule = {c["kind"]: c for c in build_children(w, Capabilities.all())}["PrometheusRule"]
    assert rule["spec"]["groups"] == alerts.build_rule_groups("demo", "ml", w.spec)
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    assert any("bundle_10k_vectors" in str(g) for g in rule["spec"]["groups"])


@pytest.mark.parametrize(
    "caps,expected",
    [
        (Capabilities.all(), {"ServiceMonitor", "PrometheusRule"}),
        (Capabilities.none(), set()),
        (Capabilities(service_monitor=True, prometheus_rule=False), {"ServiceMonitor"}),
        (Capabilities(service_monitor=False, prometheus_rule=True), {"PrometheusRule"}),
    ],
)
def test_monitoring_children_follow_the_capabilities(caps, expected):
    assert set(children(capabilities=caps)) & {"ServiceMonitor", "PrometheusRule"} == expected


def test_monitoring_children_follow_the_spec_switches():
    off = {
        "monitoring": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboards": {"enabled": False},
        },
        "podDisruptionBudget": {"enabled": False},
    }
    assert set(children(off)) == {"Deployment", "Service"}


def test_hpa_only_in_hpa_mode_and_it_targets_the_workload():
    assert "HorizontalPodAutoscaler" not in children({"autoscaling": {"mode": "none"}})
    assert "HorizontalPodAutoscaler" not in children({"autoscaling": {"mode": "operator"}})
    behavior = {
        "scaleDown": {
            "stabilizationWindowSeconds": 120,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        }
    }
    hpa = children({"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 8, "behavior": behavior}})[
        "HorizontalPodAutoscaler"
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "name": "demo",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["behavior"] == behavior
    assert "behavior" not in children({"autoscaling": {"mode": "hpa"}})["HorizontalPodAutoscaler"]["spec"]


def test_hpa_metric():
    (by_capacity,) = hpa_metrics(workload({"autoscaling": {"targetUtilizationPercent": 70}}))
    assert by_capacity["type"] == "Pods"
    assert by_capacity["pods"]["target"] == {"type": "AverageValue", "averageValue": "70"}
    (by_ops,) = hpa_metrics(workload({"autoscaling": {"targetUtilizationPercent": 50, "targetOpsPerReplica": 701}}))
    assert by_ops["pods"]["metric"]["name"] == "hdc_hypervector_operations_per_second"
    assert by_ops["pods"]["target"]["averageValue"] == "350500m"
    assert (quantity(2), quantity(0.5), quantity(1000.0)) == ("2", "500m", "1000")


def test_pdb():
    assert children()["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert (
        children({"podDisruptionBudget": {"maxUnavailable": "25%"}})["PodDisruptionBudget"]["spec"]["maxUnavailable"]
        == "25%"
    )


def test_dashboards_configmap():
    import json

    from hdc_operator.dashboards import build_dashboards

    w = workload({"monitoring": {"dashboards": {"labels": {"team": "ml"}}}})
    cm = {c["kind"]: c for c in build_children(w, Capabilities.none())}["ConfigMap"]
    assert cm["metadata"]["name"] == "demo-dashboards"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["labels"]["team"] == "ml"
    expected = build_dashboards("demo", "ml", w.spec)
    assert {k: json.loads(v) for k, v in cm["data"].items()} == expected
    assert all(k.endswith(".json") for k in cm["data"])


def test_building_does_not_change_the_workload():
    w = workload(
        {
            "scheduling": {"tolerations": [{"key": "a", "operator": "Exists"}]},
            "autoscaling": {"mode": "hpa", "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}}},
        }
    )
    before = copy.deepcopy(w.spec)
    build_children(w, Capabilities.all())
    assert w.spec == before
