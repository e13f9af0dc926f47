"""The one module that writes to the Kubernetes API: server-side apply of children, pruning, status, Events.

    api = KubeApi(kubernetes_api_client, on_write=metrics.count_write)
    api.apply(manifest)                         # SSA, field manager hdc-operator, conflicts forced
    api.delete(child)                           # with a uid precondition: never someone else's object
    api.patch_status(namespace, name, status)   # merge patch on the status subresource
    api.patch_scale(namespace, name, replicas)  # spec.replicas through the scale subresource (mode operator)
    api.patch_annotations(namespace, name, {key: value})
    api.post_event(workload, type_, reason, message)
    caps = CapabilityCache(api, ttl_s=30).get() # Capabilities(service_monitor=..., prometheus_rule=...)

    plan = plan_children(desired, live, owner_uid, memo)  # pure: what to apply and what to prune

Every call is synchronous (the kubernetes client); the reconciler runs them in a thread pool, off the event loop.
A refusal by the API server becomes ApiRefused (reason QuotaExceeded, AdmissionDenied, Forbidden, Invalid, Conflict
or ApiRefused, with the server's message); an unreachable or failing server becomes ApiUnavailable. Both are
retried with backoff by the reconciler and shown as the Degraded condition.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from .names import (
    API_VERSION,
    CHILD_KINDS,
    FIELD_MANAGER,
    KIND,
    MONITORING_GROUP_VERSION,
    PLURAL,
    STATE_CLUSTER_GROUP_VERSION,
    ChildKind,
)

_BY_KIND = {k.kind: k for k in CHILD_KINDS}


def child_kind(kind: str) -> ChildKind:
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(
            f"kind {kind!r} is not a child kind the operator manages (one of {', '.join(_BY_KIND)})"
        ) from None


def resource_path(
    api_version: str, plural: str, namespace: str | None, name: str | None = None, subresource: str | None = None
) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def workload_path(namespace: str, name: str, subresource: str | None = None) -> str:
    """The API path of one HDCWorkload (or of its status or scale subresource)."""
    return resource_path(API_VERSION, PLURAL, namespace, name, subresource)


class ApiError(Exception):
    """A call the API server did not carry out. `reason` is the Degraded condition's reason."""

    def __init__(self, reason: str, message: str, *, status: int | None = None, kind: str = "", name: str = ""):
        self.reason, self.message, self.status, self.kind, self.name = reason, message, status, kind, name
        what = f"{kind} {name}: " if kind else ""
        super().__init__(f"{what}{message}")


class ApiRefused(ApiError):
    """The API server answered 4xx (quota, admission webhook, validation, RBAC)."""


class ApiUnavailable(ApiError):
    """The API server could not be reached, or answered 5xx/429."""


