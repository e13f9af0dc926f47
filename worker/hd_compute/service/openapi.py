"""The API's contract: the bounds of its request fields and the OpenAPI 3.1 document served at /openapi.json.

The routes check their fields against the constants defined here, and the document states the same bounds, so the
two cannot drift apart: every field's type, range and required-ness, null nowhere (no field is nullable; leaving
a field out gives its default), every route and every status it can answer.
tests/worker/service/test_openapi_fuzz.py runs schemathesis against a live worker's document. docs/worker-api.md
is the prose version.

Longer than the service's other modules on purpose: it is the API's declaration, one entry per route with its
fields, answers and statuses side by side, mostly data.
"""

from __future__ import annotations

from typing import Any

from .config import VSA_NAMES, WorkerSettings
from .state import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_RE, MIN_STATE_VERSION_HEADER, NAME_RE, STATE_VERSION_HEADER

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # integer fields: what the engine and orjson take
MAX_DIMENSION = 1 << 24  # the largest dimension a request may ask for (HDC_DIMENSION's own bound)
MAX_BATCH_AXES = 16  # the most batch axes `num` may give: more than any use needs, few enough for every kernel
MAX_CLASSES = 1_000_000
# The smallest softmax temperature: cosines (in [-1, 1]) divided by it stay far from float32's overflow.
MIN_TEMPERATURE = 1e-9
MAX_EPOCHS = 1000
MAX_LEARNING_RATE = 1e3  # OnlineHD's lr: prototypes are sums of lr-scaled samples, which must stay finite
METRICS = ("cosine", "dot", "hamming")
MAX_LATENCY_MS = 60_000.0  # PUT /admin/faults: the longest latency a fault adds
NAME_PATTERN = f"^{NAME_RE.pattern}$"  # names become file names
# `vsa` is read case-insensitively ("bsc" is BSC): the pattern says so, the enum would not.
VSA_PATTERN = "^(" + "|".join("".join(f"[{c.upper()}{c.lower()}]" for c in name) for name in VSA_NAMES) + ")$"

_REF = "#/components/schemas/"


def _int(minimum: int = INT64_MIN, maximum: int = INT64_MAX, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, **extra}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


_VSA = {
    "type": "string",
    "pattern": VSA_PATTERN,
    "description": f"VSA model, one of {', '.join(VSA_NAMES)} (any case; default: HDC_VSA)",
}
_DIM = _int(1, MAX_DIMENSION, description="dimension (default: HDC_DIMENSION, or the data's)")
_NAME = {"type": "string", "pattern": NAME_PATTERN}
_VECTORS = {"$ref": _REF + "Vectors"}
_NUMBERS = {"$ref": _REF + "Numbers"}
_INTEGERS = {"$ref": _REF + "Integers"}
_STRINGS = _array({"type": "string"})

_SCHEMAS: dict[str, Any] = {
    "Vectors": {
        "description": "Hypervectors in dense form: a list of D numbers (MAP/BSC: +1/-1, HRR: reals, FHRR: [re, im] "
        "pairs, so a list of D pairs), or a nested list for a batch of at most "
        f"{MAX_BATCH_AXES} batch axes; "
        "rectangular, no empty list. In "
        "an application/x-npz body: the storage form (MAP int8/float32, BSC int64 packed words, HRR "
        "float32/64, FHRR complex64/128).",
        **_array({"anyOf": [{"type": "number"}, {"$ref": _REF + "Vectors"}]}, minItems=1),
    },
    "Numbers": {
        "description": "a number, or a nested list of numbers (a result's batch shape)",
        "anyOf": [{"type": "number"}, _array({"$ref": _REF + "Numbers"})],
    },
    "Integers": {
        "description": "a nested list of integers",
        **_array({"anyOf": [{"type": "integer"}, {"$ref": _REF + "Integers"}]}),
    },
    "VectorsResult": _obj(
        ["vsa", "dimension", "shape", "vectors"],
        vsa={"enum": list(VSA_NAMES)},
        dimension=_DIM,
        shape=_array(_int(0), description="batch shape"),
        vectors={"$ref": _REF + "Numbers"},
    ),
    "Memory": _obj(
        ["name", "vsa", "dimension", "size"],
        name=_NAME,
        vsa={"enum": list(VSA_NAMES)},
        dimension=_DIM,
        size=_int(0),
        keys=_STRINGS,
    ),
    "Classifier": _obj(
        ["name", "vsa", "dimension", "num_classes", "fitted", "samples_seen"],
        name=_NAME,
        vsa={"enum": list(VSA_NAMES)},
        dimension=_DIM,
        num_classes=_int(1, MAX_CLASSES),
        fitted={"type": "boolean"},
        samples_seen=_int(0),
    ),
    "Error": _obj(
        ["error", "detail", "correlation_id"],
        error={"type": "string", "description": "stable error code"},
        detail={"type": "string", "description": "what is wrong, starting with the field's name"},
        correlation_id={"type": "string"},
    ),
}

