"""Traces reach a real OTLP receiver: a worker process exports to an OpenTelemetry Collector started by the
test (hack/otelcol, built from Go modules), and the spans are read back from the collector's file exporter."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time

import pytest
from worker_process import REPO, WorkerProcess, free_port

import hd_compute as hd
from hd_compute.service.codec import hv_to_json

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    build = subprocess.run([str(REPO / "hack" / "build-otelcol.sh")], capture_output=True, text=True, timeout=900)
    if build.returncode != 0:
        pytest.fail(f"could not build the test collector:\n{build.stderr[-2000:]}", pytrace=False)
    binary = build.stdout.strip().splitlines()[-1]
    workdir = tmp_path_factory.mktemp("otelcol")
    spans_file = workdir / "spans.json"
    port = free_port()
    config = workdir / "config.yaml"
    config.write_text(f"""
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {spans_file}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
""")
    log = open(workdir / "collector.log", "wb")
    proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"Everything is ready" not in (workdir / "collector.log").read_bytes():
        assert proc.poll() is None, (workdir / "collector.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the collector did not become ready in 60 s"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", spans_file
    proc.terminate()
    proc.wait(10)


def exported_spans(spans_file: pathlib.Path) -> list[dict]:
    spans = []
    if not spans_file.exists():
        return spans
    for line in spans_file.read_text().splitlines():
        for resource in json.loads(line).get("resourceSpans", []):
            service = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}.get("service.name", {})
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    attributes = {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}
                    spans.append({**span, "service": service.get("stringValue"), "attrs": attributes})
    return spans


def test_worker_spans_reach_a_real_collector(collector, tmp_path):
    endpoint, spans_file = collector
    worker = WorkerProcess(
        tmp_path,
        tmp_path / "state",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="hdc-worker-otlp-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ).start()
    try:
        a, b = hd.random(2, 1000, "MAP", seed=7)
        status, body = worker.request(
            "POST",
            "/v1/ops/bind",
            {"vsa": "MAP", "dimension": 1000, "a": hv_to_json(a), "b": hv_to_json(b)},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "X-Correlation-ID": "otlp-test-1"},
        )
        assert status == 200, body
        deadline = time.monotonic() + 30
        while True:
            ours = [s for s in exported_spans(spans_file) if s["traceId"] == TRACE_ID]
            if any(s["attrs"].get("hdc.operation") == "bind" for s in ours) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        worker.stop()

    assert ours, f"no span of trace {TRACE_ID} reached the collector"
    assert {s["service"] for s in ours} == {"hdc-worker-otlp-test"}
    server = [s for s in ours if s.get("parentSpanId") == PARENT_SPAN_ID]
    assert len(server) == 1, "the request span continues the caller's W3C trace context"
    kernel = [s for s in ours if s["attrs"].get("hdc.operation") == "bind"]
    assert kernel, [s["attrs"] for s in ours]
    assert kernel[0]["attrs"]["hdc.dimension"] in (1000, "1000")
    assert kernel[0]["attrs"]["hdc.success"] is True
