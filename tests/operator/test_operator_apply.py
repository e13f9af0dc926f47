"""apply.py's pure parts: whether a live child covers its manifest, what to apply and prune, refusal reasons;
config.py's validation."""

import pytest

from hdc_operator.apply import (
    ApiRefused,
    ApiUnavailable,
    ApplyMemo,
    KubeApi,
    classify_refusal,
    covers,
    manifest_hash,
    plan_children,
    resource_path,
)
from hdc_operator.config import ConfigError, load_config

UID = "0000-owner"
OWNER = [
    {
        "apiVersion": "hdcompute.io/v1alpha1",
        "kind": "HDCWorkload",
        "name": "w",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
]


def manifest(kind="Deployment", name="w", **spec):
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "ownerReferences": OWNER},
        "spec": spec,
    }


def live_of(m, rv="10", **extra_spec):
    obj = {
        **m,
        "metadata": {**m["metadata"], "uid": "child-" + m["metadata"]["name"], "resourceVersion": rv, "generation": 1},
        "spec": {**m["spec"], **extra_spec},
        "status": {"replicas": 1},
    }
    return obj


def test_covers_ignores_server_defaults_and_empty_values():
    desired = {
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "nodeSelector": {},
                    "tolerations": [],
                    "priorityClassName": "",
                    "containers": [{"name": "w", "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}],
                }
            },
        }
    }
    live = {
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 10,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "w",
                            "terminationMessagePath": "/dev/termination-log",
                            "resources": {"limits": {"cpu": "2000m", "memory": "8Gi"}},
                        }
                    ],
                    "restartPolicy": "Always",
                }
            },
        }
    }
    assert covers(live, desired)


def test_covers_sees_drift():
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "image": "a:1"}]}}}}
    assert not covers({"spec": {"replicas": 3, "template": desired["spec"]["template"]}}, desired)
    assert not covers(
        {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "image": "a:2"}]}}}}, desired
    )
    assert not covers({"spec": {"replicas": 2, "template": {"spec": {"containers": []}}}}, desired)
    assert not covers(
        {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "image": "a:1"}, {"name": "x"}]}}}},
        desired,
    )  # a container added by hand
    assert not covers({"spec": {"flag": False}}, {"spec": {"flag": True}})
    assert covers({"spec": {}}, {"spec": {"flag": False}})
    assert not covers({"metadata": {"labels": {"a": "1"}}}, {"metadata": {"labels": {"a": "1", "b": "2"}}})
    assert not covers({"spec": {"targetPort": "8080"}}, {"spec": {"targetPort": 8080}})


def test_plan_applies_missing_and_drifted_and_prunes_unwanted():
    dep, svc = manifest(replicas=2), manifest("Service", ports=[{"port": 8080}])
    hpa = manifest("HorizontalPodAutoscaler", minReplicas=1)
    live = [live_of(dep, replicas=3), live_of(hpa)]
    plan = plan_children("ns", [dep, svc], live, UID)
    assert [(m["kind"], m["metadata"]["name"]) for m in plan.apply] == [("Deployment", "w"), ("Service", "w")]
    assert [o["kind"] for o in plan.prune] == ["HorizontalPodAutoscaler"]


def test_plan_leaves_in_sync_children_and_other_owners_alone():
    dep = manifest(replicas=2)
    foreign = live_of(manifest("ConfigMap", name="w-dashboards"))
    foreign["metadata"]["ownerReferences"] = [{**OWNER[0], "uid": "someone-else"}]
    pvc = live_of(manifest("PersistentVolumeClaim", name="w-state"))
    plan = plan_children("ns", [dep], [live_of(dep), foreign, pvc], UID)
    assert plan.apply == [] and [o["kind"] for o in plan.in_sync] == ["Deployment"]
    assert plan.prune == []  # not ours, and a claim (state) is never pruned


def test_plan_reapplies_a_child_that_lost_its_owner_reference():
    dep = manifest(replicas=2)
    orphan = live_of(dep)
    orphan["metadata"]["ownerReferences"] = []
    assert [m["kind"] for m in plan_children("ns", [dep], [orphan], UID).apply] == ["Deployment"]


