"""Structured logs: JSON lines on stdout with the request's correlation and trace ids, rotating file."""

import json
import logging
import logging.handlers
import os
import subprocess
import sys

import paths
import pytest
import structlog

from hd_compute.monitoring import logging as hdc_logging
from hd_compute.monitoring.logging import (
    CUDA_MEMORY_ALLOCATION_FAILED,
    OPERATION_COMPLETED,
    PERFORMANCE_MEASUREMENT,
    bind_request_context,
    clear_request_context,
    configure_logging,
    flush_logs,
    get_logger,
)

WORKER = paths.REPO / "worker"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    clear_request_context()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    structlog.reset_defaults()


def lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_carry_request_context(capsys):
    configure_logging("INFO", "json")
    log = get_logger("test")
    bind_request_context("corr-123", "0af7651916cd43dd8448eb211c80319c")
    log.info(OPERATION_COMPLETED, operation="bundle", dimension=10000, input_count=100, duration_ms=15.2, device="cpu")
    logging.getLogger("aiohttp.access").info("GET /health 200")  # standard logging goes the same way
    clear_request_context()
    log.info("after_request")
    out = lines(capsys.readouterr().out)
    assert len(out) == 3
    first, access, after = out
    assert first["event"] == "hypervector_operation_completed"
    assert first["correlation_id"] == "corr-123"
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert first["level"] == "info" and first["logger"] == "test"
    assert first["timestamp"].endswith("Z")
    assert (first["operation"], first["dimension"], first["input_count"], first["duration_ms"]) == (
        "bundle",
        10000,
        100,
        15.2,
    )
    assert access["correlation_id"] == "corr-123" and access["event"] == "GET /health 200"
    assert "correlation_id" not in after and "trace_id" not in after


def test_seed_events_and_levels(capsys):
    configure_logging("DEBUG", "json")
    log = get_logger()
    log.error(
        CUDA_MEMORY_ALLOCATION_FAILED,
        operation="random_hv",
        dimension=32000,
        requested_memory_mb=128,
        available_memory_mb=64,
        error_code="CUDA_OUT_OF_MEMORY",
    )
    log.debug(PERFORMANCE_MEASUREMENT, operation="bind", batch_size=1000, throughput_ops_per_sec=15000)
    oom, perf = lines(capsys.readouterr().out)
    assert oom["event"] == "cuda_memory_allocation_failed" and oom["level"] == "error"
    assert oom["error_code"] == "CUDA_OUT_OF_MEMORY"
    assert perf["event"] == "performance_measurement" and perf["level"] == "debug"

    configure_logging("WARNING", "json")  # reconfiguring replaces the handlers, does not add more
    get_logger().info("hidden")
    get_logger().warning("shown")
    assert [e["event"] for e in lines(capsys.readouterr().out)] == ["shown"]


def test_trace_id_from_the_current_span(capsys):
    from opentelemetry.sdk.trace import TracerProvider

    configure_logging("INFO", "json")
    tracer = TracerProvider().get_tracer("t")
    bind_request_context("corr-9", None)
    with tracer.start_as_current_span("s") as span:
        get_logger().info("inside")
        ctx = span.get_span_context()
    (entry,) = lines(capsys.readouterr().out)
    assert entry["correlation_id"] == "corr-9"
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")


def test_exceptions_are_one_json_line(capsys):
    configure_logging("INFO", "json")
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        get_logger().exception("request_failed")
    (entry,) = lines(capsys.readouterr().out)
    assert entry["level"] == "error"
    assert "RuntimeError: kaboom" in entry["exception"]


def test_rotating_file_handler(tmp_path, capsys):
    path = tmp_path / "logs" / "hdc.log"
    configure_logging("INFO", "json", file=str(path))
    rotating = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert len(rotating) == 1
    assert rotating[0].maxBytes == 100 * 1024 * 1024 and rotating[0].backupCount == 5
    get_logger().info("to_file", n=1)
    rotating[0].flush()
    (entry,) = lines(path.read_text())
    assert entry["event"] == "to_file" and entry["n"] == 1
    assert lines(capsys.readouterr().out)[0]["event"] == "to_file"


def test_console_format(capsys):
    configure_logging("INFO", "console")
    get_logger().info("human_readable", a=1)
    out = capsys.readouterr().out
    assert "human_readable" in out and "a=1" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"level": "LOUD"}, "HDC_LOG_LEVEL"),
        ({"fmt": "xml"}, "HDC_LOG_FORMAT"),
        ({"file": "/proc/hdc/nope.log"}, "HDC_LOG_FILE"),
    ],
)
def test_bad_settings_name_the_variable(kwargs, field):
    with pytest.raises(ValueError, match=field):
        configure_logging(**kwargs)


