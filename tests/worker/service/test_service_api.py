"""The worker's HTTP API through aiohttp's test client: every route against the functional API's own result,
the JSON and npz formats, micro-batching, readiness, bad input and CUDA out-of-memory handling."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid

import numpy as np
import pytest
import pytest_asyncio
import torch
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

import hd_compute.functional as F
from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.service import app as app_module
from hd_compute.service.app import WORKER, create_app
from hd_compute.service.codec import hv_to_json
from hd_compute.service.config import WorkerSettings
from hd_compute.structures import ItemMemory

DIM = 256
NPZ = "application/x-npz"
NPY = "application/x-npy"


def make_settings(tmp_path, **kw) -> WorkerSettings:
    base = dict(
        dimension=DIM,
        vsa="MAP",
        device="cpu",
        state_dir=str(tmp_path / "state"),
        batch_max_wait_ms=20,
        benchmark_enabled=False,
        max_body_bytes=1 << 20,
    )
    base.update(kw)
    return WorkerSettings(**base)


async def wait_ready(client: TestClient, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        resp = await client.get("/readyz")
        if resp.status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("worker never became ready")


@pytest_asyncio.fixture
async def client(tmp_path):
    app = create_app(make_settings(tmp_path), metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)
        yield c


def worker_of(client: TestClient):
    return client.server.app[WORKER]


def sample(client, name, labels=None):
    value = worker_of(client).metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


def rand(n, vsa="MAP", seed=0, dim=DIM):
    return F.random(n, dim, vsa, seed=seed)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_npz(body: bytes) -> dict:
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def dense_result(body: dict, vsa: str) -> Hypervectors:
    arr = torch.tensor(body["vectors"], dtype=torch.float32)
    if vsa == "FHRR":
        arr = torch.complex(arr[..., 0], arr[..., 1])
    return arr


# --- happy paths: each route equals the functional API ----------------------------------------------------


@pytest.mark.asyncio
async def test_random_matches_functional(client):
    resp = await client.post("/v1/hypervectors/random", json={"num": 3, "seed": 7})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["vsa"], body["dimension"], body["shape"]) == ("MAP", DIM, [3])
    assert body["vectors"] == hv_to_json(F.random(3, DIM, "MAP", seed=7))
    assert resp.headers["X-Correlation-ID"]


@pytest.mark.asyncio
@pytest.mark.parametrize("vsa", ["MAP", "BSC", "HRR", "FHRR"])
async def test_bind_bundle_permute_match_functional(client, vsa):
    a, b = rand(4, vsa, 1), rand(4, vsa, 2)
    resp = await client.post("/v1/ops/bind", json={"vsa": vsa, "a": hv_to_json(a), "b": hv_to_json(b)})
    assert resp.status == 200, await resp.text()
    assert torch.allclose(dense_result(await resp.json(), vsa), F.bind(a, b).dense(), atol=1e-5)

    resp = await client.post("/v1/ops/bundle", json={"vsa": vsa, "vectors": hv_to_json(a)})
    assert resp.status == 200, await resp.text()
    assert torch.allclose(dense_result(await resp.json(), vsa), F.multiset(a).dense(), atol=1e-4)

    resp = await client.post("/v1/ops/permute", json={"vsa": vsa, "vectors": hv_to_json(a), "shifts": 3})
    assert resp.status == 200, await resp.text()
    assert torch.allclose(dense_result(await resp.json(), vsa), F.permute(a, 3).dense(), atol=1e-5)


@pytest.mark.asyncio
async def test_similarity_matches_functional(client):
    q, others = rand(3, seed=3), rand(5, seed=4)
    for metric, fn in (("cosine", F.cosine_similarity), ("dot", F.dot_similarity), ("hamming", F.hamming_similarity)):
        resp = await client.post(
            "/v1/ops/similarity", json={"queries": hv_to_json(q), "others": hv_to_json(others), "metric": metric}
        )
        assert resp.status == 200, await resp.text()
        got = torch.tensor((await resp.json())["similarities"], dtype=torch.float64)
        assert torch.allclose(got, fn(q, others).double(), atol=1e-5), metric


@pytest.mark.asyncio
async def test_binary_npz_round_trip(client):
    # BSC travels as packed int64 words; the response keeps the storage form bit for bit.
    a, b = rand(6, "BSC", 5), rand(6, "BSC", 6)
    resp = await client.post(
        "/v1/ops/bind?vsa=BSC&dimension=256",
        data=npz_bytes(a=a.data.numpy(), b=b.data.numpy()),
        headers={"Content-Type": NPZ},
    )
    assert resp.status == 200, await resp.text()
    assert resp.content_type == NPZ
    out = read_npz(await resp.read())
    assert out["vectors"].dtype == np.int64 and out["vsa"] == "BSC" and int(out["dimension"]) == DIM
    assert torch.equal(torch.from_numpy(out["vectors"]), F.bind(a, b).data)
    # Big-endian input is read by its header; JSON in, npz out via Accept.
    x = rand(2, "HRR", 7)
    resp = await client.post(
        "/v1/ops/permute?vsa=HRR&shifts=2",
        data=npz_bytes(vectors=x.data.numpy().astype(">f4")),
        headers={"Content-Type": NPZ, "Accept": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    assert torch.allclose(torch.tensor((await resp.json())["vectors"]), F.permute(x, 2).dense())
    resp = await client.post(
        "/v1/hypervectors/random", json={"num": 2, "seed": 1, "vsa": "FHRR"}, headers={"Accept": NPZ}
    )
    out = read_npz(await resp.read())
    assert out["vectors"].dtype == np.complex64
    assert torch.equal(torch.from_numpy(out["vectors"]), F.random(2, DIM, "FHRR", seed=1).data)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.asyncio
async def test_a_single_vector_field_travels_as_one_npy_array(client):
    """application/x-npy: the operation's one vector field alone (openapi.NPY_FIELDS), scalars in the query
    string; the same answers as .npz, and refused where an operation has several fields."""
    items, queries = rand(20, seed=30), rand(3, seed=31)
    assert (await client.post("/v1/memories", json={"name": "npy"})).status == 201
    resp = await client.post(
        "/v1/memories/npy/items", data=npy_bytes(items.data.numpy()), headers={"Content-Type": NPY}
    )
    assert resp.status == 200, await resp.text()
    assert read_npz(await resp.read())["ids"].tolist() == list(range(20))
    answers = []
    for body, ctype in ((npy_bytes(queries.data.numpy()), NPY), (npz_bytes(queries=queries.data.numpy()), NPZ)):
        resp = await client.post("/v1/memories/npy/query?k=2", data=body, headers={"Content-Type": ctype})
        assert resp.status == 200, await resp.text()
        assert resp.content_type == NPZ  # a binary request gets a binary answer unless it asks for JSON
        answers.append(read_npz(await resp.read())["indices"].tolist())
    assert answers[0] == answers[1]
    expected = ItemMemory(DIM, "MAP")
    expected.add(items)
    assert answers[0] == expected.search(queries, k=2).indices.tolist()
    x = rand(2, "HRR", 32)
    resp = await client.post(
        "/v1/ops/permute?vsa=HRR&shifts=3",
        data=npy_bytes(x.data.numpy().astype(">f4")),
        headers={"Content-Type": NPY, "Accept": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    assert torch.allclose(torch.tensor((await resp.json())["vectors"]), F.permute(x, 3).dense())
    # bind has two vector fields: one array cannot say which it is
    resp = await client.post(
        "/v1/ops/bind?vsa=MAP", data=npy_bytes(items.data[:2].numpy()), headers={"Content-Type": NPY}
    )
    assert resp.status == 415, await resp.text()
    body = await resp.json()
    assert body["error"] == "unsupported_media_type" and "Content-Type" in body["detail"]
    # a damaged or dishonest array names the field it stands for
    resp = await client.post("/v1/memories/npy/query", data=b"\x93NUMPY\x01\x00garbage", headers={"Content-Type": NPY})
    assert resp.status == 400 and "queries" in (await resp.json())["detail"]
    resp = await client.post(
        "/v1/memories/npy/query", data=npy_bytes(queries.data.numpy())[:-5], headers={"Content-Type": NPY}
    )
    assert resp.status == 400 and "queries" in (await resp.json())["detail"]
    resp = await client.post(
        "/v1/memories/npy/query", data=npy_bytes(np.array(["a", "b"])), headers={"Content-Type": NPY}
    )
    assert resp.status == 400 and "queries" in (await resp.json())["detail"]


@pytest.mark.asyncio
async def test_item_memory_lifecycle(client):
    items, queries = rand(20, seed=10), rand(4, seed=11)
    resp = await client.post("/v1/memories", json={"name": "m1"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json()) == {"name": "m1", "vsa": "MAP", "dimension": DIM, "size": 0}
    assert (await client.post("/v1/memories", json={"name": "m1"})).status == 409
    resp = await client.post(
        "/v1/memories/m1/items", json={"vectors": hv_to_json(items), "keys": [f"k{i}" for i in range(20)]}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ids"] == list(range(20))
    resp = await client.post("/v1/memories/m1/query", json={"queries": hv_to_json(queries), "k": 3})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    expected = ItemMemory(DIM, "MAP")
    expected.add(items)
    want = expected.search(queries, k=3)
    assert body["indices"] == want.indices.tolist()
    assert torch.allclose(torch.tensor(body["similarities"]), want.similarities, atol=1e-6)
    assert body["keys"] == [f"k{i}" for i in want.indices.reshape(-1).tolist()]
    # a query for a stored item finds it, via npz too
    resp = await client.post(
        "/v1/memories/m1/query?k=1", data=npz_bytes(queries=items.data[5:6].numpy()), headers={"Content-Type": NPZ}
    )
    assert read_npz(await resp.read())["indices"].tolist() == [[5]]
    assert (await (await client.get("/v1/memories/m1")).json())["size"] == 20
    assert [m["name"] for m in (await (await client.get("/v1/memories")).json())["memories"]] == ["m1"]
    assert (await client.delete("/v1/memories/m1")).status == 200
    resp = await client.get("/v1/memories/m1")
    assert resp.status == 404 and (await resp.json())["error"] == "memory_not_found"


@pytest.mark.asyncio
async def test_classifier_fit_predict_matches_centroid(client):
    protos = rand(3, seed=20)
    noise = [F.random(1, DIM, seed=30 + i) for i in range(12)]
    x = Hypervectors(
        torch.stack(
            [
                torch.where(
                    torch.rand(DIM, generator=torch.Generator().manual_seed(i)) < 0.2,
                    noise[i].data[0],
                    protos.data[i % 3],
                )
                for i in range(12)
            ]
        ),
        "MAP",
        DIM,
    )
    y = [i % 3 for i in range(12)]
    assert (await client.post("/v1/classifiers", json={"name": "c", "num_classes": 3})).status == 201
    resp = await client.post("/v1/classifiers/c/predict", json={"x": hv_to_json(x)})
    assert resp.status == 409 and (await resp.json())["error"] == "not_fitted"
    resp = await client.post("/v1/classifiers/c/fit", json={"x": hv_to_json(x), "y": y})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["fitted"] is True
    resp = await client.post("/v1/classifiers/c/predict", json={"x": hv_to_json(x)})
    body = await resp.json()
    model = Centroid(3, DIM).fit(x, torch.tensor(y))
    assert body["labels"] == model.predict(x).tolist() == y
    assert torch.allclose(torch.tensor(body["probabilities"]), model.predict_proba(x), atol=1e-5)


@pytest.mark.asyncio
async def test_probes_health_metrics_openapi(client):
    assert (await (await client.get("/livez")).json()) == {"status": "alive"}
    resp = await client.get("/health")
    body = await resp.json()
    assert set(body) == {"status", "timestamp", "checks", "state"} and resp.status in (200, 503)
    await client.post("/v1/hypervectors/random", json={"num": 1})
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and 'hdc_operation_total{operation="random"}' in text
    spec = await (await client.get("/openapi.json")).json()
    for path in (
        "/v1/hypervectors/random",
        "/v1/ops/bind",
        "/v1/ops/bundle",
        "/v1/ops/permute",
        "/v1/ops/similarity",
        "/v1/memories",
        "/v1/memories/{name}/items",
        "/v1/memories/{name}/query",
        "/v1/classifiers",
        "/v1/classifiers/{name}/fit",
        "/v1/classifiers/{name}/predict",
        "/health",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    resp = await client.get("/livez", headers={"X-Correlation-ID": "abc-123"})
    assert resp.headers["X-Correlation-ID"] == "abc-123"
    generated = {(await client.get("/livez")).headers["X-Correlation-ID"] for _ in range(20)}
    assert len(generated) == 20
    for cid in generated:  # a random UUID (version 4, RFC 4122 variant) in its canonical form
        parsed = uuid.UUID(cid)
        assert str(parsed) == cid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.asyncio
async def test_an_idle_worker_exports_its_operation_series_at_zero(client):
    """Before any request every operation's counters exist at 0: an HPA on their per-pod rate gets 0 for a fresh
    or idle replica instead of "metric not found" (which blocks scaling down)."""
    from prometheus_client.parser import text_string_to_metric_families

    from hd_compute.service.app import OPERATIONS

    text = await (await client.get("/metrics")).text()
    samples = {
        (s.name, s.labels.get("operation")): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert {"random", "memory_query", "classifier_predict"} <= set(OPERATIONS)
    for op in OPERATIONS:
        assert samples[("hdc_hypervector_operations_total", op)] == 0, op
        assert samples[("hdc_operation_total", op)] == 0, op
        assert samples[("hdc_operation_duration_seconds_count", op)] == 0, op


# --- micro-batching ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_similarity_requests_are_coalesced(client):
    worker = worker_of(client)
    others = rand(50, seed=40)
    queries = [rand(2, seed=100 + i) for i in range(16)]
    calls_before = worker.batcher.kernel_calls
    count_before = sample(client, "hdc_batch_size_distribution_count")
    sum_before = sample(client, "hdc_batch_size_distribution_sum")
    responses = await asyncio.gather(
        *[
            client.post("/v1/ops/similarity", json={"queries": hv_to_json(q), "others": hv_to_json(others)})
            for q in queries
        ]
    )
    for q, resp in zip(queries, responses, strict=True):
        assert resp.status == 200
        got = torch.tensor((await resp.json())["similarities"])
        assert torch.allclose(got, F.cosine_similarity(q, others), atol=1e-6)
    kernel_calls = worker.batcher.kernel_calls - calls_before
    observed = sample(client, "hdc_batch_size_distribution_count") - count_before
    assert observed == kernel_calls < 16
    assert sample(client, "hdc_batch_size_distribution_sum") - sum_before == 32  # every query row, once


@pytest.mark.asyncio
async def test_concurrent_memory_queries_are_coalesced(client):
    worker = worker_of(client)
    items = rand(30, seed=50)
    await client.post("/v1/memories", json={"name": "mq"})
    await client.post("/v1/memories/mq/items", json={"vectors": hv_to_json(items)})
    before = worker.batcher.kernel_calls
    ks = [1 + i % 4 for i in range(12)]
    responses = await asyncio.gather(
        *[
            client.post("/v1/memories/mq/query", json={"queries": hv_to_json(items[i]), "k": k})
            for i, k in enumerate(ks)
        ]
    )
    for i, (k, resp) in enumerate(zip(ks, responses, strict=True)):
        body = await resp.json()
        assert resp.status == 200 and len(body["indices"]) == k and body["indices"][0] == i
    assert worker.batcher.kernel_calls - before < 12


# --- readiness -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_readyz_false_until_warmed_up(tmp_path, monkeypatch):
    release = threading.Event()
    original = app_module.Worker.warm_up

    def slow_warm_up(self):
        release.wait(30)
        original(self)

    monkeypatch.setattr(app_module.Worker, "warm_up", slow_warm_up)
    app = create_app(make_settings(tmp_path), metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/readyz")
        assert resp.status == 503 and (await resp.json())["ready"] is False
        assert (await c.get("/livez")).status == 200
        release.set()
        await wait_ready(c)


# --- bad input ---------------------------------------------------------------------------------------------------


BAD_REQUESTS = [
    # (path, body (bytes or json), status, error, field named in detail)
    ("/v1/ops/bind", b'{"a": [1, -1', 400, "malformed_json", "body"),
    ("/v1/ops/bind", {"a": [[1, -1, 1], [1, -1]], "b": [1, 1, 1]}, 400, "invalid_shape", "a"),
    ("/v1/ops/bind", {"a": [1, -1] * 128, "b": [1, -1] * 64}, 400, "dimension_mismatch", "b"),
    ("/v1/ops/bind", {"a": [1, -1] * 128}, 400, "missing_field", "b"),
    ("/v1/ops/bind", {"a": [1, 0] * 128, "b": [1, -1] * 128}, 400, "invalid_field", "a"),
    ("/v1/ops/bind", {"vsa": "XYZ", "a": [1], "b": [1]}, 400, "unknown_vsa", "vsa"),
    (
        "/v1/ops/similarity",
        {"queries": [1, -1] * 128, "others": [1, -1] * 128, "metric": "l2"},
        400,
        "invalid_field",
        "metric",
    ),
    ("/v1/memories/nope/query", {"queries": [1, -1] * 128}, 404, "memory_not_found", "name"),
    ("/v1/classifiers/nope/predict", {"x": [[1, -1] * 128]}, 404, "classifier_not_found", "name"),
    ("/v1/hypervectors/random", {"num": "three"}, 400, "invalid_field", "num"),
    ("/v1/memories", {"name": "../etc"}, 400, "invalid_field", "name"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("path, body, status, error, field", BAD_REQUESTS)
async def test_bad_input_is_a_4xx_naming_the_field(client, path, body, status, error, field):
    operation = {
        "/v1/ops/bind": "bind",
        "/v1/ops/similarity": "similarity",
        "/v1/memories/nope/query": "memory_query",
        "/v1/classifiers/nope/predict": "classifier_predict",
        "/v1/hypervectors/random": "random",
        "/v1/memories": "memory_create",
    }[path]
    labels = {"operation": operation, "error": error}
    before = sample(client, "hdc_operation_errors_total", labels)
    if isinstance(body, bytes):
        kwargs = {"data": body, "headers": {"Content-Type": "application/json", "X-Correlation-ID": "cid-1"}}
    else:
        kwargs = {"json": body, "headers": {"X-Correlation-ID": "cid-1"}}
    good_payload = {"a": hv_to_json(rand(1, seed=1)), "b": hv_to_json(rand(1, seed=2))}
    bad, good = await asyncio.gather(client.post(path, **kwargs), client.post("/v1/ops/bind", json=good_payload))
    assert bad.status == status, await bad.text()
    payload = await bad.json()
    assert set(payload) == {"error", "detail", "correlation_id"}
    assert payload["error"] == error and payload["correlation_id"] == "cid-1"
    assert payload["detail"].startswith(field), payload["detail"]
    assert sample(client, "hdc_operation_errors_total", labels) == before + 1
    assert good.status == 200  # the concurrent good request is unaffected


@pytest.mark.asyncio
async def test_body_over_the_limit_is_413(client):
    before = sample(client, "hdc_operation_errors_total", {"operation": "bundle", "error": "body_too_large"})
    big = json.dumps({"vectors": [[1] * DIM] * 3000}).encode()  # > 1 MiB
    resp = await client.post("/v1/ops/bundle", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    body = await resp.json()
    assert body["error"] == "body_too_large" and body["detail"].startswith("body")
    labels = {"operation": "bundle", "error": "body_too_large"}
    assert sample(client, "hdc_operation_errors_total", labels) == before + 1
    assert (await client.post("/v1/hypervectors/random", json={"num": 1})).status == 200


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cuda_out_of_memory_is_503_and_the_worker_keeps_serving(client, monkeypatch):
    from structlog.testing import capture_logs

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 MiB")

    monkeypatch.setattr(F, "bind", out_of_memory)
    a, b = rand(2, seed=1), rand(2, seed=2)
    with capture_logs() as logs:
        resp = await client.post("/v1/ops/bind", json={"a": hv_to_json(a), "b": hv_to_json(b)})
    assert resp.status == 503
    assert (await resp.json())["error"] == "cuda_out_of_memory"
    oom = [e for e in logs if e["event"] == "cuda_memory_allocation_failed"]
    assert oom and oom[0]["error_code"] == "CUDA_OUT_OF_MEMORY" and oom[0]["operation"] == "bind"
    assert sample(client, "hdc_operation_errors_total", {"operation": "bind", "error": "cuda_out_of_memory"}) == 1
    assert (await client.post("/v1/ops/bundle", json={"vectors": hv_to_json(a)})).status == 200
    monkeypatch.undo()
    resp = await client.post("/v1/ops/bind", json={"a": hv_to_json(a), "b": hv_to_json(b)})
    assert resp.status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "failure, status, error",
    [
        (MemoryError(), 503, "insufficient_memory"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                "allocate 1125899906842624 bytes"
            ),
            503,
            "insufficient_memory",
        ),
        (RuntimeError("secret internals of a bug"), 500, "internal_error"),
    ],
)
async def test_host_out_of_memory_is_503_a_bug_500_without_internals(client, monkeypatch, failure, status, error):
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(F, "bind", fail)
    a, b = rand(2, seed=1), rand(2, seed=2)
    resp = await client.post("/v1/ops/bind", json={"a": hv_to_json(a), "b": hv_to_json(b)})
    body = await resp.json()
    assert (resp.status, body["error"]) == (status, error)
    assert body["detail"].startswith("bind:") and "alloc_cpu" not in body["detail"] and "secret" not in body["detail"]
    monkeypatch.undo()
    assert (await client.post("/v1/ops/bind", json={"a": hv_to_json(a), "b": hv_to_json(b)})).status == 200


@pytest.mark.asyncio
async def test_large_bodies_and_responses_are_handled_off_the_event_loop(client, monkeypatch):
    from hd_compute.service import codec, payload, responses

    threads: dict[str, list[str]] = {"read": [], "encode": []}
    read_npz, encode = payload.read_npz, responses._encode

    def spy_read(*args):
        threads["read"].append(threading.current_thread().name)
        return read_npz(*args)

    def spy_encode(*args):
        threads["encode"].append(threading.current_thread().name)
        return encode(*args)

    monkeypatch.setattr(payload, "read_npz", spy_read)
    monkeypatch.setattr(responses, "_encode", spy_encode)
    loop_thread = threading.current_thread().name
    rows = codec.INLINE_CODEC_MAX_BYTES // DIM + 1  # int8: one byte per element
    for n in (1, rows):
        data = rand(n).data.numpy()
        resp = await client.post(
            "/v1/ops/bundle?vsa=MAP",
            data=npz_bytes(vectors=data[None]),
            headers={"Content-Type": NPZ, "Accept": "application/json"},
        )
        assert resp.status == 200, await resp.text()
    assert threads["read"][0] == loop_thread and threads["read"][1] != loop_thread
    resp = await client.post("/v1/hypervectors/random", json={"num": codec.INLINE_CODEC_MAX_BYTES // (3 * DIM) + 1})
    assert resp.status == 200
    assert threads["encode"][:2] == [loop_thread, loop_thread] and threads["encode"][2] != loop_thread


@pytest.mark.asyncio
async def test_bodies_held_at_once_are_bounded_and_released_with_the_answer(tmp_path):
    """HDC_MAX_INFLIGHT_BODY_BYTES: a body that would pass it while another is held is a 503 to retry; once the
    first is answered its bytes are free again."""
    settings = make_settings(
        tmp_path, max_body_bytes=1 << 20, max_json_body_bytes=1 << 20, max_inflight_body_bytes=1 << 20
    )
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    rows = hv_to_json(rand(256))  # about 190 KB of JSON per copy
    first_half = json.dumps({"vectors": rows * 3})[:-1].encode()  # all but the closing brace
    go_on = asyncio.Event()

    async def slow_body():
        yield first_half
        await go_on.wait()
        yield b"}"

    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)
        held = asyncio.ensure_future(
            c.post("/v1/ops/bundle", data=slow_body(), headers={"Content-Type": "application/json"})
        )
        budget = c.server.app[app_module.BODIES]
        for _ in range(200):  # until the server holds the first body
            if budget.held >= len(first_half):
                break
            await asyncio.sleep(0.01)
        assert budget.held >= len(first_half)
        resp = await c.post("/v1/ops/bundle", json={"vectors": rows * 3})
        body = await resp.json()
        assert (resp.status, body["error"]) == (503, "insufficient_memory") and body["detail"].startswith("body:")
        go_on.set()
        assert (await held).status == 200
        assert budget.held == 0
        assert (await c.post("/v1/ops/bundle", json={"vectors": rows * 3})).status == 200


@pytest.mark.asyncio
@pytest.mark.slow
async def test_valid_requests_of_random_models_shapes_and_formats_never_fail_the_server(tmp_path):
    """What schemathesis cannot generate (its positive data are refused: ±1 values, matching dimensions): valid
    requests of every model, odd dimensions, empty and broadcast batch shapes, JSON and .npz both ways. Each is
    answered 200 or a 4xx, never a 5xx."""
    import random as random_module

    settings = make_settings(tmp_path, max_response_bytes=1 << 20, max_allocation_bytes=1 << 24)
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    rng = random_module.Random(18)
    statuses: dict[int, int] = {}
    async with TestClient(TestServer(app)) as c:
        await wait_ready(c)
        for vsa in ("MAP", "BSC", "HRR", "FHRR"):
            await c.post("/v1/memories", json={"name": f"m{vsa}", "dimension": DIM, "vsa": vsa})
            await c.post("/v1/classifiers", json={"name": f"c{vsa}", "num_classes": 3, "dimension": DIM, "vsa": vsa})
        for i in range(400):
            vsa = rng.choice(("MAP", "BSC", "HRR", "FHRR"))
            op = rng.choice(("bind", "bundle", "permute", "similarity", "add", "query", "fit", "predict"))
            named = op in ("add", "query", "fit", "predict")
            dim = DIM if named else rng.choice((1, 2, 63, 64, 65, 130))
            shape = tuple(rng.choice((0, 1, 2, 3)) for _ in range(rng.choice((0, 1, 2, 3))))
            other = tuple(rng.choice((1, n)) for n in shape) if rng.random() < 0.5 else (rng.choice((0, 1, 2)),)
            a, b = F.random(shape, dim, vsa, seed=i), F.random(other, dim, vsa, seed=i + 1)
            vectors = {
                "bind": {"a": a, "b": b},
                "bundle": {"vectors": a},
                "permute": {"vectors": a},
                "similarity": {"queries": a, "others": b},
                "add": {"vectors": a},
                "query": {"queries": a},
                "fit": {"x": a},
                "predict": {"x": a},
            }[op]
            path = {
                "add": f"/v1/memories/m{vsa}/items",
                "query": f"/v1/memories/m{vsa}/query",
                "fit": f"/v1/classifiers/c{vsa}/fit",
                "predict": f"/v1/classifiers/c{vsa}/predict",
            }.get(op, "")
            path = path or ("/v1/ops/" + op)
            scalars = {"shifts": rng.choice((1, -1, 2**63 - 1, -(2**63)))} if op == "permute" else {}
            if op == "query":
                scalars["k"] = rng.choice((1, 2))
            if op == "fit":
                scalars["y"] = [rng.randrange(3) for _ in range(a.shape[0] if len(a.shape) else 1)]
            if rng.random() < 0.5:  # .npz, scalars in the query string (labels as an array)
                arrays = {k: v.data.numpy() for k, v in vectors.items()}
                if "y" in scalars:
                    arrays["y"] = np.array(scalars.pop("y"), dtype=np.int64)
                query = "&".join(f"{k}={v}" for k, v in {"vsa": vsa, "dimension": dim, **scalars}.items())
                accept = rng.choice(("application/json", NPZ))
                resp = await c.post(
                    f"{path}?{query}", data=npz_bytes(**arrays), headers={"Content-Type": NPZ, "Accept": accept}
                )
            else:
                body = {k: hv_to_json(v) for k, v in vectors.items()} | scalars | {"vsa": vsa}
                resp = await c.post(path, json=body)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status < 500, (op, vsa, dim, shape, other, await resp.text())
    assert statuses.get(200, 0) > 100, statuses  # most of them computed something
