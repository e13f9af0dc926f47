"""The client's route table (hd_compute.client.routes) and a live worker's /openapi.json describe the same API:
a route, a request field or a body type in one and not the other fails here, and so does a route without its
method on both clients or a method that does not take the route's fields."""

from __future__ import annotations

import copy
import inspect

import pytest

from hd_compute.client import AsyncClient, Client
from hd_compute.client.routes import ROUTES, method_name

# Routes the client leaves out on purpose: fault injection exists only on test workers (HDC_ADMIN_FAULTS).
NOT_FOR_CLIENTS = ("/admin/",)


@pytest.fixture(scope="module")
def document(url: str) -> dict:
    with Client(url) as client:
        return client.openapi()


def documented_operations(document: dict) -> dict[str, tuple[str, str, dict]]:
    """operationId -> (METHOD, path, operation) of every route a client should have."""
    found = {}
    for path, methods in document["paths"].items():
        if path.startswith(NOT_FOR_CLIENTS):
            continue
        for method, operation in methods.items():
            found[operation["operationId"]] = (method.upper(), path, operation)
    return found


def mismatches(document: dict) -> list[str]:
    """Every disagreement between the document and the client's route table."""
    documented = documented_operations(document)
    problems = [f"{op}: only in /openapi.json" for op in sorted(set(documented) - set(ROUTES))]
    problems += [f"{op}: only in the client" for op in sorted(set(ROUTES) - set(documented))]
    for operation in sorted(set(documented) & set(ROUTES)):
        method, path, spec = documented[operation]
        route = ROUTES[operation]
        if (route.method, route.path) != (method, path):
            problems.append(f"{operation}: {method} {path} documented, {route.method} {route.path} in the client")
        body = spec.get("requestBody", {}).get("content", {})
        fields = set(body.get("application/json", {}).get("schema", {}).get("properties", {}))
        if fields != set(route.fields):
            problems.append(
                f"{operation}: fields only documented {sorted(fields - set(route.fields))}, only in the "
                f"client {sorted(set(route.fields) - fields)}"
            )
        if ("application/x-npy" in body) != route.npy:
            problems.append(f"{operation}: application/x-npy documented: {'application/x-npy' in body}")
        if route.arrays and ("application/x-npz" not in body or not set(route.arrays) <= fields):
            problems.append(f"{operation}: arrays {route.arrays} need an application/x-npz body with those fields")
    return problems


def test_the_client_and_the_workers_document_agree(document):
    assert mismatches(document) == []


def test_the_comparison_catches_a_route_or_field_in_one_only(document):
    changed = copy.deepcopy(document)
    schema = changed["paths"]["/v1/ops/bind"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"]["scale"] = {"type": "number"}
    del changed["paths"]["/livez"]
    changed["paths"]["/v1/ops/rotate"] = {"post": {"operationId": "rotate"}}
    assert mismatches(changed) == [
        "rotate: only in /openapi.json",
        "livez: only in the client",
        "bind: fields only documented ['scale'], only in the client []",
    ]


def test_both_clients_have_a_method_per_route_taking_its_fields():
    for operation, route in ROUTES.items():
        for cls in (Client, AsyncClient):
            method = getattr(cls, method_name(operation), None)
            assert callable(method), f"{cls.__name__} has no method for {operation}"
            parameters = inspect.signature(method).parameters
            named = {p for p, v in parameters.items() if v.kind is not inspect.Parameter.VAR_KEYWORD} - {"self"}
            path_name = {"name"} if "{name}" in route.path else set()
            assert named == set(route.fields) | path_name, f"{cls.__name__}.{method_name(operation)}"
