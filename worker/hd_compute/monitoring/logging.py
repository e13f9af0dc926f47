"""Structured logs: one JSON object per line on stdout (and optionally a rotating file), through structlog.

    configure_logging(level="INFO", fmt="json", file=None)     # HDC_LOG_LEVEL, HDC_LOG_FORMAT, HDC_LOG_FILE
    log = get_logger(__name__)
    bind_request_context(correlation_id, trace_id)             # at the start of a request
    log.info(OPERATION_COMPLETED, operation="bundle", dimension=10000, input_count=100, duration_ms=15.2,
             device="cuda:0")
    clear_request_context()                                     # at its end

Every line carries ``timestamp`` (ISO-8601 UTC with microseconds and Z), ``level``, ``logger`` and ``event``.
Lines logged while a request context is bound (structlog.contextvars: per asyncio task, and carried to the
kernel thread with the context) also carry ``correlation_id``; lines logged inside an OpenTelemetry span carry
``trace_id`` and ``span_id`` of that span unless they were bound. ``fmt="console"`` gives coloured
human-readable lines on stdout instead (a log file stays JSON). The file rotates at 100 MB and keeps 5 old
files, as in the seed.

Two of structlog's documented set-ups, chosen by whether there is a log file:

- stdout only (the container default): structlog lines are rendered by structlog's own chain and written by
  a minimal final logger (`_StdoutLogger`, structlog's WriteLogger reading sys.stdout at each write), one write
  per line; the records of other libraries (aiohttp's access log, ...) go through
  the standard `logging` module to a stdout handler whose `ProcessorFormatter` runs the same processors
  (`foreign_pre_chain`) and the same renderer. A structlog line skips the standard library's round trip (two
  LogRecords, the caller lookup, the handler): at one line per request that is the larger part of a line's
  cost (docs/benchmarks.md).
- with a file: structlog lines go through `ProcessorFormatter.wrap_for_formatter` into `logging` as well
  ("Rendering using structlog-based formatters within logging"), because only the standard handlers write one
  line to two places (stdout in the chosen format, the rotating file as JSON).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog

try:
    from opentelemetry import trace
except ImportError:  # the operator's image imports this module without OpenTelemetry: no trace ids there
    trace = None  # type: ignore[assignment]

__all__ = [
    "configure_logging",
    "get_logger",
    "LoggerCache",
    "bind_request_context",
    "clear_request_context",
    "flush_logs",
    "OPERATION_COMPLETED",
    "CUDA_MEMORY_ALLOCATION_FAILED",
    "PERFORMANCE_MEASUREMENT",
    "FILE_MAX_BYTES",
    "FILE_BACKUP_COUNT",
    "FORMATS",
]

# The seed's event names.
OPERATION_COMPLETED = "hypervector_operation_completed"
CUDA_MEMORY_ALLOCATION_FAILED = "cuda_memory_allocation_failed"  # with error_code="CUDA_OUT_OF_MEMORY"
PERFORMANCE_MEASUREMENT = "performance_measurement"

FILE_MAX_BYTES = 100 * 1024 * 1024
FILE_BACKUP_COUNT = 5
FORMATS = ("json", "console")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stdout is at the time of the write (so captured or replaced stdout works)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler assigns it; the property always answers sys.stdout
        pass


def _add_trace_ids(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """trace_id and span_id of the current OpenTelemetry span (32 and 16 hex digits), unless the line carries
    both already; a bound trace_id (bind_request_context) is kept."""
    if "trace_id" in event_dict and "span_id" in event_dict:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        if event_dict.get("trace_id") is None:
            event_dict["trace_id"] = "%032x" % context.trace_id
        event_dict.setdefault("span_id", "%016x" % context.span_id)
    return event_dict


_second: tuple[int, str] = (-1, "")  # (a second since the epoch, its date and time of day as ISO-8601 text)


def _iso_utc(time_ns: int) -> str:
    """`time_ns` (nanoseconds since the epoch) as ISO-8601 UTC with microseconds and a Z; the date and time of
    day are formatted once per second (one line per request makes this one of the line's larger costs)."""
    global _second
    second, nanoseconds = divmod(time_ns, 1_000_000_000)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{nanoseconds // 1000:06d}Z"


def _add_timestamp(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """timestamp: ISO-8601 UTC, always with microseconds (structlog's TimeStamper(fmt="iso") drops them when they
    are zero), and a Z. A standard record's is the time it was created, so that every handler writes the same
    line."""
    record = event_dict.get("_record")
    event_dict["timestamp"] = _iso_utc(time.time_ns() if record is None else int(record.created * 1e9))
    return event_dict


def _dumps(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _shared_processors() -> list[Any]:
    """What every line gets, whether it comes from structlog or from the standard logging module."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_timestamp,
        *([_add_trace_ids] if trace is not None else []),
        structlog.processors.StackInfoRenderer(),
    ]


def _rendering(fmt: str) -> list[Any]:
    """The last processors: "json" (exceptions as text, one JSON object) or "console" (coloured on a tty)."""
    if fmt == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_dumps)]
    return [structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]


def _formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_rendering(fmt)],
    )


_HANDLER_NAME = "hd_compute"  # the handlers configure_logging installs (and replaces when called again)


def _ours(handler: logging.Handler) -> bool:
    return handler.get_name() == _HANDLER_NAME


def configure_logging(level: str = "INFO", fmt: str = "json", file: str | None = None) -> None:
    """Sends structlog and standard logging to stdout (and `file`, rotated), as JSON lines or console text.

    Calling it again replaces the handlers it installed before; other handlers on the root logger are kept.
    """
    if not isinstance(level, str) or level.upper() not in _LEVELS:
        raise ValueError(f"level (HDC_LOG_LEVEL) must be one of {', '.join(_LEVELS)}, got {level!r}")
    if fmt == "text":
        fmt = "console"
    if fmt not in FORMATS:
        raise ValueError(f"fmt (HDC_LOG_FORMAT) must be one of {', '.join(FORMATS)}, got {fmt!r}")
    level_no = getattr(logging, level.upper())

    handlers: list[logging.Handler] = [_StdoutHandler()]
    handlers[0].setFormatter(_formatter(fmt))
    if file:
        path = Path(file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            rotating = logging.handlers.RotatingFileHandler(
                path, maxBytes=FILE_MAX_BYTES, backupCount=FILE_BACKUP_COUNT, encoding="utf-8"
            )
        except OSError as exc:
            raise ValueError(f"file (HDC_LOG_FILE) {file!r} cannot be opened for writing: {exc}") from exc
        rotating.setFormatter(_formatter("json"))  # the file stays machine-readable when stdout is for humans
        handlers.append(rotating)
    root = logging.getLogger()
    for old in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
    root.setLevel(level_no)

    if file:  # through the standard handlers, so that each line reaches stdout and the file
        last, factory = [structlog.stdlib.ProcessorFormatter.wrap_for_formatter], structlog.stdlib.LoggerFactory()
    else:
        last, factory = _rendering(fmt), _StdoutLogger
    structlog.configure(
        processors=[*_shared_processors(), *last],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        cache_logger_on_first_use=False,
    )
    global _generation
    _generation += 1  # LoggerCache instances bind again


def flush_logs() -> None:
    """Flushes the handlers configure_logging installed and stdout (the worker calls it before it exits)."""
    for handler in logging.getLogger().handlers:
        if _ours(handler):
            handler.flush()
    sys.stdout.flush()


_STDOUT_LOCK = threading.Lock()  # lines from the event loop and the kernel thread leave whole and in turn


class _StdoutLogger:
    """structlog's final logger for stdout-only logging: each rendered line in one write, flushed, to sys.stdout
    as it is at the time of the write (like _StdoutHandler: a bound logger outlives a replaced or captured
    stdout; structlog's WriteLogger keeps the stream it was created with). `name` is the name it was asked for,
    which structlog.stdlib.add_logger_name reads as it reads a stdlib logger's."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None, *args: Any) -> None:
        self.name = name or "hd_compute"

    def msg(self, message: str) -> None:
        stream = sys.stdout
        with _STDOUT_LOCK:
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = exception = critical = fatal = log = msg


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name or "hd_compute")


_generation = 0  # how many times configure_logging ran


class LoggerCache:
    """`log = LoggerCache("hd_compute.service")`, then `log().info(...)`: a bound logger for hot paths.

    `get_logger(name).info(...)` binds a new logger for every line (structlog's lazy proxy); this binds once
    and again only after configure_logging changed the set-up."""

    __slots__ = ("name", "_logger", "_generation")

    def __init__(self, name: str) -> None:
        self.name: str = name
        self._logger: Any = None
        self._generation = -1

    def __call__(self) -> Any:
        if self._generation != _generation or self._logger is None:
            self._logger = structlog.get_logger(self.name).bind()
            self._generation = _generation
        return self._logger


def bind_request_context(correlation_id: str, trace_id: str | None = None) -> None:
    """Every line logged from here on in this context (task, thread) carries these ids."""
    if not isinstance(correlation_id, str) or not correlation_id:
        raise ValueError(f"correlation_id must be a non-empty string, got {correlation_id!r}")
    if trace_id is None:
        structlog.contextvars.unbind_contextvars("trace_id")
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    else:
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id, trace_id=trace_id)


def clear_request_context() -> None:
    structlog.contextvars.unbind_contextvars("correlation_id", "trace_id")