_VECTORS_RESULT = {"$ref": _REF + "VectorsResult"}
_MEMORY = {"$ref": _REF + "Memory"}
_CLASSIFIER = {"$ref": _REF + "Classifier"}
_DELETED = _obj(["deleted"], deleted=_NAME)

# The statuses each kind of route answers besides its success, and why.
_ERRORS = {
    "400": "a missing or invalid field (named at the start of detail), malformed JSON or npz, a wrong shape or "
    "dimension, an unknown VSA model, or a response or allocation over the worker's limits",
    "404": "no item memory or classifier of that name (in the state served: see X-HDC-Min-State-Version)",
    "408": "the body did not arrive within HDC_BODY_TIMEOUT_SECONDS",
    "409": "already exists / empty memory / classifier not fitted",
    "422": "idempotency_key_reused: the Idempotency-Key was used for another request (operation, path, body or "
    "query); nothing was written",
    "413": "body (or the unpacked npz) over its limit (HDC_MAX_JSON_BODY_BYTES for JSON, HDC_MAX_BODY_BYTES)",
    "415": "a Content-Type other than application/json or application/x-npz (application/x-npy where the "
    "operation takes it), or a Content-Encoding but identity",
    "500": "a bug (no internals in detail; the worker's log has it under the correlation id), or an injected "
    "fault (HDC_ADMIN_FAULTS)",
    "503": "a transient shortage: host or device memory (retry), or the worker failed to load its state",
}
_STATE_503 = (
    "retry after Retry-After seconds: state_unavailable (the state store did not answer; a write was not "
    "acknowledged), not_caught_up (this replica had not applied X-HDC-Min-State-Version within "
    "HDC_READ_WAIT_SECONDS), or a transient shortage of memory"
)
# The operations that read the state (X-HDC-Min-State-Version) and those that write it (Idempotency-Key); both
# answer X-HDC-State-Version.
STATE_READS = ("memory_list", "memory_get", "memory_query", "classifier_list", "classifier_get", "classifier_predict")
STATE_WRITES = (
    "memory_create",
    "memory_delete",
    "memory_add",
    "classifier_create",
    "classifier_delete",
    "classifier_fit",
)
_BODY = ("400", "408", "413", "415", "500", "503")  # a route that reads a body
_NAMED = ("404", "500", "503")  # a route on /{name} that reads none