def classify_refusal(status: int, body: Mapping | None) -> str:
    """A Kubernetes Status (HTTP status + body) -> the condition reason."""
    message = str((body or {}).get("message") or "")
    lowered = message.lower()
    if "exceeded quota" in lowered or "forbidden: exceeded" in lowered:
        return "QuotaExceeded"
    # a webhook ("admission webhook ... denied the request") or a ValidatingAdmissionPolicy ("... with binding
    # '...' denied request: ..."; HTTP 422 by default, 403 when the policy says reason Forbidden: not RBAC)
    if "admission webhook" in lowered or "denied the request" in lowered or "denied request" in lowered:
        return "AdmissionDenied"
    if status == 403:
        return "Forbidden"
    if status == 422:
        return "Invalid"
    if status == 409:
        return "Conflict"
    return "ApiRefused"


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApi:
    """Synchronous, thread-safe calls to the API server through a kubernetes.client.ApiClient."""

    def __init__(
        self,
        api_client,
        *,
        on_write: Callable[[str, str], None] = lambda verb, kind: None,
        request_timeout_s: float = 30.0,
    ):
        self.client = api_client
        self.on_write = on_write
        self.timeout = request_timeout_s

    # -- one call ------------------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        body=None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
        what: tuple[str, str] = ("", ""),
    ) -> tuple[int, dict | None]:
        import urllib3.exceptions  # the kubernetes client's transport

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self.client.call_api(*request, _request_timeout=self.timeout)
            response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiUnavailable(
                "ApiUnavailable", f"{method} {path}: {exc.__class__.__name__}: {exc}", kind=what[0], name=what[1]
            ) from exc
        status = response.status
        try:
            data = json.loads(response.data) if response.data else None
        except ValueError:
            data = {"message": response.data[:500].decode(errors="replace")}
        return status, data

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
        ok_missing: bool = False,
        what: tuple[str, str] = ("", ""),
    ) -> dict | None:
        """One call to the API server: the answer's JSON body, or None for a 404 when `ok_missing`.

        A 4xx raises ApiRefused (the reason from classify_refusal), a 5xx, a 429 or no answer ApiUnavailable.
        `what` is the (kind, name) the error names. Writes through here are not counted (on_write): the typed
        methods below count their own.
        """
        status, data = self._call(method, path, body=body, query=query, content_type=content_type, what=what)
        if 200 <= status < 300:
            return data
        if status == 404 and ok_missing:
            return None
        message = str((data or {}).get("message") or f"HTTP {status}")
        if status >= 500 or status == 429:
            raise ApiUnavailable(
                "ApiUnavailable", f"HTTP {status}: {message}", status=status, kind=what[0], name=what[1]
            )
        raise ApiRefused(classify_refusal(status, data), message, status=status, kind=what[0], name=what[1])

    # -- reads ---------------------------------------------------------------------------------------------
    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        return self.request("GET", resource_path(api_version, plural, namespace, name), ok_missing=True)

    def list(self, api_version: str, plural: str, namespace: str | None, label_selector: str = "") -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        data = self.request("GET", resource_path(api_version, plural, namespace), query=query)
        return list((data or {}).get("items") or [])

    def served_resources(self, group_version: str) -> set[str] | None:
        """Plural names served under /apis/<group_version> (discovery), or None when the group is not served."""
        data = self.request("GET", f"/apis/{group_version}", ok_missing=True)
        if data is None:
            return None
        return {r.get("name") for r in data.get("resources") or ()}

    # -- writes (each counted through on_write) ------------------------------------------------------------
    def apply(self, manifest: Mapping) -> dict:
        """Server-side apply of one namespaced object, field manager hdc-operator, conflicts forced."""
        kind = child_kind(manifest["kind"])
        meta = manifest["metadata"]
        path = resource_path(kind.api_version, kind.plural, meta["namespace"], meta["name"])
        self.on_write("apply", kind.kind)
        return self.request(
            "PATCH",
            path,
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            what=(kind.kind, meta["name"]),
        )

    def delete(self, obj: Mapping) -> None:
        """Deletes one child, only if its uid is still the one observed (an object recreated since is kept)."""
        kind = child_kind(obj["kind"])
        meta = obj["metadata"]
        path = resource_path(kind.api_version, kind.plural, meta["namespace"], meta["name"])
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": meta["uid"]},
        }
        self.on_write("delete", kind.kind)
        try:
            self.request("DELETE", path, body=body, ok_missing=True, what=(kind.kind, meta["name"]))
        except ApiRefused as exc:
            if exc.status == 409:  # the uid precondition failed: it is someone else's object now
                return
            raise

    def patch_status(self, namespace: str, name: str, status: Mapping) -> dict:
        """Merge patch of the given status keys (others, e.g. the autoscaler's, are left alone)."""
        path = workload_path(namespace, name, "status")
        self.on_write("patch_status", KIND)
        return self.request(
            "PATCH", path, body={"status": dict(status)}, content_type="application/merge-patch+json", what=(KIND, name)
        )

    def patch_scale(self, namespace: str, name: str, replicas: int) -> dict | None:
        """spec.replicas of a workload through its scale subresource (the path kubectl scale and an HPA use)."""
        self.on_write("patch_scale", KIND)
        return self.request(
            "PATCH",
            workload_path(namespace, name, "scale"),
            body={"spec": {"replicas": int(replicas)}},
            content_type="application/merge-patch+json",
            what=(KIND, name),
        )

    def patch_annotations(self, namespace: str, name: str, annotations: Mapping[str, str]) -> dict | None:
        """Merge patch of a workload's annotations (the others are left alone)."""
        self.on_write("patch", KIND)
        return self.request(
            "PATCH",
            workload_path(namespace, name),
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
            what=(KIND, name),
        )

    def post_event(self, workload: Mapping, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about the workload (kubectl describe hdcw NAME shows it)."""
        meta = workload["metadata"]
        now = _now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.on_write("create", "Event")
        self.request("POST", resource_path("v1", "events", meta["namespace"]), body=body, what=("Event", reason))


class CapabilityCache:
    """Capabilities from API discovery, cached for ttl_s (a CRD installed or removed is seen within it)."""

    def __init__(self, api: KubeApi, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.api, self.ttl_s, self.clock = api, ttl_s, clock
        self._value = None
        self._at = 0.0
        self._lock = threading.Lock()

    def get(self):
        """builders.Capabilities of the cluster, at most ttl_s old."""
        with self._lock:
            if self._value is not None and self.clock() - self._at < self.ttl_s:
                return self._value
        from .builders import Capabilities  # the builders' contract type

        served = self.api.served_resources(MONITORING_GROUP_VERSION) or set()
        databases = self.api.served_resources(STATE_CLUSTER_GROUP_VERSION) or set()
        value = Capabilities(
            service_monitor="servicemonitors" in served,
            prometheus_rule="prometheusrules" in served,
            state_cluster="clusters" in databases,
        )
        with self._lock:
            self._value, self._at = value, self.clock()
        return value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None


# -- pure planning ---------------------------------------------------------------------------------------------


def child_key(obj: Mapping) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def manifest_hash(manifest: Mapping) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _quantity(value) -> Decimal | None:
    from kubernetes.utils import parse_quantity

    try:
        return parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError):
        return None


def covers(live, desired) -> bool:
    """Whether the live object already holds every value the desired manifest sets.

    Fields the API server adds (defaults, status, metadata) are ignored; empty desired values match absent live
    ones (the server drops them); quantities compare by value ("1000m" == "1"). Lists compare item by item and
    must have the same length.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return live is None and _is_empty(desired)
        return all(covers(live[k], v) if k in live else _is_empty(v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list):
            return live is None and not desired
        return len(live) == len(desired) and all(covers(a, b) for a, b in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired or (live is None and desired is False)
    if live == desired:
        return True
    if live is None:
        return _is_empty(desired)
    if isinstance(live, str) and isinstance(desired, str):
        a, b = _quantity(live), _quantity(desired)
        return a is not None and a == b
    return False


def _is_empty(value) -> bool:
    if isinstance(value, Mapping):
        return all(_is_empty(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value is None or value is False or value == "" or (type(value) is int and value == 0)


def owned_by(obj: Mapping, owner_uid: str) -> bool:
    return any(
        ref.get("uid") == owner_uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or ()
    )


@dataclass
class ApplyMemo:
    """Per child: (hash of the desired manifest, resourceVersion our last apply returned).

    When neither changed since, the child is in sync without comparing (the comparison may disagree with the API
    server's normal form in ways `covers` does not know; this keeps such a child from being re-applied forever).
    """

    entries: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)

    def remember(self, namespace: str, obj: Mapping, desired_hash: str) -> None:
        self.entries[(namespace, *child_key(obj))] = (desired_hash, obj["metadata"].get("resourceVersion", ""))

    def in_sync(self, namespace: str, live: Mapping, desired_hash: str) -> bool:
        entry = self.entries.get((namespace, *child_key(live)))
        return entry is not None and entry == (desired_hash, live["metadata"].get("resourceVersion", ""))

    def forget_namespace_name(self, namespace: str, names: Iterable[tuple[str, str]]) -> None:
        for kind, name in names:
            self.entries.pop((namespace, kind, name), None)


@dataclass(frozen=True)
class Plan:
    apply: list[dict]  # desired manifests that are missing or differ from the live objects
    prune: list[dict]  # live children of this owner that are no longer desired
    in_sync: list[dict]  # live objects that already match


def plan_children(
    namespace: str, desired: Iterable[Mapping], live: Iterable[Mapping], owner_uid: str, memo: ApplyMemo | None = None
) -> Plan:
    """Pure: which desired children need an apply, and which live children (ours, no longer wanted) to prune."""
    live_by_key = {child_key(o): o for o in live if owned_by(o, owner_uid)}
    to_apply, in_sync = [], []
    wanted = set()
    for manifest in desired:
        key = child_key(manifest)
        wanted.add(key)
        current = live_by_key.get(key)
        if (
            current is not None
            and not current["metadata"].get("deletionTimestamp")
            and (
                (memo is not None and memo.in_sync(namespace, current, manifest_hash(manifest)))
                or covers(current, manifest)
            )
        ):
            in_sync.append(current)
        else:
            to_apply.append(dict(manifest))
    prune = [
        o
        for key, o in live_by_key.items()
        if key not in wanted
        and key[0] in _BY_KIND
        and _BY_KIND[key[0]].prune
        and not o["metadata"].get("deletionTimestamp")
    ]
    return Plan(apply=to_apply, prune=prune, in_sync=in_sync)
