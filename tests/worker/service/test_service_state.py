"""The worker's wiring of the state store (service/state.py, service/entries.py, routes/named.py) in one process
through aiohttp's test client, on the SQLite backend: the consistency headers, idempotency keys, readiness,
/health and the state metrics. Two processes on PostgreSQL: test_shared_state.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import hd_compute.functional as F
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.service.app import WORKER, create_app
from hd_compute.service.codec import ApiError, hv_to_json
from hd_compute.service.config import SettingsError, WorkerSettings
from hd_compute.service.entries import NamedEntries
from hd_compute.service.payload import Payload
from hd_compute.service.state import check_name, request_digest

DIM = 64
VERSION = "X-HDC-State-Version"
MIN_VERSION = "X-HDC-Min-State-Version"


def settings_for(tmp_path, **kw) -> WorkerSettings:
    base = dict(dimension=DIM, device="cpu", state_dir=str(tmp_path / "state"), benchmark_enabled=False)
    return WorkerSettings(**{**base, **kw})


async def wait_ready(client: TestClient, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await client.get("/readyz")).status != 200:
        assert loop.time() < deadline, "worker never became ready"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def client(tmp_path):
    app = create_app(settings_for(tmp_path, read_wait_seconds=0.3), metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)
        yield c


def metric(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    value = client.server.app[WORKER].metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


@pytest.mark.asyncio
async def test_writes_and_reads_carry_the_state_version(client):
    resp = await client.post("/v1/memories", json={"name": "m"})
    assert resp.status == 201
    created = int(resp.headers[VERSION])
    items = F.random(3, DIM, "MAP", seed=1)
    resp = await client.post("/v1/memories/m/items", json={"vectors": hv_to_json(items)})
    assert resp.status == 200 and (await resp.json())["size"] == 3
    added = int(resp.headers[VERSION])
    assert added == created + 1
    for method, path, body in (
        ("GET", "/v1/memories", None),
        ("GET", "/v1/memories/m", None),
        ("POST", "/v1/memories/m/query", {"queries": hv_to_json(items[0]), "k": 1}),
    ):
        resp = await client.request(method, path, json=body, headers={MIN_VERSION: str(added)})
        assert resp.status == 200 and int(resp.headers[VERSION]) >= added, path
    resp = await client.get("/v1/memories/nope")  # a 404 says which state it is from too
    assert resp.status == 404 and int(resp.headers[VERSION]) >= added
    resp = await client.delete("/v1/memories/m")
    assert resp.status == 200 and int(resp.headers[VERSION]) == added + 1
    assert metric(client, "hdc_state_commit_seconds_count") == 3


@pytest.mark.asyncio
async def test_an_idempotent_create_is_answered_once(client):
    key = {"Idempotency-Key": "create:c-1"}
    first = await client.post("/v1/classifiers", json={"num_classes": 2, "name": "c"}, headers=key)
    again = await client.post("/v1/classifiers", json={"name": "c", "num_classes": 2}, headers=key)  # same object
    assert first.status == again.status == 201 and await first.json() == await again.json()
    assert first.headers[VERSION] == again.headers[VERSION] and again.headers["Idempotent-Replayed"] == "true"
    unkeyed = await client.post("/v1/classifiers", json={"name": "c", "num_classes": 2})
    assert unkeyed.status == 409 and (await unkeyed.json())["error"] == "already_exists"
    other = await client.post("/v1/classifiers", json={"name": "c", "num_classes": 3}, headers=key)
    body = await other.json()
    assert other.status == 422 and body["error"] == "idempotency_key_reused"
    assert body["detail"].startswith("Idempotency-Key")


@pytest.mark.asyncio
async def test_a_version_this_replica_has_not_applied_is_a_retryable_503(client):
    worker = client.server.app[WORKER]
    assert (await client.post("/v1/memories", json={"name": "m"})).status == 201
    # The fault: the kernel thread, where the follower applies the log, is held by a long job while another
    # writer (here the store itself, as another replica would) commits.
    release = threading.Event()
    busy = asyncio.ensure_future(worker.runner.run(release.wait, 30))
    committed = await asyncio.to_thread(worker.store.state_store.create_memory, "elsewhere", DIM)
    resp = await client.get("/v1/memories/elsewhere", headers={MIN_VERSION: str(committed.version)})
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "not_caught_up" and resp.headers["Retry-After"] == "1"
    assert int(resp.headers[VERSION]) == committed.version - 1
    release.set()
    await busy
    resp = await client.get("/v1/memories/elsewhere", headers={MIN_VERSION: str(committed.version)})
    assert resp.status == 200 and int(resp.headers[VERSION]) == committed.version
    assert metric(client, "hdc_state_store_errors_total", {"reason": "not_caught_up"}) == 1
    assert metric(client, "hdc_state_catch_up_wait_seconds_count") >= 1
    resp = await client.get("/v1/memories/elsewhere", headers={MIN_VERSION: str(committed.version + 5)})
    assert resp.status == 400 and (await resp.json())["error"] == "unknown_state_version"
    resp = await client.get("/v1/memories/m", headers={MIN_VERSION: "-1"})
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "invalid_header" and body["detail"].startswith(MIN_VERSION)


@pytest.mark.asyncio
async def test_health_and_metrics_report_the_state(client):
    assert (await client.post("/v1/memories", json={"name": "m"})).status == 201
    health = await (await client.get("/health")).json()
    assert {"status", "timestamp", "checks"} <= set(health)  # the existing fields, unchanged
    state = health["state"]
    assert (state["backend"], state["version"], state["lag_versions"], state["caught_up"]) == ("sqlite", 1, 0, True)
    text = await (await client.get("/metrics")).text()
    assert "hdc_state_version 1.0" in text and "hdc_state_lag_versions 0.0" in text
    assert "hdc_state_lag_seconds 0.0" in text and "hdc_state_store_reachable 1.0" in text
    catch_up = next(line for line in text.splitlines() if line.startswith("hdc_state_catch_up_seconds "))
    assert float(catch_up.split()[1]) > 0  # the start-up's catch-up, before ready


@pytest.mark.asyncio
async def test_a_second_worker_on_the_same_state_directory_is_refused(client, tmp_path):
    app = create_app(settings_for(tmp_path), metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as second:
        worker = second.server.app[WORKER]
        while worker.startup_error is None:
            await asyncio.sleep(0.05)
        resp = await second.get("/readyz")
        assert resp.status == 503 and "in use by another process" in (await resp.json())["reason"]
        assert (await second.get("/livez")).status == 200


def test_a_bad_database_url_names_the_variable():
    with pytest.raises(SettingsError, match="HDC_STATE_DATABASE_URL"):
        WorkerSettings.from_env(environ={"HDC_STATE_DATABASE_URL": "mysql://db/x"})
    settings = WorkerSettings.from_env(environ={"HDC_STATE_DATABASE_URL": "postgresql://u:secret@h/db"})
    assert "secret" not in repr(settings)


def test_the_state_backend_follows_the_database_url_unless_named():
    assert WorkerSettings.from_env(environ={}).state_backend == "local"
    url = {"HDC_STATE_DATABASE_URL": "postgresql://u:secret@h/db"}
    assert WorkerSettings.from_env(environ=url).state_backend == "postgres"
    assert WorkerSettings.from_env(environ={"HDC_STATE_BACKEND": "None"}).state_backend == "none"
    with pytest.raises(SettingsError, match="HDC_STATE_BACKEND=postgres needs HDC_STATE_DATABASE_URL"):
        WorkerSettings.from_env(environ={"HDC_STATE_BACKEND": "postgres"})
    with pytest.raises(SettingsError, match="read only with HDC_STATE_BACKEND=postgres, not local"):
        WorkerSettings.from_env(environ={**url, "HDC_STATE_BACKEND": "local"})
    with pytest.raises(SettingsError, match="HDC_STATE_BACKEND must be one of none, local, postgres"):
        WorkerSettings.from_env(environ={"HDC_STATE_BACKEND": "redis"})


@pytest.mark.asyncio
async def test_without_a_state_backend_memories_and_classifiers_answer_400_naming_spec_state(tmp_path):
    app = create_app(settings_for(tmp_path, state_backend="none"), metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)  # ready without a store
        for method, path, body in (
            ("POST", "/v1/memories", {"name": "m"}),
            ("GET", "/v1/memories", None),
            ("GET", "/v1/classifiers/c", None),
            ("DELETE", "/v1/memories/m", None),
            ("POST", "/v1/classifiers", {"name": "c", "num_classes": 2}),
        ):
            resp = await c.request(method, path, json=body)
            answer = await resp.json()
            assert resp.status == 400, (method, path, answer)
            assert answer["error"] == "state_disabled" and answer["detail"].startswith("spec.state: "), answer
        hv = hv_to_json(F.random(2, DIM, "MAP"))
        resp = await c.post("/v1/ops/similarity", json={"queries": hv, "others": hv})
        assert resp.status == 200, await resp.text()  # the stateless routes serve
        assert not (tmp_path / "state" / "state.db").exists()


def test_the_request_digest_is_of_the_request_as_decoded():
    digest = lambda fields, arrays=None, query="": request_digest("memory_add", "/p", query, Payload(fields, arrays))  # noqa: E731
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) != digest({"a": 1}, query="k=1")
    ones = np.ones((2, 4), dtype=np.int8)
    assert digest({}, {"v": ones}) != digest({}, {"v": ones.astype(np.int16)}) != digest({}, {"v": ones.reshape(4, 2)})
    assert request_digest("memory_add", "/p", "", None) != request_digest("memory_delete", "/p", "", None)


@pytest.mark.parametrize("name", ["", "../etc", ".hidden", "a/b", "x" * 129, None, 7])
def test_names_that_are_not_plain_names_are_refused(name):
    with pytest.raises(ValueError, match="name must be"):
        check_name(name)


def test_named_entries_answer_404_and_409_naming_the_field():
    store = {"c": "first"}

    def lookup(name: str) -> str:
        return store[name]

    classifiers: NamedEntries[str] = NamedEntries("classifier", "classifier", lookup, lambda: store)
    memories: NamedEntries[str] = NamedEntries("memory", "item memory", lookup, dict)
    with pytest.raises(ApiError) as missing:
        memories.get("m")
    assert (missing.value.status, missing.value.error, missing.value.field) == (404, "memory_not_found", "name")
    taken = classifiers.already_exists("c")
    assert (taken.status, taken.error, taken.field) == (409, "already_exists", "name")
    assert (
        "a classifier named 'c'" in taken.detail and "an item memory named 'm'" in memories.already_exists("m").detail
    )
    assert classifiers.get("c") == "first" and classifiers.sorted_items() == [("c", "first")] and "c" in classifiers