def test_memo_stops_reapplying_what_the_server_normalises_differently():
    dep = manifest(replicas=2, odd="value the server rewrites")
    live = live_of(dep)
    live["spec"]["odd"] = "rewritten"
    assert plan_children("ns", [dep], [live], UID).apply  # looks drifted
    memo = ApplyMemo()
    memo.remember("ns", live, manifest_hash(dep))  # what our own apply returned
    assert plan_children("ns", [dep], [live], UID, memo).apply == []
    live2 = {**live, "metadata": {**live["metadata"], "resourceVersion": "11"}}  # changed since: compare again
    assert plan_children("ns", [dep], [live2], UID, memo).apply


@pytest.mark.parametrize(
    "status,message,reason",
    [
        (
            403,
            'deployments.apps "w" is forbidden: exceeded quota: q, requested: count/deployments.apps=1',
            "QuotaExceeded",
        ),
        (400, 'admission webhook "deny.example.com" denied the request: no', "AdmissionDenied"),
        (
            422,
            "deployments.apps \"w\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: no",
            "AdmissionDenied",
        ),
        (
            403,
            "deployments.apps \"w\" is forbidden: ValidatingAdmissionPolicy 'p' denied request: no",
            "AdmissionDenied",
        ),
        (403, 'deployments.apps is forbidden: User "x" cannot patch', "Forbidden"),
        (422, 'Deployment.apps "w" is invalid: spec.replicas: Invalid value', "Invalid"),
        (400, "bad request", "ApiRefused"),
    ],
)
def test_refusal_reasons(status, message, reason):
    assert classify_refusal(status, {"message": message}) == reason


def test_resource_paths():
    assert resource_path("v1", "services", "ns", "w") == "/api/v1/namespaces/ns/services/w"
    assert resource_path("apps/v1", "deployments", "ns") == "/apis/apps/v1/namespaces/ns/deployments"
    assert (
        resource_path("hdcompute.io/v1alpha1", "hdcworkloads", "ns", "w", "status")
        == "/apis/hdcompute.io/v1alpha1/namespaces/ns/hdcworkloads/w/status"
    )


def test_config_defaults_env_and_flags():
    cfg = load_config({}, env={})
    assert cfg.clusterwide and cfg.metrics_port == 8081 and cfg.resync_interval_s == 60
    cfg = load_config(
        {"resync_interval": 5},
        env={
            "HDC_OPERATOR_NAMESPACES": "a, b",
            "HDC_OPERATOR_RESYNC_INTERVAL": "30",
            "HDC_OPERATOR_METRICS_PORT": "9000",
        },
    )
    assert cfg.namespaces == ("a", "b") and cfg.resync_interval_s == 5 and cfg.metrics_port == 9000


@pytest.mark.parametrize(
    "overrides,env,needle",
    [
        ({"metrics_port": 70000}, {}, "--metrics-port must be an integer from 0 to 65535"),
        ({}, {"HDC_OPERATOR_RESYNC_INTERVAL": "soon"}, "HDC_OPERATOR_RESYNC_INTERVAL must be a number"),
        ({"namespaces": ("Bad_NS",)}, {}, "not a namespace name"),
        ({"namespaces": ("a",), "all_namespaces": True}, {}, "exclude each other"),
        ({"prometheus_url": "prometheus:9090"}, {}, "http(s) URL"),
        ({"log_format": "xml"}, {}, "json or console"),
    ],
)
def test_config_errors_name_the_setting(overrides, env, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides, env=env)
    assert needle in str(err.value)