def test_empty_correlation_id_rejected():
    with pytest.raises(ValueError, match="correlation_id"):
        bind_request_context("", None)


def test_stdout_of_a_real_process_is_json_lines():
    code = (
        "from hd_compute.monitoring.logging import *\n"
        "configure_logging()\n"
        "bind_request_context('c-1', 'abc')\n"
        "get_logger('w').info('hypervector_operation_completed', operation='bind')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(WORKER))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (entry,) = lines(proc.stdout)
    assert entry == {
        **entry,
        "event": "hypervector_operation_completed",
        "correlation_id": "c-1",
        "trace_id": "abc",
        "operation": "bind",
        "logger": "w",
        "level": "info",
    }
    assert hdc_logging.FILE_BACKUP_COUNT == 5


def test_logger_cache_binds_once_and_follows_a_new_set_up(capsys):
    from hd_compute.monitoring.logging import LoggerCache

    configure_logging("INFO", "json")
    log = LoggerCache("cached")
    assert log() is log()  # bound once
    log().info("first")
    log().debug("hidden")
    configure_logging("DEBUG", "json")  # a new set-up: the cache binds again and sees the new level
    log().debug("shown")
    entries = lines(capsys.readouterr().out)
    assert [e["event"] for e in entries] == ["first", "shown"]
    assert all(e["logger"] == "cached" for e in entries)
    configure_logging("INFO", "json")


ISO_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


def test_timestamps_always_have_microseconds_and_z(capsys, monkeypatch):
    import re

    configure_logging("INFO", "json")
    get_logger().info("any")
    for now in (1_764_400_000_000_000_000, 1_764_400_000_123_456_789, 1_764_400_001_000_001_000):
        monkeypatch.setattr(hdc_logging.time, "time_ns", lambda now=now: now)
        get_logger().info("at")
    logging.getLogger("lib").info("a standard record: the time it was created")
    first, *at, record = lines(capsys.readouterr().out)
    assert re.match(ISO_Z, first["timestamp"]) and re.match(ISO_Z, record["timestamp"])
    assert [e["timestamp"] for e in at] == [
        "2025-11-29T07:06:40.000000Z",
        "2025-11-29T07:06:40.123456Z",
        "2025-11-29T07:06:41.000001Z",
    ]


@pytest.mark.parametrize("with_file", [False, True])
def test_structlog_and_standard_lines_share_stdout_in_order(capsys, tmp_path, with_file):
    """Without a file structlog lines take structlog's own writer and standard records the logging handler;
    with one both go through the handlers. Either way stdout is one JSON object per line, in the order logged,
    with the same fields; with a file, the file holds the same lines."""
    path = tmp_path / "hdc.log"
    configure_logging("INFO", "json", file=str(path) if with_file else None)
    bind_request_context("c-5")
    get_logger("hd_compute.service").info("one", n=1)
    logging.getLogger("aiohttp.access").info("two %s", "args")
    get_logger("hd_compute.service").warning("three")
    logging.getLogger("aiohttp.access").debug("hidden")
    get_logger("hd_compute.service").debug("hidden")
    clear_request_context()
    flush_logs()
    out = lines(capsys.readouterr().out)
    assert [(e["event"], e["logger"], e["level"], e["correlation_id"]) for e in out] == [
        ("one", "hd_compute.service", "info", "c-5"),
        ("two args", "aiohttp.access", "info", "c-5"),
        ("three", "hd_compute.service", "warning", "c-5"),
    ]
    assert out[0]["n"] == 1
    if with_file:
        assert lines(path.read_text()) == out


def test_a_bound_logger_writes_to_stdout_as_it_is_now(capsys, monkeypatch):
    """A logger bound once (LoggerCache, as the service holds them) follows a replaced stdout instead of writing
    to the stream it saw first (which a test's capture, for one, closes)."""
    import io

    from hd_compute.monitoring.logging import LoggerCache

    configure_logging("INFO", "json")
    log = LoggerCache("cached")
    log().info("first")
    replaced = io.StringIO()
    monkeypatch.setattr(sys, "stdout", replaced)
    log().info("second")
    assert [e["event"] for e in lines(replaced.getvalue())] == ["second"]
    monkeypatch.undo()
    assert [e["event"] for e in lines(capsys.readouterr().out)] == ["first"]


def test_console_stdout_keeps_a_json_file(capsys, tmp_path):
    path = tmp_path / "hdc.log"
    configure_logging("INFO", "console", file=str(path))
    get_logger("w").info("for_people", a=1)
    logging.getLogger("lib").info("from a library")
    flush_logs()
    text = capsys.readouterr().out
    assert "for_people" in text and "from a library" in text and not text.lstrip().startswith("{")
    assert [(e["event"], e["logger"]) for e in lines(path.read_text())] == [
        ("for_people", "w"),
        ("from a library", "lib"),
    ]
