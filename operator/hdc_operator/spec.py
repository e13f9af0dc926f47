"""The typed HDCWorkload: defaults and validation read from crds/hdcworkload.yaml (one source of truth).

`parse_workload(body)` turns an HDCWorkload object (a local YAML file, or what the API server returns) into a
frozen `Workload` whose `spec` is the fully defaulted spec. Defaults are applied by walking the CRD's OpenAPI
schema exactly as the API server's structural defaulting does, so a local file and the server's defaulted copy
of it parse equal. The schema's bounds, enums and patterns are checked here too, and every CEL rule of the CRD
(`x-kubernetes-validations`) has a Python mirror in `CEL_MIRRORS`, keyed by the rule's text: a rule without a
mirror fails at import, so `hdcctl validate` / `hdcctl render` reject what the API server would reject.

Errors are `InvalidSpec(field, message)`, the field written as the API server writes it (`spec.hdc.dimension`,
`spec.baselines[1].name`); `.errors` holds every problem found, the exception itself names the first.
"""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from hdc_operator.names import API_VERSION, KIND, VERSION

_REPO = pathlib.Path(__file__).resolve().parents[2]
# HDC_CRD_PATH: where the CRD lives when the package is installed away from the repository (the operator image).
CRD_PATH = pathlib.Path(os.environ.get("HDC_CRD_PATH") or _REPO / "crds" / "hdcworkload.yaml")


class InvalidSpec(ValueError):
    """A workload the API server would reject (or that cannot be built). `field` is the path of the first bad
    field, `message` says what was expected; `errors` lists every (field, message) found."""

    def __init__(self, field: str, message: str, errors: list[tuple[str, str]] | None = None):
        self.field = field
        self.message = message
        self.errors = errors or [(field, message)]
        # the CRD's CEL messages already start with the field's name
        super().__init__(message if message.startswith(field) else f"{field}: {message}")

    def __reduce__(self) -> tuple[type[InvalidSpec], tuple[str, str, list[tuple[str, str]]]]:
        # picklable (kopf and multiprocessing copy exceptions)
        return (InvalidSpec, (self.field, self.message, self.errors))


# --- the CRD ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load_crd(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            crd: dict[str, Any] = yaml.safe_load(f)
    except OSError as exc:
        raise RuntimeError(f"cannot read the HDCWorkload CRD at {path} (set HDC_CRD_PATH): {exc}") from None
    check_mirrors(_version(crd)["schema"]["openAPIV3Schema"])
    return crd


def load_crd() -> dict[str, Any]:
    """The CRD manifest (a fresh copy: callers may change it)."""
    return copy.deepcopy(_load_crd(str(CRD_PATH)))


def _version(crd: Mapping[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    for version in versions:
        if version["name"] == VERSION:
            return version
    raise RuntimeError(f"the CRD at {CRD_PATH} has no version {VERSION}")


def root_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the HDCWorkload (shared, do not modify)."""
    schema: dict[str, Any] = _version(_load_crd(str(CRD_PATH)))["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    """The schema of .spec (shared, do not modify)."""
    schema: dict[str, Any] = root_schema()["properties"]["spec"]
    return schema


# --- defaulting (the API server's structural defaulting) ---------------------------------------------------


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of `value` with the schema's defaults applied, as the API server applies them: a missing field
    with a default gets it (and the default is defaulted in turn); a null where the schema is not nullable
    counts as missing; a nullable field without a default that is missing reads as None here (the server
    leaves it out; both parse to the same spec)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if out.get(key, ...) is None and not sub.get("nullable"):
                del out[key]
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(out[key], sub)
            elif sub.get("nullable"):
                out[key] = None  # so that e.g. spec["autoscaling"]["targetOpsPerReplica"] always exists
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def default_spec() -> dict[str, Any]:
    """The fully defaulted spec of `spec: {}`."""
    spec: dict[str, Any] = apply_defaults({}, {"properties": {"spec": spec_schema()}})["spec"]
    return spec


# --- schema validation ---------------------------------------------------------------------------------------

_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")


def is_positive_quantity(value: Any) -> bool:
    """A Kubernetes resource quantity greater than zero ("2", "500m", "8Gi", "1e3"), or a positive int."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > 0
    if not isinstance(value, str):
        return False
    match = _QUANTITY.match(value)
    return match is not None and float(match.group(1)) > 0


def _type_ok(value: Any, schema: Mapping[str, Any]) -> str | None:
    """None when `value` has the schema's type, else the expected type's name."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return None if ok else "integer or string"
    kind: str | None = schema.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind is None or checks[kind](value):
        return None
    return kind


def _bounds(value: float, schema: Mapping[str, Any]) -> str | None:
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            op = ">" if schema.get("exclusiveMinimum") else ">="
            high = _high_text(schema)
            return f"must be {op} {low}{high}, got {value}"
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            op = "<" if schema.get("exclusiveMaximum") else "<="
            return f"must be {op} {high}, got {value}"
    return None


def _high_text(schema: Mapping[str, Any]) -> str:
    if "maximum" not in schema:
        return ""
    return f" and {'<' if schema.get('exclusiveMaximum') else '<='} {schema['maximum']}"


class _Blocking(str):
    """A type or enum error: the API server then skips the CEL rules (apiextensions' hasBlockingErr)."""


class _UnknownField(str):
    """An unknown field: the API server's strict decoding refuses the object before validating it (HTTP 400)."""


def _which_errors(
    schema_errors: list[tuple[str, str]], cel: Callable[[], list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """The errors the API server reports, in its order of checks: unknown fields alone; else the schema's
    errors, plus the CEL rules' unless a type or enum error blocks them."""
    unknown = [e for e in schema_errors if isinstance(e[1], _UnknownField)]
    if unknown:
        errors = unknown
    elif any(isinstance(m, _Blocking) for _, m in schema_errors):
        errors = schema_errors
    else:
        errors = schema_errors + cel()
    return [(f, str(m)) for f, m in errors]


def validate_value(value: Any, schema: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """Every (field, message) by which `value` (already defaulted) breaks `schema` (CEL rules: cel_errors)."""
    errors: list[tuple[str, str]] = []
    if value is None:
        if not schema.get("nullable"):
            errors.append((path, "must not be null"))
        return errors
    expected = _type_ok(value, schema)
    if expected:
        return [(path, _Blocking(f"must be of type {expected}, got {type(value).__name__} {value!r}"))]
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, _Blocking(f"must be one of {', '.join(map(str, schema['enum']))}, got {value!r}")))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not schema.get("x-kubernetes-int-or-string"):
        problem = _bounds(value, schema)
        if problem:
            errors.append((path, problem))
    if isinstance(value, str) and not schema.get("x-kubernetes-int-or-string"):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append((path, f"must be at least {schema['minLength']} characters long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"must be at most {schema['maxLength']} characters long, got {len(value)}"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"must match {schema['pattern']!r}, got {value!r}"))
    if isinstance(value, dict):
        errors += _validate_object(value, schema, path)
    if isinstance(value, list):
        errors += _validate_array(value, schema, path)
    return errors


def cel_errors(value: Any, schema: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """Every (field, message) of a CEL rule (by its Python mirror) that `value` breaks (`value` must have passed
    the schema's type and enum checks)."""
    errors: list[tuple[str, str]] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key, extra if isinstance(extra, dict) else None)
            if sub_schema is not None:
                errors += cel_errors(sub, sub_schema, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            errors += cel_errors(item, schema["items"], f"{path}[{i}]")
    if value is not None:
        for rule in schema.get("x-kubernetes-validations", ()):
            if not CEL_MIRRORS[rule["rule"]](value):
                errors.append((path + rule.get("fieldPath", ""), rule["message"]))
    return errors


def _validate_object(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    props: Mapping[str, Any] | None = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key in schema.get("required", ()):
        if key not in value:
            errors.append((f"{path}.{key}", "Required value"))
    if props is None and not isinstance(extra, dict):
        return errors  # metadata, and x-kubernetes-preserve-unknown-fields objects: passed through
    for key, sub in value.items():
        if props is not None and key in props:
            errors += validate_value(sub, props[key], f"{path}.{key}")
        elif isinstance(extra, dict):
            errors += validate_value(sub, extra, f"{path}.{key}")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            expected = ", ".join(props or ())
            errors.append((f"{path}.{key}", _UnknownField(f"unknown field (expected one of: {expected})")))
    return errors


def _validate_array(value: list[Any], schema: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append((path, f"must have at most {schema['maxItems']} items, got {len(value)}"))
    for i, item in enumerate(value):
        errors += validate_value(item, schema.get("items", {}), f"{path}[{i}]")
    if schema.get("x-kubernetes-list-type") == "map":
        keys: list[str] = schema["x-kubernetes-list-map-keys"]
        seen: dict[tuple[Any, ...], int] = {}
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k) for k in keys)
            if key in seen and seen[key] >= 0:  # each duplicated key once, at its first repeat (as the server)
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, key, strict=True))
                errors.append((f"{path}[{i}]", f"Duplicate value: {shown} (also item {seen[key]})"))
                seen[key] = -1
            seen.setdefault(key, i)
    return errors


# --- CEL rules, mirrored ------------------------------------------------------------------------------------

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _int_or_positive_quantity(v: Any) -> bool:
    return is_positive_quantity(v)


# rule text (exactly as in the CRD) -> predicate on the defaulted value at the rule's node.
CEL_MIRRORS: dict[str, Callable[[Any], bool]] = {
    "self.metadata.name.size() <= 52 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": lambda o: (
        len(o["metadata"].get("name", "")) <= 52 and bool(_DNS1035.match(o["metadata"].get("name", "")))
    ),
    "!(has(self.hdc) && has(self.hdc.device) && self.hdc.device == 'cuda' && has(self.resources) "
    "&& has(self.resources.gpus) && self.resources.gpus == 0)": lambda s: (
        not (s.get("hdc", {}).get("device") == "cuda" and s.get("resources", {}).get("gpus") == 0)
    ),
    "type(self) == int ? self > 0 : (isQuantity(self) && quantity(self).isGreaterThan(quantity('0')))": (
        _int_or_positive_quantity
    ),
    "has(self.maxLatencyMs) || has(self.minThroughputOpsPerSec) || has(self.maxMemoryMb)": lambda b: any(
        k in b for k in ("maxLatencyMs", "minThroughputOpsPerSec", "maxMemoryMb")
    ),
    "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas": lambda a: (
        "minReplicas" not in a or "maxReplicas" not in a or a["minReplicas"] <= a["maxReplicas"]
    ),
    "!has(self.enabled) || !self.enabled || (has(self.otlpEndpoint) && self.otlpEndpoint != '')": lambda t: (
        not t.get("enabled") or t.get("otlpEndpoint", "") != ""
    ),
    "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')": lambda v: (
        v >= 0 if isinstance(v, int) else bool(re.search(r"^[0-9]+%$", v))
    ),
    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))": is_positive_quantity,
    "!(has(self.state) && has(self.state.backend) && self.state.backend == 'local') || ((!has(self.replicas) "
    "|| self.replicas <= 1) && (!has(self.autoscaling) || !has(self.autoscaling.mode) "
    "|| self.autoscaling.mode == 'none'))": lambda s: (
        s.get("state", {}).get("backend") != "local"
        or (s.get("replicas", 1) <= 1 and s.get("autoscaling", {}).get("mode", "none") == "none")
    ),
    "!(has(self.persistence) && has(self.persistence.enabled) && self.persistence.enabled) || (has(self.state) "
    "&& has(self.state.backend) && self.state.backend == 'local')": lambda s: (
        not s.get("persistence", {}).get("enabled") or s.get("state", {}).get("backend") == "local"
    ),
    "!has(self.backend) || self.backend != 'postgres' || (has(self.postgres) && (has(self.postgres.secretName) "
    "!= has(self.postgres.cluster)))": lambda st: (
        st.get("backend") != "postgres"
        or ("postgres" in st and ("secretName" in st["postgres"]) != ("cluster" in st["postgres"]))
    ),
    "!has(self.postgres) || (has(self.backend) && self.backend == 'postgres')": lambda st: (
        "postgres" not in st or st.get("backend") == "postgres"
    ),
}


def cel_rules(schema: Mapping[str, Any] | None = None, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, rule) of the CRD's x-kubernetes-validations."""
    schema = root_schema() if schema is None else schema
    found = [(path, rule) for rule in schema.get("x-kubernetes-validations", ())]
    for key, sub in schema.get("properties", {}).items():
        found += cel_rules(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("additionalProperties"), dict):
        found += cel_rules(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        found += cel_rules(schema["items"], f"{path}[]")
    return found


def check_mirrors(schema: Mapping[str, Any]) -> None:
    """Raises RuntimeError naming every CEL rule of `schema` without a Python mirror in CEL_MIRRORS (the CRD is
    checked so when it is loaded: a new rule cannot be forgotten here)."""
    missing = [f"{p or '<root>'}: {r['rule']}" for p, r in cel_rules(schema) if r["rule"] not in CEL_MIRRORS]
    if missing:
        raise RuntimeError(
            "CEL rules of the CRD without a Python mirror in hdc_operator.spec.CEL_MIRRORS:\n  " + "\n  ".join(missing)
        )


# --- the typed workload ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One HDCWorkload, parsed: metadata plus the fully defaulted `spec` (camelCase, as stored)."""

    name: str
    namespace: str
    uid: str
    generation: int
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)

    # typed accessors of what the builders and the operator read most
    @property
    def image(self) -> str:
        return str(self.spec["image"])

    @property
    def replicas(self) -> int:
        return int(self.spec["replicas"])

    @property
    def dimension(self) -> int:
        return int(self.spec["hdc"]["dimension"])

    @property
    def vsa(self) -> str:
        return str(self.spec["hdc"]["vsa"])

    @property
    def device(self) -> str:
        return str(self.spec["hdc"]["device"])

    @property
    def gpus(self) -> int:
        return int(self.spec["resources"]["gpus"])

    @property
    def autoscaling_mode(self) -> str:
        return str(self.spec["autoscaling"]["mode"])

    @property
    def min_replicas(self) -> int:
        return int(self.spec["autoscaling"]["minReplicas"])

    @property
    def max_replicas(self) -> int:
        return int(self.spec["autoscaling"]["maxReplicas"])

    @property
    def desired_replicas(self) -> int:
        """spec.replicas, clamped to [minReplicas, maxReplicas] when an autoscaler owns the count."""
        if self.autoscaling_mode == "none":
            return self.replicas
        return max(self.min_replicas, min(self.max_replicas, self.replicas))

    @property
    def state_backend(self) -> str:
        """spec.state.backend: none, local or postgres."""
        return str(self.spec["state"]["backend"])

    @property
    def baselines(self) -> list[Mapping[str, Any]]:
        return list(self.spec["baselines"])

    @property
    def selector_labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "hdc-worker", "app.kubernetes.io/instance": self.name}

    @property
    def selector(self) -> str:
        """The label selector of the worker pods, as status.selector (the scale subresource) reports it."""
        return ",".join(f"{k}={v}" for k, v in self.selector_labels.items())


def validate_workload(body: Mapping[str, Any], *, namespace: str | None = None) -> list[tuple[str, str]]:
    """Every (field, message) the API server would reject `body` for (empty when it is valid)."""
    try:
        parse_workload(body, namespace=namespace)
    except InvalidSpec as exc:
        return list(exc.errors)
    return []


def parse_workload(body: Mapping[str, Any], *, namespace: str | None = None) -> Workload:
    """The Workload of an HDCWorkload object; raises InvalidSpec naming the first bad field.

    `namespace` is used when the object has none (a local file); the default is "default".
    """
    if not isinstance(body, Mapping):
        raise InvalidSpec("<object>", f"must be a mapping (an HDCWorkload object), got {type(body).__name__}")
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if kind != KIND:
        raise InvalidSpec("kind", f"must be {KIND}, got {kind!r}")
    if api_version != API_VERSION:
        raise InvalidSpec("apiVersion", f"must be {API_VERSION}, got {api_version!r}")
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise InvalidSpec("metadata.name", "Required value: an HDCWorkload needs a name")
    labels = metadata.get("labels") or {}
    ns = metadata.get("namespace") or namespace or "default"
    schema = root_schema()
    obj = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": dict(metadata),
        "spec": body.get("spec") if body.get("spec") is not None else {},
    }
    defaulted = apply_defaults(obj, {"properties": {"spec": schema["properties"]["spec"]}})
    checked = {k: v for k, v in schema.items() if k != "properties"} | {
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema["properties"]["spec"],
        }
    }
    errors = _which_errors(validate_value(defaulted, checked, ""), lambda: cel_errors(defaulted, checked, ""))
    # The root rule (on metadata.name) cannot carry a fieldPath (the API server reports it at <nil>).
    errors = [(f.lstrip(".") or "metadata.name", m) for f, m in errors]
    if errors:
        raise InvalidSpec(errors[0][0], errors[0][1], errors)
    generation = metadata.get("generation") or 0
    return Workload(
        name=metadata["name"],
        namespace=ns,
        uid=metadata.get("uid") or "",
        generation=int(generation),
        labels=dict(labels),
        spec=defaulted["spec"],
    )