def test_cli_refuses_bad_settings_and_missing_kubeconfig(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HDC_OPERATOR_") and k != "KUBECONFIG"}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    bad = subprocess.run(
        [sys.executable, "-m", "hdc_operator.main", "--resync-interval", "0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--resync-interval must be a number from 1.0" in bad.stderr
    none = subprocess.run(
        [sys.executable, "-m", "hdc_operator.main", "--metrics-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode == 2 and "no usable Kubernetes configuration" in none.stderr


def test_peering_rule_matches_kopf():
    """kopf 1.45.2 pauses an operator for a live peer of higher priority, and every operator for live peers of
    equal priority (tests/operator/test_operator_k8s.py checks both with real processes)."""
    import datetime as dt

    from hdc_operator.reconcile import paused_by_peers

    now = dt.datetime(2027, 1, 15, 12, 0, tzinfo=dt.timezone.utc)
    alive = {"priority": 20, "lifetime": 60, "lastseen": "2027-01-15T11:59:30+00:00"}
    dead = {"priority": 20, "lifetime": 60, "lastseen": "2027-01-15T11:58:00+00:00"}
    assert paused_by_peers({"me": {"priority": 10}, "other": alive}, "me", 10, now)
    assert not paused_by_peers({"other": alive}, "me", 30, now)
    assert paused_by_peers({"other": alive}, "me", 20, now)  # equal: kopf pauses both
    assert not paused_by_peers({"me": alive}, "me", 20, now)  # our own entry never pauses us
    assert not paused_by_peers({"other": dead}, "me", 10, now)
    assert paused_by_peers({"other": {"priority": 20}}, "me", 20, now)  # no lastseen: kopf counts it as seen now
    assert not paused_by_peers({"other": None, "x": {"lastseen": "garbage"}}, "me", 10, now)
    assert not paused_by_peers(None, "me", 10, now)


class _Response:
    def __init__(self, status: int, data: bytes):
        self.status, self.data = status, data

    def read(self) -> bytes:
        return self.data


class _RecordingClient:
    """The two kubernetes.client.ApiClient methods KubeApi calls; answers 200 with an empty object."""

    def __init__(self):
        self.requests = []

    def param_serialize(self, method, path, *, query_params, header_params, body, auth_settings):
        self.requests.append((method, path, query_params, header_params.get("Content-Type"), body))
        return (method, path)

    def call_api(self, method, path, _request_timeout=None):
        return _Response(200, b"{}")


def test_workload_writes_go_to_the_workload_and_its_subresources_and_are_counted():
    client, writes = _RecordingClient(), []
    api = KubeApi(client, on_write=lambda verb, kind: writes.append((verb, kind)))
    api.patch_scale("ns", "w", 3)
    api.patch_annotations("ns", "w", {"hdcompute.io/x": "1"})
    api.patch_status("ns", "w", {"phase": "Running"})
    merge = "application/merge-patch+json"
    assert [r[:2] + r[3:] for r in client.requests] == [
        ("PATCH", "/apis/hdcompute.io/v1alpha1/namespaces/ns/hdcworkloads/w/scale", merge, {"spec": {"replicas": 3}}),
        (
            "PATCH",
            "/apis/hdcompute.io/v1alpha1/namespaces/ns/hdcworkloads/w",
            merge,
            {"metadata": {"annotations": {"hdcompute.io/x": "1"}}},
        ),
        (
            "PATCH",
            "/apis/hdcompute.io/v1alpha1/namespaces/ns/hdcworkloads/w/status",
            merge,
            {"status": {"phase": "Running"}},
        ),
    ]
    assert writes == [("patch_scale", "HDCWorkload"), ("patch", "HDCWorkload"), ("patch_status", "HDCWorkload")]


@pytest.mark.parametrize(
    "status, error, reason",
    [(404, None, None), (403, ApiRefused, "Forbidden"), (503, ApiUnavailable, "ApiUnavailable")],
)
def test_request_answers_or_raises_by_status(status, error, reason):
    client = _RecordingClient()
    client.call_api = lambda method, path, _request_timeout=None: _Response(status, b'{"message": "no"}')
    api = KubeApi(client)
    if error is None:
        assert api.request("GET", "/api/v1/nodes/x", ok_missing=True) is None
        return
    with pytest.raises(error) as raised:
        api.request("GET", "/api/v1/nodes/x", ok_missing=True)
    assert raised.value.reason == reason and raised.value.status == status
