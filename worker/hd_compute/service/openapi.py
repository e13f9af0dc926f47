"""The OpenAPI 3.1 description served at /openapi.json (docs/worker-api.md is the prose version)."""

from __future__ import annotations

from typing import Any

from .config import WorkerSettings

_VECTORS = {
    "description": "Hypervectors in dense form: a list of D numbers (MAP/BSC: +1/-1, HRR: reals, FHRR: [re, im] "
                   "pairs, so a list of D pairs), or a nested list for a batch. In an application/x-npz body: the "
                   "storage form (MAP int8/float32, BSC int64 packed words, HRR float32/64, FHRR complex64/128).",
    "type": "array",
    "items": {},
}
_VSA = {"type": "string", "enum": ["MAP", "BSC", "HRR", "FHRR"], "description": "VSA model (default: HDC_VSA)"}
_DIM = {"type": "integer", "minimum": 1, "description": "dimension (default: HDC_DIMENSION, or the data's)"}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_VECTORS_RESULT = _obj(["vsa", "dimension", "shape", "vectors"], vsa=_VSA, dimension=_DIM,
                       shape={"type": "array", "items": {"type": "integer"}, "description": "batch shape"},
                       vectors=_VECTORS)
_MEMORY = _obj(["name", "vsa", "dimension", "size"], name=_NAME, vsa=_VSA, dimension=_DIM, size={"type": "integer"},
               keys={"type": "array", "items": {"type": "string"}})
_CLASSIFIER = _obj(["name", "vsa", "dimension", "num_classes", "fitted", "samples_seen"], name=_NAME, vsa=_VSA,
                   dimension=_DIM, num_classes={"type": "integer"}, fitted={"type": "boolean"},
                   samples_seen={"type": "integer"})

