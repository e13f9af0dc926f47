"""Fault injection (HDC_ADMIN_FAULTS): a real worker process slows down and fails /v1 operations on request."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_process import WorkerProcess

from hd_compute.service.codec import ApiError
from hd_compute.service.faults import Fault, parse_fault

BIND = {"a": [1.0, -1.0, 1.0, -1.0], "b": [1.0, 1.0, -1.0, -1.0], "vsa": "MAP"}


def _samples(worker: WorkerProcess) -> dict[tuple, float]:
    status, body = worker.request("GET", "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def faulty_worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    worker = WorkerProcess(tmp, tmp / "state", HDC_ADMIN_FAULTS="true").start()
    yield worker
    worker.stop()


def test_routes_do_not_exist_unless_enabled(tmp_path):
    worker = WorkerProcess(tmp_path, tmp_path / "state").start()
    try:
        assert worker.request("PUT", "/admin/faults", {"error_ratio": 1})[0] == 404
        assert worker.request("GET", "/admin/faults")[0] == 404
        assert worker.request("POST", "/v1/ops/bind", BIND)[0] == 200
    finally:
        worker.stop()


def test_error_ratio_fails_matching_operations_and_counts_them(faulty_worker):
    w = faulty_worker
    status, body = w.request("PUT", "/admin/faults", {"error_ratio": 1.0, "operations": ["bind"]})
    assert status == 200 and body == {"latency_ms": 0.0, "error_ratio": 1.0, "operations": ["bind"]}
    assert w.request("GET", "/admin/faults")[1]["operations"] == ["bind"]
    for _ in range(3):
        status, body = w.request("POST", "/v1/ops/bind", BIND)
        assert status == 500 and body["error"] == "injected_fault"
    # another operation is untouched
    assert w.request("POST", "/v1/ops/bundle", {"vectors": [[1.0, -1.0], [1.0, 1.0]], "vsa": "MAP"})[0] == 200
    samples = _samples(w)
    assert samples[("hdc_operation_errors_total", (("error", "injected_fault"), ("operation", "bind")))] == 3
    assert samples[("hdc_operation_total", (("operation", "bind"),))] >= 3
    assert w.request("DELETE", "/admin/faults")[0] == 200
    assert w.request("POST", "/v1/ops/bind", BIND)[0] == 200
    assert w.request("GET", "/admin/faults")[1] == {"latency_ms": 0.0, "error_ratio": 0.0, "operations": []}


def test_latency_lands_inside_the_measured_duration(faulty_worker):
    w = faulty_worker
    before = _samples(w)
    key_le = ("hdc_operation_duration_seconds_bucket", (("le", "0.1"), ("operation", "permute")))
    key_count = ("hdc_operation_duration_seconds_count", (("operation", "permute"),))
    assert w.request("PUT", "/admin/faults", {"latency_ms": 150})[0] == 200
    try:
        for _ in range(2):
            assert (
                w.request("POST", "/v1/ops/permute", {"vectors": [1.0, -1.0, 1.0], "shifts": 1, "vsa": "MAP"})[0] == 200
            )
    finally:
        w.request("DELETE", "/admin/faults")
    after = _samples(w)
    # both requests took >= 150 ms: counted, but not under the 100 ms bucket
    assert after[key_count] - before.get(key_count, 0) == 2
    assert after.get(key_le, 0) - before.get(key_le, 0) == 0
    p95 = after[("hdc_latency_percentiles", (("operation", "permute"), ("quantile", "0.95")))]
    assert p95 >= 150


@pytest.mark.parametrize(
    "body, field",
    [
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": 61_000}, "latency_ms"),
        ({"error_ratio": 1.5}, "error_ratio"),
        ({"error_ratio": True}, "error_ratio"),
        ({"operations": "bind"}, "operations"),
        ({"colour": 1}, "colour"),
    ],
)
def test_bad_fault_bodies_are_400_naming_the_field(faulty_worker, body, field):
    status, answer = faulty_worker.request("PUT", "/admin/faults", body)
    assert status == 400 and answer["detail"].startswith(field)
    with pytest.raises(ApiError) as info:
        parse_fault(body)
    assert info.value.detail.startswith(field)
    assert faulty_worker.request("GET", "/admin/faults")[1]["error_ratio"] == 0  # unchanged


def test_malformed_json_is_400(faulty_worker):
    status, answer = faulty_worker.request("PUT", "/admin/faults", b"{not json")
    assert status == 400 and answer["error"] == "malformed_json"


def test_fault_without_effect_is_inactive():
    assert not Fault().active and Fault(latency_ms=1).active and Fault(error_ratio=0.1).active
