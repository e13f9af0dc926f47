"""The worker API as the client knows it: one Route per operation, keyed by the OpenAPI operationId.

The clients build every request from this table (method, path, which fields travel as arrays, whether the
operation takes one array alone as application/x-npy, whether it writes or reads the shared state), and
tests/worker/client/test_client_contract.py holds it to a live worker's /openapi.json in both directions, so a
route or field added to one and not the other fails a test. The client imports nothing of hd_compute.service
(the two are independent siblings of the import contract): this table is the client's side of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, DELETE
    path: str  # with {name} where the route names a memory or classifier
    fields: tuple[str, ...] = ()  # the request body's fields (JSON), or the arrays and query parameters (binary)
    arrays: tuple[str, ...] = ()  # the fields that travel as arrays in a binary body
    npy: bool = False  # takes its one array alone as application/x-npy (the cheapest body to decode)
    write: bool = False  # changes memories or classifiers: sent with an Idempotency-Key, retried with it
    reads_state: bool = False  # reads memories or classifiers: sent with X-HDC-Min-State-Version
    answers_503: bool = False  # a 503 is an answer (unhealthy, not ready), not a transient failure
    client_method: str = ""  # the clients' method, when it is not the operation id


_VECTOR_OP = ("vsa", "dimension")

ROUTES: dict[str, Route] = {
    "random": Route("POST", "/v1/hypervectors/random", ("num", "dimension", "vsa", "seed")),
    "bind": Route("POST", "/v1/ops/bind", ("a", "b", *_VECTOR_OP, "unbind"), arrays=("a", "b")),
    "bundle": Route("POST", "/v1/ops/bundle", ("vectors", *_VECTOR_OP), arrays=("vectors",), npy=True),
    "permute": Route("POST", "/v1/ops/permute", ("vectors", *_VECTOR_OP, "shifts"), arrays=("vectors",), npy=True),
    "similarity": Route(
        "POST", "/v1/ops/similarity", ("queries", "others", *_VECTOR_OP, "metric"), arrays=("queries", "others")
    ),
    "memory_create": Route("POST", "/v1/memories", ("name", "dimension", "vsa"), write=True),
    "memory_list": Route("GET", "/v1/memories", reads_state=True),
    "memory_get": Route("GET", "/v1/memories/{name}", reads_state=True),
    "memory_delete": Route("DELETE", "/v1/memories/{name}", write=True),
    "memory_add": Route(
        "POST", "/v1/memories/{name}/items", ("vectors", "keys"), arrays=("vectors", "keys"), npy=True, write=True
    ),
    "memory_query": Route(
        "POST", "/v1/memories/{name}/query", ("queries", "k"), arrays=("queries",), npy=True, reads_state=True
    ),
    "classifier_create": Route(
        "POST", "/v1/classifiers", ("name", "num_classes", "dimension", "vsa", "temperature"), write=True
    ),
    "classifier_list": Route("GET", "/v1/classifiers", reads_state=True),
    "classifier_get": Route("GET", "/v1/classifiers/{name}", reads_state=True),
    "classifier_delete": Route("DELETE", "/v1/classifiers/{name}", write=True),
    "classifier_fit": Route(
        "POST",
        "/v1/classifiers/{name}/fit",
        ("x", "y", "partial", "adaptive", "epochs", "lr"),
        arrays=("x", "y"),
        write=True,
    ),
    "classifier_predict": Route(
        "POST", "/v1/classifiers/{name}/predict", ("x",), arrays=("x",), npy=True, reads_state=True
    ),
    "health": Route("GET", "/health", answers_503=True),
    "livez": Route("GET", "/livez", client_method="live"),
    "readyz": Route("GET", "/readyz", answers_503=True, client_method="ready"),
    "metrics": Route("GET", "/metrics"),
    "openapi": Route("GET", "/openapi.json"),
}


def method_name(operation: str) -> str:
    """The clients' method for `operation`."""
    return ROUTES[operation].client_method or operation