# (method, path, operation id, summary, request schema or None, success status, response schema, error statuses)
_OPERATIONS: list[tuple[str, str, str, str, dict[str, Any] | None, int, dict[str, Any], tuple[str, ...]]] = [
    (
        "post",
        "/v1/hypervectors/random",
        "random",
        "Random hypervectors",
        _obj(
            ["num"],
            num={"oneOf": [_int(0), _array(_int(0), minItems=1, maxItems=MAX_BATCH_AXES)]},
            dimension=_DIM,
            vsa=_VSA,
            seed=_int(0),
        ),
        200,
        _VECTORS_RESULT,
        _BODY,
    ),
    (
        "post",
        "/v1/ops/bind",
        "bind",
        "Bind a with b (broadcasting); unbind=true unbinds",
        _obj(["a", "b"], a=_VECTORS, b=_VECTORS, vsa=_VSA, dimension=_DIM, unbind={"type": "boolean"}),
        200,
        _VECTORS_RESULT,
        _BODY,
    ),
    (
        "post",
        "/v1/ops/bundle",
        "bundle",
        "Bundle (multiset) over the last batch axis: (..., n, D) -> (..., D)",
        _obj(["vectors"], vectors=_VECTORS, vsa=_VSA, dimension=_DIM),
        200,
        _VECTORS_RESULT,
        _BODY,
    ),
    (
        "post",
        "/v1/ops/permute",
        "permute",
        "Permute `shifts` times (default 1; a cyclic shift for MAP, BSC, FHRR)",
        _obj(["vectors"], vectors=_VECTORS, vsa=_VSA, dimension=_DIM, shifts=_int()),
        200,
        _VECTORS_RESULT,
        _BODY,
    ),
    (
        "post",
        "/v1/ops/similarity",
        "similarity",
        "Similarity of each query with each of others (micro-batched)",
        _obj(
            ["queries", "others"],
            queries=_VECTORS,
            others=_VECTORS,
            vsa=_VSA,
            dimension=_DIM,
            metric={"enum": list(METRICS)},
        ),
        200,
        _obj(["metric", "similarities"], metric={"enum": list(METRICS)}, similarities=_NUMBERS),
        _BODY,
    ),
    (
        "post",
        "/v1/memories",
        "memory_create",
        "Create an item memory",
        _obj(["name"], name=_NAME, dimension=_DIM, vsa=_VSA),
        201,
        _MEMORY,
        (*_BODY, "409"),
    ),
    (
        "get",
        "/v1/memories",
        "memory_list",
        "List item memories",
        None,
        200,
        _obj(["memories"], memories=_array(_MEMORY)),
        ("500", "503"),
    ),
    ("get", "/v1/memories/{name}", "memory_get", "Describe an item memory", None, 200, _MEMORY, _NAMED),
    (
        "delete",
        "/v1/memories/{name}",
        "memory_delete",
        "Delete an item memory",
        None,
        200,
        _DELETED,
        _NAMED,
    ),
    (
        "post",
        "/v1/memories/{name}/items",
        "memory_add",
        "Add items (one hypervector or a list), optional keys",
        _obj(["vectors"], vectors=_VECTORS, keys=_STRINGS),
        200,
        _obj(["name", "ids", "size"], name=_NAME, ids=_array(_int(0)), size=_int(0)),
        (*_BODY, "404"),
    ),
    (
        "post",
        "/v1/memories/{name}/query",
        "memory_query",
        "Top-k most cosine-similar items per query (micro-batched)",
        _obj(["queries"], queries=_VECTORS, k=_int(1)),
        200,
        _obj(
            ["name", "k", "similarities", "indices"],
            name=_NAME,
            k=_int(1),
            similarities=_NUMBERS,
            indices=_INTEGERS,
            keys=_STRINGS,
        ),
        (*_BODY, "404", "409"),
    ),
    (
        "post",
        "/v1/classifiers",
        "classifier_create",
        "Create a centroid classifier",
        _obj(
            ["name", "num_classes"],
            name=_NAME,
            num_classes=_int(1, MAX_CLASSES),
            dimension=_DIM,
            vsa=_VSA,
            temperature={"type": "number", "minimum": MIN_TEMPERATURE},
        ),
        201,
        _CLASSIFIER,
        (*_BODY, "409"),
    ),
    (
        "get",
        "/v1/classifiers",
        "classifier_list",
        "List classifiers",
        None,
        200,
        _obj(["classifiers"], classifiers=_array(_CLASSIFIER)),
        ("500", "503"),
    ),
    ("get", "/v1/classifiers/{name}", "classifier_get", "Describe a classifier", None, 200, _CLASSIFIER, _NAMED),
    (
        "delete",
        "/v1/classifiers/{name}",
        "classifier_delete",
        "Delete a classifier",
        None,
        200,
        _DELETED,
        _NAMED,
    ),
    (
        "post",
        "/v1/classifiers/{name}/fit",
        "classifier_fit",
        "Fit (or partial_fit) on samples x with labels y",
        _obj(
            ["x", "y"],
            x=_VECTORS,
            y=_array(_int(0)),
            partial={"type": "boolean"},
            adaptive={"type": "boolean"},
            epochs=_int(1, MAX_EPOCHS),
            lr={"type": "number", "minimum": 0, "maximum": MAX_LEARNING_RATE},
        ),
        200,
        _CLASSIFIER,
        (*_BODY, "404"),
    ),
    (
        "post",
        "/v1/classifiers/{name}/predict",
        "classifier_predict",
        "Predict labels and class probabilities",
        _obj(["x"], x=_VECTORS),
        200,
        _obj(
            ["name", "labels", "probabilities"],
            name=_NAME,
            labels=_array(_int(0)),
            probabilities=_array(_array({"type": "number", "minimum": 0, "maximum": 1})),
        ),
        (*_BODY, "404", "409"),
    ),
]

# A valid request of each operation (dimension 4 or 8; memories and classifiers need their {name} to exist).
_EXAMPLES: dict[str, dict[str, Any]] = {
    "random": {"num": 2, "dimension": 8, "vsa": "BSC", "seed": 1},
    "bind": {"a": [1, -1, 1, 1, -1, 1, -1, -1], "b": [-1, -1, 1, 1, 1, -1, 1, -1], "vsa": "MAP"},
    "bundle": {"vectors": [[1, -1, 1, 1], [1, 1, -1, 1], [-1, 1, 1, 1]], "vsa": "MAP"},
    "permute": {"vectors": [0.5, -0.25, 0.125, 1.0], "vsa": "HRR", "shifts": 3},
    "similarity": {"queries": [[1, -1, 1, -1]], "others": [[1, -1, 1, -1], [1, 1, 1, 1]], "vsa": "MAP"},
    "memory_create": {"name": "colors", "dimension": 4, "vsa": "MAP"},
    "memory_add": {"vectors": [[1, -1, 1, -1]], "keys": ["red"]},
    "memory_query": {"queries": [[1, -1, 1, -1]], "k": 1},
    "classifier_create": {"name": "digits", "num_classes": 2, "dimension": 4, "vsa": "MAP"},
    "classifier_fit": {"x": [[1, -1, 1, -1], [1, 1, 1, 1]], "y": [0, 1]},
    "classifier_predict": {"x": [[1, -1, 1, -1]]},
}

_FAULT = _obj(
    [],
    latency_ms={"type": "number", "minimum": 0, "maximum": MAX_LATENCY_MS},
    error_ratio={"type": "number", "minimum": 0, "maximum": 1},
    operations=_array({"type": "string", "minLength": 1}),
)
_FAULT_ANSWER = {**_FAULT, "required": ["latency_ms", "error_ratio", "operations"]}
_FAULT_REQUEST = {**_FAULT, "additionalProperties": False}  # PUT refuses fields it does not know

_CORRELATION = {
    "X-Correlation-ID": {
        "description": "the request's correlation id (its own when plausible)",
        "required": True,
        "schema": {"type": "string"},
    }
}
_NPZ_BODY = {
    "schema": {"type": "string", "format": "binary"},
    "description": "numpy.savez archive, one array per vector field; scalar fields in the query string",
}
# The operations with one vector field, and that field: they also take it alone as one .npy body
# (application/x-npy, numpy.save), the cheapest body to decode.
NPY_FIELDS: dict[str, str] = {
    "memory_add": "vectors",
    "memory_query": "queries",
    "classifier_predict": "x",
    "bundle": "vectors",
    "permute": "vectors",
}


_VERSION_SCHEMA = {"type": "string", "pattern": "^[0-9]{1,19}$"}
_STATE_VERSION = {
    "description": "the state version the answer is from: a write's committed version, or the version a read "
    "was served from (send it as X-HDC-Min-State-Version to read your write on any replica)",
    "schema": _VERSION_SCHEMA,
}
_MIN_STATE_VERSION = {
    "name": MIN_STATE_VERSION_HEADER,
    "in": "header",
    "required": False,
    "description": "serve from at least this state version (an X-HDC-State-Version this client was answered): "
    "waits up to HDC_READ_WAIT_SECONDS, else 503 not_caught_up; a version never committed is a 400",
    "schema": _VERSION_SCHEMA,
}
_IDEMPOTENCY_KEY = {
    "name": IDEMPOTENCY_KEY_HEADER,
    "in": "header",
    "required": False,
    "description": "a retry with the same key and the same request answers the first answer without writing "
    "again (on any replica, for HDC_IDEMPOTENCY_TTL_SECONDS); the same key with another request is a 422",
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_RE.pattern}$"},
}


def _json(
    schema: dict[str, Any], description: str = "OK", *, npz: bool = False, state_version: bool | None = None
) -> dict[str, Any]:
    """A JSON (and npz) answer; `state_version`: True, it carries X-HDC-State-Version; False, it may."""
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if npz:
        content["application/x-npz"] = {"schema": {"type": "string", "format": "binary"}}
    headers: dict[str, Any] = dict(_CORRELATION)
    if state_version is not None:
        headers[STATE_VERSION_HEADER] = {**_STATE_VERSION, "required": state_version}
    return {"description": description, "headers": headers, "content": content}