# (method, path, operation id, summary, request schema or None, success status, response schema)
_OPERATIONS: list[tuple[str, str, str, str, dict | None, int, dict]] = [
    ("post", "/v1/hypervectors/random", "random", "Random hypervectors",
     _obj(["num"], num={"oneOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "integer"}}]},
          dimension=_DIM, vsa=_VSA, seed={"type": "integer", "minimum": 0}), 200, _VECTORS_RESULT),
    ("post", "/v1/ops/bind", "bind", "Bind a with b (broadcasting); unbind=true unbinds",
     _obj(["a", "b"], a=_VECTORS, b=_VECTORS, vsa=_VSA, unbind={"type": "boolean"}), 200, _VECTORS_RESULT),
    ("post", "/v1/ops/bundle", "bundle", "Bundle (multiset) over the last batch axis: (..., n, D) -> (..., D)",
     _obj(["vectors"], vectors=_VECTORS, vsa=_VSA), 200, _VECTORS_RESULT),
    ("post", "/v1/ops/permute", "permute", "Cyclic shift by `shifts` (default 1)",
     _obj(["vectors"], vectors=_VECTORS, vsa=_VSA, shifts={"type": "integer"}), 200, _VECTORS_RESULT),
    ("post", "/v1/ops/similarity", "similarity", "Similarity of each query with each of others (micro-batched)",
     _obj(["queries", "others"], queries=_VECTORS, others=_VECTORS, vsa=_VSA,
          metric={"type": "string", "enum": ["cosine", "dot", "hamming"]}), 200,
     _obj(["metric", "similarities"], metric={"type": "string"}, similarities={"type": "array", "items": {}})),
    ("post", "/v1/memories", "memory_create", "Create an item memory",
     _obj(["name"], name=_NAME, dimension=_DIM, vsa=_VSA), 201, _MEMORY),
    ("get", "/v1/memories", "memory_list", "List item memories", None, 200,
     _obj(["memories"], memories={"type": "array", "items": _MEMORY})),
    ("get", "/v1/memories/{name}", "memory_get", "Describe an item memory", None, 200, _MEMORY),
    ("delete", "/v1/memories/{name}", "memory_delete", "Delete an item memory and its snapshot", None, 200,
     _obj(["deleted"], deleted=_NAME)),
    ("post", "/v1/memories/{name}/items", "memory_add", "Add items (one hypervector or a list), optional keys",
     _obj(["vectors"], vectors=_VECTORS, keys={"type": "array", "items": {"type": "string"}}), 200,
     _obj(["name", "ids", "size"], name=_NAME, ids={"type": "array", "items": {"type": "integer"}}, size={"type": "integer"})),
    ("post", "/v1/memories/{name}/query", "memory_query", "Top-k most cosine-similar items per query (micro-batched)",
     _obj(["queries"], queries=_VECTORS, k={"type": "integer", "minimum": 1}), 200,
     _obj(["name", "k", "similarities", "indices"], name=_NAME, k={"type": "integer"},
          similarities={"type": "array", "items": {}}, indices={"type": "array", "items": {}},
          keys={"type": "array", "items": {"type": "string"}})),
    ("post", "/v1/classifiers", "classifier_create", "Create a centroid classifier",
     _obj(["name", "num_classes"], name=_NAME, num_classes={"type": "integer", "minimum": 1}, dimension=_DIM, vsa=_VSA,
          temperature={"type": "number"}), 201, _CLASSIFIER),
    ("get", "/v1/classifiers", "classifier_list", "List classifiers", None, 200,
     _obj(["classifiers"], classifiers={"type": "array", "items": _CLASSIFIER})),
    ("get", "/v1/classifiers/{name}", "classifier_get", "Describe a classifier", None, 200, _CLASSIFIER),
    ("delete", "/v1/classifiers/{name}", "classifier_delete", "Delete a classifier and its snapshot", None, 200,
     _obj(["deleted"], deleted=_NAME)),
    ("post", "/v1/classifiers/{name}/fit", "classifier_fit", "Fit (or partial_fit) on samples x with labels y",
     _obj(["x", "y"], x=_VECTORS, y={"type": "array", "items": {"type": "integer"}}, partial={"type": "boolean"},
          adaptive={"type": "boolean"}, epochs={"type": "integer"}, lr={"type": "number"}), 200, _CLASSIFIER),
    ("post", "/v1/classifiers/{name}/predict", "classifier_predict", "Predict labels and class probabilities",
     _obj(["x"], x=_VECTORS), 200,
     _obj(["name", "labels", "probabilities"], name=_NAME, labels={"type": "array", "items": {"type": "integer"}},
          probabilities={"type": "array", "items": {"type": "array", "items": {"type": "number"}}})),
]

_ERROR = _obj(["error", "detail", "correlation_id"], error={"type": "string", "description": "stable error code"},
              detail={"type": "string", "description": "what is wrong, starting with the field's name"},
              correlation_id={"type": "string"})

_ERROR_RESPONSES = {
    "400": "malformed JSON or npz, a missing or invalid field, wrong shape, dimension mismatch, unknown VSA model",
    "404": "unknown item memory or classifier",
    "409": "already exists / empty memory / classifier not fitted",
    "413": "body (or unpacked npz) over HDC_MAX_BODY_BYTES",
    "415": "unsupported Content-Type",
    "503": "CUDA out of memory (retry), or the worker failed to start",
}


def spec(settings: WorkerSettings | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for method, path, op_id, summary, request, status, response in _OPERATIONS:
        operation: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "parameters": [{"name": "X-Correlation-ID", "in": "header", "required": False, "schema": {"type": "string"}}],
            "responses": {str(status): {"description": "OK", "content": {
                "application/json": {"schema": response},
                "application/x-npz": {"schema": {"type": "string", "format": "binary"}}}}},
        }
        if "{name}" in path:
            operation["parameters"].append({"name": "name", "in": "path", "required": True, "schema": _NAME})
        if request is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": request},
                "application/x-npz": {"schema": {"type": "string", "format": "binary"},
                                      "description": "numpy.savez archive, one array per vector field; "
                                                     "scalar fields in the query string"}}}
        for code, description in _ERROR_RESPONSES.items():
            operation["responses"][code] = {"description": description, **error_ref}
        paths.setdefault(path, {})[method] = operation
    plain = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/health"] = {"get": {"operationId": "health", "summary": "HealthChecker.check_all (503 when unhealthy)",
                                "responses": {"200": plain, "503": plain}}}
    paths["/livez"] = {"get": {"operationId": "livez", "summary": "Liveness: 200 while the process serves",
                               "responses": {"200": plain}}}
    paths["/readyz"] = {"get": {"operationId": "readyz",
                                "summary": "Readiness: 200 after snapshots are loaded and kernels warmed up",
                                "responses": {"200": plain, "503": plain}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus exposition",
                                 "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document", "responses": {"200": plain}}}
    info_desc = "HDC worker: hyperdimensional computing over HTTP. See docs/worker-api.md."
    if settings is not None:
        info_desc += (f" This worker: {settings.vsa}, dimension {settings.dimension}, "
                      f"body limit {settings.max_body_bytes} bytes.")
    return {
        "openapi": "3.1.0",
        "info": {"title": "hdc-worker", "version": "1", "description": info_desc},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }
