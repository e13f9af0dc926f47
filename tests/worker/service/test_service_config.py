"""Worker settings (env + flags), the codec's edge cases, the CLI and trace propagation."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from hd_compute.monitoring import tracing
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.service.app import create_app
from hd_compute.service.cli import app as cli_app
from hd_compute.service.codec import Limits
from hd_compute.service.config import ENV_VARS, SettingsError, WorkerSettings


def test_defaults_env_and_overrides():
    s = WorkerSettings.from_env(environ={})
    assert (s.dimension, s.vsa, s.device, s.port, s.max_body_bytes, s.batch_max_size, s.batch_max_wait_ms) == (
        10_000,
        "MAP",
        "auto",
        8080,
        64 << 20,
        256,
        0.0,
    )
    assert s.benchmark_enabled is True and s.shutdown_grace_seconds == 25.0
    assert s.benchmark_url.startswith("sqlite:///") and s.benchmark_url.endswith("hdc-state/benchmarks.db")
    env = {
        "HDC_DIMENSION": "4096",
        "HDC_VSA": "bsc",
        "HDC_PORT": "9000",
        "HDC_BENCHMARK_ENABLED": "false",
        "HDC_LOG_FILE": "",
        "HDC_BATCH_MAX_WAIT_MS": "0.5",
    }
    s = WorkerSettings.from_env({"port": 9100, "dimension": None}, environ=env)
    assert (s.dimension, s.vsa, s.port, s.benchmark_enabled, s.log_file, s.batch_max_wait_ms) == (
        4096,
        "BSC",
        9100,
        False,
        None,
        0.5,
    )
    assert set(ENV_VARS.values()) >= {
        "HDC_DIMENSION",
        "HDC_VSA",
        "HDC_DEVICE",
        "HDC_PORT",
        "HDC_HOST",
        "HDC_MAX_BODY_BYTES",
        "HDC_STATE_DIR",
        "HDC_BATCH_MAX_SIZE",
        "HDC_BATCH_MAX_WAIT_MS",
        "HDC_HEALTH_CUDA_MEMORY_MB",
        "HDC_HEALTH_MEMORY_PERCENT",
        "HDC_HEALTH_DISK_PERCENT",
        "HDC_LOG_LEVEL",
        "HDC_LOG_FORMAT",
        "HDC_LOG_FILE",
        "HDC_BENCHMARK_ENABLED",
        "HDC_BENCHMARK_INTERVAL_SECONDS",
        "HDC_BENCHMARK_DEGRADATION_THRESHOLD",
        "HDC_BENCHMARK_DATABASE_URL",
        "HDC_SHUTDOWN_GRACE_SECONDS",
    }


@pytest.mark.parametrize(
    "var, value",
    [
        ("HDC_DIMENSION", "ten"),
        ("HDC_DIMENSION", "0"),
        ("HDC_VSA", "XOR"),
        ("HDC_DEVICE", "tpu"),
        ("HDC_PORT", "70000"),
        ("HDC_BENCHMARK_ENABLED", "maybe"),
        ("HDC_HEALTH_MEMORY_PERCENT", "120"),
        ("HDC_SHUTDOWN_GRACE_SECONDS", "nan"),
        ("HDC_LOG_FORMAT", "xml"),
        ("HDC_MAX_JSON_BODY_BYTES", "100"),
        ("HDC_MAX_RESPONSE_BYTES", "-1"),
        ("HDC_MAX_ALLOCATION_BYTES", "1k"),
        ("HDC_HEADER_TIMEOUT_SECONDS", "0"),
        ("HDC_BODY_TIMEOUT_SECONDS", "inf"),
        ("HDC_BODY_TIMEOUT_SECONDS", "7200"),
    ],
)
def test_invalid_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        WorkerSettings.from_env(environ={var: value})


def test_the_input_limits_and_timeouts():
    s = WorkerSettings.from_env(environ={})
    assert (s.max_json_body_bytes, s.max_response_bytes, s.max_allocation_bytes) == (4 << 20, 64 << 20, 1 << 30)
    assert (s.header_timeout_seconds, s.body_timeout_seconds, s.max_inflight_body_bytes) == (15.0, 30.0, 256 << 20)
    env = {
        "HDC_MAX_JSON_BODY_BYTES": "2048",
        "HDC_MAX_RESPONSE_BYTES": "4096",
        "HDC_MAX_ALLOCATION_BYTES": "2097152",
        "HDC_HEADER_TIMEOUT_SECONDS": "2.5",
        "HDC_BODY_TIMEOUT_SECONDS": "9",
    }
    s = WorkerSettings.from_env(environ=env)
    assert (s.max_json_body_bytes, s.max_response_bytes, s.max_allocation_bytes) == (2048, 4096, 2 << 20)
    assert (s.header_timeout_seconds, s.body_timeout_seconds) == (2.5, 9.0)
    # a JSON limit above the body limit is the body limit
    limits = Limits.from_settings(
        WorkerSettings(max_body_bytes=8192, max_json_body_bytes=1 << 20, max_inflight_body_bytes=4096)
    )
    assert (limits.json_body_bytes, limits.inflight_body_bytes) == (8192, 8192)  # both at most / least the body's
    assert WorkerSettings.from_env(environ={}) == WorkerSettings()  # one definition of each default


def test_cli_rejects_bad_configuration_and_bench_prints_history(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("HDC_VSA", "nope")
    result = runner.invoke(cli_app, ["serve"])
    assert result.exit_code == 2 and "HDC_VSA" in result.output
    result = runner.invoke(cli_app, ["serve", "--vsa", "MAP", "--port", "-5"])
    assert result.exit_code == 2 and "port" in result.output
    monkeypatch.delenv("HDC_VSA")
    result = runner.invoke(cli_app, ["bench", "--database-url", f"sqlite:///{tmp_path}/b.db"])
    assert result.exit_code == 0, result.output


@pytest.mark.asyncio
async def test_unsupported_type_bad_npz_and_unknown_route_are_json_errors(tmp_path):
    settings = WorkerSettings(
        dimension=64, device="cpu", state_dir=str(tmp_path), benchmark_enabled=False, max_body_bytes=4096
    )
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        resp = await c.post("/v1/ops/permute", data=b"x", headers={"Content-Type": "text/csv"})
        assert resp.status == 415 and (await resp.json())["detail"].startswith("Content-Type")
        resp = await c.post("/v1/ops/permute", data=b"not a zip", headers={"Content-Type": "application/x-npz"})
        assert resp.status == 400 and (await resp.json())["error"] == "malformed_body"
        buf = io.BytesIO()
        np.savez_compressed(buf, vectors=np.ones((200, 64), dtype=np.int8))  # small packed, 12.8 kB unpacked
        resp = await c.post("/v1/ops/permute", data=buf.getvalue(), headers={"Content-Type": "application/x-npz"})
        assert resp.status == 413 and (await resp.json())["error"] == "body_too_large"
        buf = io.BytesIO()
        np.savez(buf, vectors=np.ones((2, 64), dtype=np.int16))
        resp = await c.post("/v1/ops/permute", data=buf.getvalue(), headers={"Content-Type": "application/x-npz"})
        assert resp.status == 400 and (await resp.json())["detail"].startswith("vectors")
        resp = await c.get("/v1/nothing-here")
        body = await resp.json()
        assert resp.status == 404 and set(body) == {"error", "detail", "correlation_id"}
        assert resp.headers["X-Correlation-ID"] == body["correlation_id"]


@pytest.mark.asyncio
async def test_server_span_continues_the_callers_w3c_trace(tmp_path, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    settings = WorkerSettings(dimension=64, device="cpu", state_dir=str(tmp_path), benchmark_enabled=False)
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        resp = await c.post(
            "/v1/hypervectors/random", json={"num": 2}, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
        assert resp.status == 200
        await asyncio.sleep(0)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /v1/hypervectors/random"]
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id
    kernel = spans["hdc_random_operation"]
    assert kernel.parent.span_id == server.context.span_id
    assert kernel.attributes["hdc.success"] is True and kernel.attributes["hdc.input_count"] == 2


@pytest.mark.asyncio
async def test_a_micro_batch_gets_one_kernel_span_linked_to_every_request(tmp_path, monkeypatch):
    """Concurrent similarity requests against the same operands become one kernel call, and one kernel span:
    a child of the first request's span, linked to all of them, hdc.input_count = the rows it computed."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    settings = WorkerSettings(
        dimension=64, device="cpu", state_dir=str(tmp_path), benchmark_enabled=False, batch_max_wait_ms=500.0
    )
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    others = [[1] * 64, [-1] * 64]
    async with TestClient(TestServer(app)) as c:

        async def one(i: int):
            resp = await c.post(
                "/v1/ops/similarity",
                json={"queries": [[1] * 64] * (i + 1), "others": others},
                headers={"X-Correlation-ID": f"batch-{i}"},
            )
            assert resp.status == 200, await resp.text()

        await asyncio.gather(*(one(i) for i in range(4)))
        await asyncio.sleep(0)
    finished = exporter.get_finished_spans()
    servers = {s.context.span_id: s for s in finished if s.name == "POST /v1/ops/similarity"}
    kernels = [s for s in finished if s.name == "hdc_similarity_operation"]
    assert len(servers) == 4
    assert len(kernels) == 1, [k.attributes for k in kernels]  # one kernel call for the four requests
    (kernel,) = kernels
    assert {link.context.span_id for link in kernel.links} == set(servers)
    assert kernel.parent.span_id in servers
    assert kernel.attributes["hdc.input_count"] == 1 + 2 + 3 + 4
    assert kernel.attributes["hdc.batch_requests"] == 4 and kernel.attributes["hdc.success"] is True


@pytest.mark.asyncio
async def test_observability_off_skips_metrics_spans_and_log_lines(tmp_path, monkeypatch, capsys):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from hd_compute.monitoring.logging import configure_logging

    assert WorkerSettings.from_env(environ={}).observability is True
    assert WorkerSettings.from_env(environ={"HDC_OBSERVABILITY": "false"}).observability is False
    with pytest.raises(SettingsError, match="HDC_OBSERVABILITY"):
        WorkerSettings.from_env(environ={"HDC_OBSERVABILITY": "maybe"})

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    configure_logging("INFO", "json")
    registries = {}
    for observability in (True, False):
        registries[observability] = CollectorRegistry()
        settings = WorkerSettings(
            dimension=64,
            device="cpu",
            state_dir=str(tmp_path / str(observability)),
            benchmark_enabled=False,
            observability=observability,
        )
        app = create_app(settings, metrics=MetricsCollector(registries[observability]))
        async with TestClient(TestServer(app)) as c:
            capsys.readouterr()
            exporter.clear()
            resp = await c.post(
                "/v1/ops/similarity",
                json={"queries": [[1] * 64], "others": [[1] * 64, [-1] * 64]},
                headers={"X-Correlation-ID": "abc-1"},
            )
            assert resp.status == 200 and resp.headers["X-Correlation-ID"] == "abc-1"
            assert (await resp.json())["similarities"] == [[1.0, -1.0]]
            resp = await c.post("/v1/ops/bind", json={"a": [[1] * 64], "b": [[1] * 63]})  # errors still count
            assert resp.status == 400
            await asyncio.sleep(0)
            lines = capsys.readouterr().out
            names = {s.name for s in exporter.get_finished_spans()}
        ops = registries[observability].get_sample_value("hdc_operation_total", {"operation": "similarity"}) or 0
        errors = registries[observability].get_sample_value(
            "hdc_operation_errors_total", {"operation": "bind", "error": "dimension_mismatch"}
        )
        batches = registries[observability].get_sample_value("hdc_batch_size_distribution_count")
        assert errors == 1 and batches >= 1 and "request_failed" in lines
        if observability:
            assert ops == 1 and "hypervector_operation_completed" in lines
            assert {"POST /v1/ops/similarity", "hdc_similarity_operation"} <= names
        else:
            assert ops == 0 and "hypervector_operation_completed" not in lines
            assert not any(n.startswith("POST") or n.startswith("hdc_") for n in names)


@pytest.mark.asyncio
async def test_light_tracing_logs_the_callers_trace_id(tmp_path, monkeypatch, capsys):
    """No exporter configured (the default): the log line of a request carries the caller's trace id and the
    request's own span id, and the correlation id."""
    import json

    from hd_compute.monitoring.logging import configure_logging

    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_SAMPLER",
    ):
        monkeypatch.delenv(var, raising=False)
    provider = tracing.configure_tracing("hdc-test", set_global=False)
    assert provider.is_light
    configure_logging("INFO", "json")
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    settings = WorkerSettings(dimension=64, device="cpu", state_dir=str(tmp_path), benchmark_enabled=False)
    try:
        app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
        async with TestClient(TestServer(app)) as c:
            capsys.readouterr()
            resp = await c.post(
                "/v1/hypervectors/random",
                json={"num": 2},
                headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Correlation-ID": "c-42"},
            )
            assert resp.status == 200 and resp.headers["X-Correlation-ID"] == "c-42"
            resp = await c.post("/v1/hypervectors/random", json={"num": 1})
            assert resp.status == 200
            resp = await c.post(
                "/v1/hypervectors/random",
                json={"num": -1},
                headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Correlation-ID": "c-43"},
            )
            assert resp.status == 400
            await asyncio.sleep(0)
            out = capsys.readouterr().out
    finally:
        tracing.shutdown_tracing()
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [e for e in entries if e["event"] == "hypervector_operation_completed"]
    assert len(done) == 2
    first, second = done
    assert first["trace_id"] == trace_id and first["correlation_id"] == "c-42"
    assert len(first["span_id"]) == 16 and first["span_id"] not in ("0" * 16, parent_id)
    assert len(second["trace_id"]) == 32 and second["trace_id"] not in ("0" * 32, trace_id)  # a new trace
    assert second["correlation_id"] != "c-42"
    # any other line of a request (here the warning of a bad one) carries the same context
    (failed,) = [e for e in entries if e["event"] == "request_failed"]
    assert failed["correlation_id"] == "c-43" and failed["trace_id"] == trace_id
    assert failed["span_id"] not in (first["span_id"], parent_id)


def test_worker_prefers_passive_openmp_waits_unless_told_otherwise():
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from hd_compute.service.cli import prefer_passive_openmp_waits\n"
        "print(prefer_passive_openmp_waits(), os.environ.get('OMP_WAIT_POLICY'))\n"
        "import torch\n"
        "print(prefer_passive_openmp_waits({}))\n"
    )  # too late once torch (libgomp) is loaded
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "PASSIVE", "False"]
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.split() == ["False", "ACTIVE", "False"]


def test_worker_shortens_the_gil_switch_interval():
    import sys

    from hd_compute.service import server

    before = sys.getswitchinterval()
    try:
        server.share_the_gil_quickly()
        assert sys.getswitchinterval() == pytest.approx(server.GIL_SWITCH_INTERVAL_SECONDS)
        assert server.GIL_SWITCH_INTERVAL_SECONDS < before
    finally:
        sys.setswitchinterval(before)


@pytest.mark.asyncio
async def test_heap_is_frozen_once_the_worker_is_ready(tmp_path):
    import gc

    from hd_compute.service import server
    from hd_compute.service.app import WORKER

    threshold = gc.get_threshold()
    settings = WorkerSettings(dimension=64, device="cpu", state_dir=str(tmp_path), benchmark_enabled=False)
    app = create_app(settings, metrics=MetricsCollector(CollectorRegistry()))
    async with TestClient(TestServer(app)) as c:
        worker = c.server.app[WORKER]
        frozen = await asyncio.wait_for(server.freeze_heap_when_ready(worker, poll_seconds=0.01), 60)
        assert frozen and worker.ready and gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == server.GC_YOUNG_THRESHOLD
        assert (await c.get("/livez")).status == 200
    gc.unfreeze()
    gc.set_threshold(*threshold)
    worker.shutting_down = True  # a worker that stops before it is ready is never frozen
    assert await server.freeze_heap_when_ready(worker, poll_seconds=0.01) is False


def test_every_setting_but_the_admin_switch_has_a_serve_flag():
    """`hdc-worker serve --help` lists every HDC_* setting; HDC_ADMIN_FAULTS stays environment-only, so turning
    on fault injection is a deployment decision, not a command-line habit."""
    import inspect

    from hd_compute.service.cli import serve
    from hd_compute.service.config import _SPEC

    flags = set(inspect.signature(serve).parameters)
    assert set(_SPEC) - flags == {"admin_faults"}
    assert flags <= set(_SPEC)