def _operation(
    op_id: str,
    summary: str,
    request: dict[str, Any] | None,
    status: int,
    response: dict[str, Any],
    errors: tuple[str, ...],
    *,
    path_name: str | None = None,
    npz: bool = True,
) -> dict[str, Any]:
    error = {"$ref": _REF + "Error"}
    parameters: list[dict[str, Any]] = [
        {"name": "X-Correlation-ID", "in": "header", "required": False, "schema": {"type": "string"}}
    ]
    state: bool | None = None
    if op_id in STATE_READS or op_id in STATE_WRITES:
        state = True
        extra = ("400", "503") if op_id in STATE_READS else ("400", "422", "503")
        errors = tuple(sorted(set(errors) | set(extra)))
        parameters.append(_MIN_STATE_VERSION if op_id in STATE_READS else _IDEMPOTENCY_KEY)
    responses = {str(status): _json(response, npz=npz, state_version=state)}
    for code in errors:
        described = _STATE_503 if code == "503" and state else _ERRORS[code]
        responses[code] = _json(error, described, state_version=False if state else None)
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    }
    if path_name is not None:
        parameter = {"name": "name", "in": "path", "required": True, "schema": _NAME}
        if not op_id.endswith("_delete"):  # the examples' create requests make these names
            parameter["example"] = path_name
        operation["parameters"].append(parameter)
    if request is not None:
        body: dict[str, Any] = {"application/json": {"schema": request}}
        if op_id in _EXAMPLES:
            body["application/json"]["example"] = _EXAMPLES[op_id]
        if npz:
            body["application/x-npz"] = _NPZ_BODY
        if op_id in NPY_FIELDS:
            body["application/x-npy"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": f"numpy.save of the {NPY_FIELDS[op_id]!r} array alone; scalar fields in the query "
                "string",
            }
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def spec(settings: WorkerSettings | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, op_id, summary, request, status, response, errors in _OPERATIONS:
        example_name = _EXAMPLES[f"{op_id.split('_')[0]}_create"]["name"] if "{name}" in path else None
        paths.setdefault(path, {})[method] = _operation(
            op_id, summary, request, status, response, errors, path_name=example_name
        )
    anything = {"type": "object"}
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "summary": "HealthChecker.check_all (503 when unhealthy)",
            "responses": {"200": _json(anything), "503": _json(anything, "unhealthy")},
        }
    }
    paths["/livez"] = {
        "get": {
            "operationId": "livez",
            "summary": "Liveness: 200 while the process serves",
            "responses": {"200": _json(_obj(["status"], status={"const": "alive"}))},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: 200 after snapshots are loaded and kernels warmed up",
            "responses": {
                "200": _json(_obj(["ready"], ready={"const": True})),
                "503": _json(_obj(["ready", "reason"], ready={"const": False}, reason={"type": "string"}), "not ready"),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus exposition",
            "responses": {
                "200": {
                    "description": "OK",
                    "headers": _CORRELATION,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {"operationId": "openapi", "summary": "This document", "responses": {"200": _json(anything)}}
    }
    if settings is not None and settings.admin_faults:
        paths["/admin/faults"] = {
            "get": _operation("faults_get", "The active fault", None, 200, _FAULT_ANSWER, (), npz=False),
            "put": _operation(
                "faults_put",
                "Inject latency and errors into /v1 operations",
                _FAULT_REQUEST,
                200,
                _FAULT_ANSWER,
                ("400", "408", "413", "415"),
                npz=False,
            ),
            "delete": _operation("faults_delete", "Remove the fault", None, 200, _FAULT_ANSWER, (), npz=False),
        }
    info_desc = "HDC worker: hyperdimensional computing over HTTP. See docs/worker-api.md."
    if settings is not None:
        info_desc += (
            f" This worker: {settings.vsa}, dimension {settings.dimension}; body limits "
            f"{settings.max_json_body_bytes} bytes (JSON) and {settings.max_body_bytes} bytes (npz), "
            f"responses up to {settings.max_response_bytes} bytes."
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "hdc-worker", "version": "1", "description": info_desc},
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
