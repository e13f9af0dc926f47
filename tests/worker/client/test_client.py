"""hd_compute.client against a real worker process: every route through both clients with the engine's own
results, typed errors, retries (through a resetting proxy), timeouts (the worker's fault injection), and the
headers each call carries (correlation, trace context, idempotency key, read-your-writes version, credentials)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import numpy as np
import pytest
import torch
from client_proxy import Faults, FaultyProxy
from conftest import DIMENSION

import hd_compute.functional as F
from hd_compute.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Health,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    Unavailable,
    UnsupportedMediaType,
    WorkerTimeout,
    WorkerUnreachable,
)
from hd_compute.hypervectors import Hypervectors
from hd_compute.models import Centroid
from hd_compute.structures import ItemMemory

FAST_RETRY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.05)


class Blocking:
    """An AsyncClient driven from synchronous test code: each method runs to completion on one event loop, so a
    scenario is written once for both clients."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not callable(method):
            return method
        return lambda *args, **kwargs: self.loop.run_until_complete(method(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def make_client(kind: str, url: str, **options: Any) -> Any:
    return Client(url, **options) if kind == "sync" else Blocking(AsyncClient(url, **options))


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(kind: str, url: str):
    c = make_client(kind, url)
    yield c
    c.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- every route equals the engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("vsa", ["MAP", "BSC", "HRR", "FHRR"])
def test_vector_operations_equal_the_engine(client, vsa):
    a, b = F.random(4, DIMENSION, vsa, seed=1), F.random(4, DIMENSION, vsa, seed=2)
    assert client.random(4, vsa=vsa, seed=1).equal(a)
    assert client.random([2, 3], dimension=64, vsa=vsa, seed=3).equal(F.random((2, 3), 64, vsa, seed=3))
    bound = client.bind(a, b)
    assert bound.vsa.name == vsa and bound.dim == DIMENSION
    assert torch.allclose(bound.data, F.bind(a, b).data, atol=1e-5)
    assert torch.allclose(client.bind(a, b, unbind=True).data, F.unbind(a, b).data, atol=1e-5)
    assert torch.allclose(client.bundle(a).data, F.multiset(a).data, atol=1e-4)
    assert client.permute(a, shifts=3).equal(F.permute(a, 3))
    for metric, fn in (("cosine", F.cosine_similarity), ("dot", F.dot_similarity)):
        got = client.similarity(a[:2], b, metric=metric)
        assert got.metric == metric
        assert torch.allclose(got.similarities.double(), fn(a[:2], b).double(), atol=1e-4)


def test_arrays_and_tensors_travel_in_their_storage_form(client):
    a, b = F.random(3, DIMENSION, "BSC", seed=4), F.random(3, DIMENSION, "BSC", seed=5)
    # raw storage (int64 words) says neither the model nor the dimension: the caller does
    from_numpy = client.bind(a.data.numpy(), b.data.numpy(), vsa="BSC", dimension=DIMENSION)
    assert from_numpy.equal(F.bind(a, b))
    assert client.bundle(a.data, vsa="BSC", dimension=DIMENSION).equal(F.multiset(a))
    with pytest.raises(TypeError, match="vectors must be hd.Hypervectors, a torch.Tensor or a numpy.ndarray"):
        client.bundle([[1, -1]], vsa="MAP")


def test_memory_routes_equal_the_item_memory(client):
    name = unique("colors")
    items = F.random(20, DIMENSION, "MAP", seed=6)
    keys = [f"item-{i}" for i in range(20)]
    created = client.memory_create(name, vsa="MAP")
    assert (created.name, created.vsa, created.dimension, created.size) == (name, "MAP", DIMENSION, 0)
    added = client.memory_add(name, items[:15], keys=keys[:15])
    assert added.ids.tolist() == list(range(15)) and added.size == 15
    added = client.memory_add(name, items[15:], keys=keys[15:])
    assert added.ids.tolist() == list(range(15, 20)) and added.size == 20

    reference = ItemMemory(DIMENSION, "MAP")
    reference.add(items)
    queries = F.random(5, DIMENSION, "MAP", seed=7)
    got = client.memory_query(name, queries, k=3)
    expected = reference.search(queries, k=3)
    assert torch.equal(got.indices, expected.indices)
    assert torch.allclose(got.similarities, expected.similarities.float(), atol=1e-6)
    assert got.k == 3 and got.keys == [keys[i] for i in expected.indices.reshape(-1).tolist()]
    single = client.memory_query(name, items[7])  # one query, k=1: the item itself
    assert single.indices.tolist() == [7] and single.keys == ["item-7"]

    info = client.memory_get(name)
    assert info.size == 20 and info.keys == keys
    assert name in {m.name for m in client.memory_list()}
    assert client.memory_delete(name) == name
    assert name not in {m.name for m in client.memory_list()}


def test_memory_add_without_keys_sends_the_array_alone(client):
    name = unique("plain")
    client.memory_create(name, vsa="HRR", dimension=64)
    items = F.random(4, 64, "HRR", seed=8)
    assert client.memory_add(name, items).size == 4
    assert client.memory_query(name, items.data.numpy(), k=1).indices.reshape(-1).tolist() == [0, 1, 2, 3]
    assert client.memory_get(name).keys is None
    client.memory_delete(name)


def test_classifier_routes_equal_the_centroid_model(client):
    name = unique("digits")
    x = F.random(12, DIMENSION, "MAP", seed=9)
    y = torch.tensor([0, 1, 2] * 4)
    created = client.classifier_create(name, 3, vsa="MAP", temperature=0.1)
    assert (created.num_classes, created.fitted, created.samples_seen) == (3, False, 0)
    fitted = client.classifier_fit(name, x, y)
    assert fitted.fitted and fitted.samples_seen == 12
    assert client.classifier_fit(name, x[:3], y[:3].numpy(), partial=True).samples_seen == 15

    reference = Centroid(3, DIMENSION, temperature=0.1)
    reference.fit(x, y)
    reference.partial_fit(x[:3], y[:3])
    got = client.classifier_predict(name, x)
    expected = reference.predict_proba(x)
    assert torch.allclose(got.probabilities, expected.float(), atol=1e-5)
    assert torch.equal(got.labels, expected.argmax(dim=1))
    assert client.classifier_get(name).samples_seen == 15
    assert name in {c.name for c in client.classifier_list()}
    assert client.classifier_delete(name) == name


def test_probes_and_documents(client):
    assert client.live() is True
    ready = client.ready()
    assert ready.ready is True and ready.reason is None
    health = client.health()
    assert isinstance(health, Health) and health.status in ("healthy", "degraded") and "memory" in health.checks
    assert "hdc_operation_total" in client.metrics()
    assert client.openapi()["openapi"].startswith("3.")


def test_large_answers_of_numbers_come_as_npz(kind, url):
    """Over JSON_ANSWER_MAX_NUMBERS numbers the answer is an archive; the results are the same."""
    from hd_compute.client import wire

    with FaultyProxy(int(url.rsplit(":", 1)[1])) as proxy:
        c = make_client(kind, proxy.url)
        try:
            queries = F.random(300, 64, "MAP", seed=10)
            others = F.random(300, 64, "MAP", seed=11)
            assert 300 * 300 > wire.JSON_ANSWER_MAX_NUMBERS
            got = c.similarity(queries, others)
            assert torch.allclose(got.similarities, F.cosine_similarity(queries, others).float(), atol=1e-6)
            small = c.similarity(queries[:2], others)
            assert torch.allclose(small.similarities, F.cosine_similarity(queries[:2], others).float(), atol=1e-6)
        finally:
            c.close()
    assert [s.header("Accept") for s in proxy.seen] == ["application/x-npz", "application/json"]
    assert [s.header("Content-Type") for s in proxy.seen] == ["application/x-npz"] * 2


# --- typed errors ---------------------------------------------------------------------------------------------


def test_typed_errors_carry_the_workers_error_body(client):
    name = unique("errors")
    with pytest.raises(NotFound) as caught:
        client.memory_get(name, correlation_id="test-404")
    assert caught.value.status == 404 and caught.value.error == "memory_not_found"
    assert caught.value.correlation_id == "test-404" and caught.value.field == "name"

    client.memory_create(name, vsa="MAP")
    with pytest.raises(Conflict) as caught:
        client.memory_create(name, vsa="MAP")
    assert caught.value.error == "already_exists"
    with pytest.raises(Conflict, match="memory_empty"):
        client.memory_query(name, F.random(1, DIMENSION, "MAP"))

    client.memory_add(name, F.random(2, DIMENSION, "MAP", seed=1))
    with pytest.raises(BadRequest) as caught:
        client.memory_query(name, F.random(1, DIMENSION, "MAP"), k=5)
    assert caught.value.status == 400 and caught.value.error == "invalid_field" and caught.value.field == "k"
    with pytest.raises(BadRequest) as caught:
        client.bind(F.random(1, DIMENSION, "MAP"), F.random(1, 128, "MAP"))
    assert caught.value.error == "dimension_mismatch" and caught.value.field == "b"
    client.memory_delete(name)


def test_unsupported_media_type_is_typed(kind, url):
    c = make_client(kind, url, headers={"Content-Encoding": "gzip"})
    try:
        with pytest.raises(UnsupportedMediaType) as caught:
            c.bundle(F.random(3, DIMENSION, "MAP"))
        assert caught.value.status == 415 and caught.value.field == "Content-Encoding"
    finally:
        c.close()


def test_payload_too_large_is_typed(kind, tmp_path):
    from worker_process import WorkerProcess

    small = WorkerProcess(tmp_path, tmp_path / "state", HDC_DIMENSION="64", HDC_MAX_BODY_BYTES="65536").start()
    c = make_client(kind, f"http://127.0.0.1:{small.port}")
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            c.bundle(F.random(2000, 64, "HRR"))  # 512,000 bytes of float32
        assert caught.value.status == 413 and caught.value.error == "body_too_large"
        assert c.bundle(F.random(3, 64, "MAP")).dim == 64  # the client goes on working
    finally:
        c.close()
        small.stop()


# --- retries ----------------------------------------------------------------------------------------------------


def test_a_write_under_connection_resets_is_applied_once(kind, url):
    """The first two attempts' connections are reset before the request reaches the worker: the third applies
    it, once, and every attempt carried the same idempotency key and correlation id."""
    name = unique("resets")
    setup = Client(url)
    setup.memory_create(name, vsa="MAP")
    with FaultyProxy(int(url.rsplit(":", 1)[1]), Faults(resets=2)) as proxy:
        c = make_client(kind, proxy.url, retry=FAST_RETRY)
        try:
            added = c.memory_add(name, F.random(3, DIMENSION, "MAP", seed=12))
        finally:
            c.close()
    assert added.size == 3 and setup.memory_get(name).size == 3
    assert len(proxy.seen) == 3
    keys = {s.header("Idempotency-Key") for s in proxy.seen}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    assert len({s.header("X-Correlation-ID") for s in proxy.seen}) == 1
    setup.memory_delete(name)
    setup.close()


def test_a_write_whose_answer_was_lost_is_retried_with_the_same_key(kind, url):
    """The worker applied the first attempt, and the connection was reset before its answer came back: the retry
    carries the same Idempotency-Key, which lets a worker that records keys answer it without applying it again
    (whether this worker does is the shared-state tests' concern: here the key is what the client owes)."""
    name, key = unique("lost"), unique("add-once")
    setup = Client(url)
    setup.memory_create(name, vsa="MAP")
    with FaultyProxy(int(url.rsplit(":", 1)[1]), Faults(resets=1, reset_after_forwarding=True)) as proxy:
        c = make_client(kind, proxy.url, retry=FAST_RETRY)
        try:
            c.memory_add(name, F.random(2, DIMENSION, "MAP", seed=13), idempotency_key=key)
        finally:
            c.close()
    assert [s.header("Idempotency-Key") for s in proxy.seen] == [key, key]
    setup.memory_delete(name)
    setup.close()


def test_503_is_retried_for_reads_and_keyed_writes_only(kind, url):
    port = int(url.rsplit(":", 1)[1])
    with FaultyProxy(port, Faults(unavailable=2)) as proxy:
        c = make_client(kind, proxy.url, retry=FAST_RETRY)
        try:
            assert c.memory_list() is not None  # two 503 answers, then the worker's
        finally:
            c.close()
    assert len(proxy.seen) == 3
    with FaultyProxy(port, Faults(unavailable=1)) as proxy:
        c = make_client(kind, proxy.url, retry=FAST_RETRY, idempotency_keys=False)
        try:
            with pytest.raises(Unavailable) as caught:
                c.memory_create(unique("unkeyed"), vsa="MAP")
        finally:
            c.close()
    assert caught.value.error == "not_caught_up" and len(proxy.seen) == 1
    assert proxy.seen[0].header("Idempotency-Key") is None


def test_retries_give_up_after_the_policys_attempts(kind, url):
    with FaultyProxy(int(url.rsplit(":", 1)[1]), Faults(unavailable=10, retry_after="0")) as proxy:
        c = make_client(kind, proxy.url, retry=RetryPolicy(attempts=3, backoff=0.01))
        try:
            with pytest.raises(Unavailable):
                c.memory_list()
        finally:
            c.close()
    assert len(proxy.seen) == 3
    with FaultyProxy(int(url.rsplit(":", 1)[1]), Faults(unavailable=10, retry_after="3600")) as proxy:
        c = make_client(kind, proxy.url, retry=FAST_RETRY)
        try:
            with pytest.raises(Unavailable):  # a Retry-After beyond max_retry_after is not waited for
                c.memory_list()
        finally:
            c.close()
    assert len(proxy.seen) == 1


def test_a_refused_connection_is_unreachable_after_the_retries(kind):
    from worker_process import free_port

    c = make_client(kind, f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2, backoff=0.01))
    try:
        with pytest.raises(WorkerUnreachable):
            c.live()
    finally:
        c.close()


# --- timeouts ---------------------------------------------------------------------------------------------------


@pytest.fixture
def slow_permute(worker):
    """The worker's permute sleeps 1 s first (HDC_ADMIN_FAULTS)."""
    status, _ = worker.request("PUT", "/admin/faults", {"latency_ms": 1000, "operations": ["permute"]})
    assert status == 200
    yield
    assert worker.request("DELETE", "/admin/faults")[0] == 200


def test_timeouts_per_client_and_per_call_are_honoured(kind, url, slow_permute):
    vectors = F.random(2, DIMENSION, "MAP")
    c = make_client(kind, url, timeout=0.2)
    try:
        with pytest.raises(WorkerTimeout):
            c.permute(vectors)
        assert c.permute(vectors, timeout=30).equal(F.permute(vectors, 1))  # the call's own limit wins
        assert c.bundle(vectors).dim == DIMENSION  # other operations are not slowed
    finally:
        c.close()
    c = make_client(kind, url)  # the default limit (60 s) would wait
    try:
        with pytest.raises(WorkerTimeout):
            c.permute(vectors, timeout=0.2)
    finally:
        c.close()


# --- headers ----------------------------------------------------------------------------------------------------


def test_read_your_writes_version_is_sent_on_later_reads_of_state(kind, url):
    port = int(url.rsplit(":", 1)[1])
    name = unique("ryw")
    with FaultyProxy(port) as proxy:  # the worker's own answers: with or without a version header
        c = make_client(kind, proxy.url)
        try:
            c.memory_create(name, vsa="MAP")
            c.memory_get(name)
            c.memory_add(name, F.random(1, DIMENSION, "MAP"))
            c.memory_query(name, F.random(1, DIMENSION, "MAP"))
        finally:
            c.close()
    highest = None  # each read of state carries the highest version of the answers before it, or nothing
    for seen in proxy.seen:
        if "/query" in seen.target or seen.method == "GET":
            assert seen.header("X-HDC-Min-State-Version") == (None if highest is None else str(highest))
        version = seen.answer_header("X-HDC-State-Version")
        if version is not None:
            highest = max(int(version), highest or 0)
    assert c.state_version == highest

    with FaultyProxy(port, Faults(answer_headers={"X-HDC-State-Version": "7"})) as proxy:
        c = make_client(kind, proxy.url)
        try:
            c.memory_add(name, F.random(1, DIMENSION, "MAP"))
            assert c.state_version == 7
            c.memory_get(name)
            c.memory_query(name, F.random(1, DIMENSION, "MAP"))
            c.bundle(F.random(2, DIMENSION, "MAP"))  # no state read: no version
        finally:
            c.close()
        off = make_client(kind, proxy.url, read_your_writes=False)
        try:
            off.memory_add(name, F.random(1, DIMENSION, "MAP"))
            off.memory_get(name)
        finally:
            off.close()
    sent = [(s.target.split("?")[0], s.header("X-HDC-Min-State-Version")) for s in proxy.seen]
    assert sent == [
        (f"/v1/memories/{name}/items", None),
        (f"/v1/memories/{name}", "7"),
        (f"/v1/memories/{name}/query", "7"),
        ("/v1/ops/bundle", None),
        (f"/v1/memories/{name}/items", None),
        (f"/v1/memories/{name}", None),
    ]
    Client(url).memory_delete(name)


def test_correlation_id_trace_context_and_credentials(kind, url, tmp_path):
    from opentelemetry.sdk.trace import TracerProvider

    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    tracer = TracerProvider().get_tracer("client-test")
    with FaultyProxy(int(url.rsplit(":", 1)[1])) as proxy:
        c = make_client(kind, proxy.url, token_file=token_file)
        try:
            with tracer.start_as_current_span("caller") as span:
                c.live(correlation_id="caller-cid-1")
                trace_id = format(span.get_span_context().trace_id, "032x")
            c.live()
            token_file.write_text("second-token-longer\n")  # a projected token is replaced in place
            c.live()
        finally:
            c.close()
        given = make_client(kind, proxy.url, token="static")
        try:
            given.live()
        finally:
            given.close()
    first, second, third, fourth = proxy.seen
    assert first.header("X-Correlation-ID") == "caller-cid-1"
    assert first.header("traceparent").split("-")[1] == trace_id
    assert second.header("traceparent") is None  # no current span: no trace context
    assert uuid.UUID(second.header("X-Correlation-ID")).version == 4
    assert [s.header("Authorization") for s in proxy.seen] == [
        "Bearer first-token",
        "Bearer first-token",
        "Bearer second-token-longer",
        "Bearer static",
    ]
    assert first.header("Idempotency-Key") is None  # reads carry none


def test_an_idempotency_key_on_a_read_is_refused(client):
    with pytest.raises(TypeError, match="no write"):
        client.live(idempotency_key="k")


def test_import_hd_compute_does_not_import_the_client():
    code = "import sys, hd_compute, hd_compute.functional; print('hd_compute.client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_results_are_tensors_of_the_answers_dtypes(client):
    name = unique("dtypes")
    client.memory_create(name, vsa="BSC")
    items = F.random(3, DIMENSION, "BSC", seed=14)
    added = client.memory_add(name, items)
    got = client.memory_query(name, items, k=2)
    assert added.ids.dtype == torch.int64 and got.indices.dtype == torch.int64
    assert got.similarities.dtype == torch.float32 and got.similarities.shape == (3, 2)
    vectors = client.random(2, vsa="BSC")
    assert isinstance(vectors, Hypervectors) and vectors.dtype == torch.int64
    assert isinstance(vectors.data.numpy(), np.ndarray)
    client.memory_delete(name)
