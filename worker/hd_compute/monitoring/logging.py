"""Structured logs: one JSON object per line on stdout (and optionally a rotating file), through structlog.

    configure_logging(level="INFO", fmt="json", file=None)     # HDC_LOG_LEVEL, HDC_LOG_FORMAT, HDC_LOG_FILE
    log = get_logger(__name__)
    bind_request_context(correlation_id, trace_id)             # at the start of a request
    log.info(OPERATION_COMPLETED, operation="bundle", dimension=10000, input_count=100, duration_ms=15.2,
             device="cuda:0")
    clear_request_context()                                     # at its end

Every line carries ``timestamp`` (ISO-8601 UTC), ``level``, ``logger`` and ``event``; lines logged while a
request context is bound also carry ``correlation_id`` and ``trace_id``, and lines logged inside an
OpenTelemetry span carry ``trace_id`` and ``span_id`` of that span when none was bound. Records of the
standard ``logging`` module (aiohttp's access log, libraries) go through the same renderer, so stdout stays
one JSON object per line. ``fmt="console"`` gives coloured human-readable lines instead.
The file handler rotates at 100 MB and keeps 5 old files, as in the seed.

structlog lines take structlog's own pipeline (a filtering bound logger, no stdlib `logging.Logger` in between)
and are rendered once per format with orjson, then handed to the same handlers the standard records use: a
line costs about half of what the stdlib round trip did, which matters at one line per request.

The worker's request lines take a shorter road still (`log_request_line`): the same JSON object built directly,
with the ids of the request's context (`RequestScope`, one context variable per request instead of a structlog
binding and an attached span), and rendered when it is written rather than when it is logged. Lines written on
an event loop's thread at INFO and below are buffered and written once per loop iteration (one write for all
the lines of that iteration; stdout directly, other handlers through `logging`); a WARNING or worse line, a
line from another thread and `flush_logs()` write the buffer at once, in order. At one line per request this
is the difference between a few microseconds and a few tens of them per request.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import logging.handlers
import sys
import threading
import time
from collections import deque
from pathlib import Path

import orjson
import structlog

from ._queues import drain

try:
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
    _otel_trace = None

__all__ = [
    "configure_logging", "get_logger", "LoggerCache", "bind_request_context", "clear_request_context",
    "RequestScope", "REQUEST_SCOPE", "log_request_line", "flush_logs",
    "OPERATION_COMPLETED", "CUDA_MEMORY_ALLOCATION_FAILED", "PERFORMANCE_MEASUREMENT",
    "FILE_MAX_BYTES", "FILE_BACKUP_COUNT", "FORMATS",
]

# The seed's event names.
OPERATION_COMPLETED = "hypervector_operation_completed"
CUDA_MEMORY_ALLOCATION_FAILED = "cuda_memory_allocation_failed"  # with error_code="CUDA_OUT_OF_MEMORY"
PERFORMANCE_MEASUREMENT = "performance_measurement"

FILE_MAX_BYTES = 100 * 1024 * 1024
FILE_BACKUP_COUNT = 5
FORMATS = ("json", "console")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_HANDLER_TAG = "_hdc_handler"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time of the write (so captured or replaced stdout works)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler assigns it; the property always answers sys.stdout
        pass


class RequestScope:
    """The request being served: its correlation id and, when spans are not recorded (no exporter), the trace
    and span ids of its light server span (hex). With recorded spans `trace_id` is None and the lines take the
    ids of the current OpenTelemetry span. Set in REQUEST_SCOPE for the time of the request; it travels to the
    kernel thread with the context like every context variable."""

    __slots__ = ("correlation_id", "trace_id", "span_id")

    def __init__(self, correlation_id: str, trace_id: str | None = None, span_id: str | None = None) -> None:
        self.correlation_id, self.trace_id, self.span_id = correlation_id, trace_id, span_id


REQUEST_SCOPE: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("hdc_request_scope", default=None)


def _trace_ids(scope: RequestScope | None) -> tuple[str, str] | None:
    """(trace_id, span_id) for a line: the request scope's when it holds them (no span is recorded: the ids of
    its light server span are the only ones anyone can look up), else the current OpenTelemetry span's."""
    if scope is not None and scope.trace_id is not None:
        return scope.trace_id, scope.span_id
    if _otel_trace is not None:
        ctx = _otel_trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return "%032x" % ctx.trace_id, "%016x" % ctx.span_id
    return None


def _add_request_context(logger, method_name, event_dict):
    """correlation_id of the request scope, and trace_id / span_id (the request scope's, else the current
    span's) when none were bound."""
    scope = REQUEST_SCOPE.get()
    bound = "trace_id" in event_dict and "span_id" in event_dict
    return _add_ids(event_dict, scope, None if bound else _trace_ids(scope))


def _add_ids(event_dict: dict, scope: RequestScope | None, ids: tuple[str, str] | None) -> dict:
    if scope is not None and "correlation_id" not in event_dict:
        event_dict["correlation_id"] = scope.correlation_id
    if ids is not None and not ("trace_id" in event_dict and "span_id" in event_dict):
        if event_dict.get("trace_id") is None:
            event_dict["trace_id"] = ids[0]
        event_dict.setdefault("span_id", ids[1])
    return event_dict


_second = -1
_second_text = ""


def _iso_now() -> str:
    """The current UTC time as ISO-8601 with microseconds and a Z (2026-11-29T05:02:56.123456Z)."""
    return _iso_at(time.time_ns())


def _iso_at(time_ns: int) -> str:
    """`time_ns` (nanoseconds since the epoch) as _iso_now writes it; the date and time of day are formatted
    once per second."""
    global _second, _second_text
    second, nanoseconds = divmod(time_ns, 1_000_000_000)
    if second != _second:
        _second_text, _second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
    return f"{_second_text}.{nanoseconds // 1000:06d}Z"


def _add_timestamp(logger, method_name, event_dict):
    event_dict["timestamp"] = _iso_now()
    return event_dict


def _dumps(obj, **kwargs) -> str:
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_timestamp,
        _add_request_context,
        structlog.processors.StackInfoRenderer(),
    ]


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
    flush_logs()  # lines buffered for the old handlers go to them

    final = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_dumps)] \
        if fmt == "json" \
        else [structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
    formatter = _Formatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handlers: list[logging.Handler] = [_StdoutHandler()]
    if file:
        path = Path(file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(
                path, maxBytes=FILE_MAX_BYTES, backupCount=FILE_BACKUP_COUNT, encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"file (HDC_LOG_FILE) {file!r} cannot be opened for writing: {exc}") from exc
    if fmt == "console" and file:
        # The file stays machine-readable even when stdout is for humans.
        handlers[1].setFormatter(_Formatter(
            foreign_pre_chain=_shared_processors(),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        structlog.processors.JSONRenderer(serializer=_dumps)]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_TAG, False)]:
        root.removeHandler(old)
        old.close()
    for h in handlers:
        setattr(h, _HANDLER_TAG, True)
        if h.formatter is None:
            h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(level_no)

    # structlog lines: each handler gets them in its own format (stdout as asked, a file always as JSON), each
    # format rendered once per line.
    sinks = [(h, "console" if (fmt == "console" and h is handlers[0]) else "json") for h in handlers]
    _SINKS[:] = sinks
    _RENDERERS.clear()
    for _, sink_fmt in sinks:
        _RENDERERS[sink_fmt] = _render_json if sink_fmt == "json" else structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty())
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info, _to_sinks],
        logger_factory=_SinkLogger,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        cache_logger_on_first_use=False,
    )
    global _generation, _fast_lines
    _generation += 1  # LoggerCache instances bind again
    _fast_lines = set(_RENDERERS) == {"json"} and level_no <= logging.INFO


# (handler, format) pairs that structlog lines go to, and the renderers by format; set by configure_logging.
_SINKS: list[tuple[logging.Handler, str]] = []
_RENDERERS: dict[str, object] = {}
_LEVEL_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
                  "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}


def _render_json(logger, method_name, event_dict) -> str:
    return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _to_sinks(logger, method_name, event_dict):
    """Last processor: renders once per format and returns the lines for _SinkLogger (as keyword arguments)."""
    lines = {fmt: render(logger, method_name, dict(event_dict)) for fmt, render in _RENDERERS.items()}
    return {"lines": lines, "level": _LEVEL_NUMBERS.get(method_name, logging.INFO)}


class _Rendered:
    """A structlog line already rendered by _to_sinks (or several, one per line), in the shape of the LogRecord a
    handler expects (without the cost of building one: a third of a line's time); _Formatter passes it through."""

    __slots__ = ("name", "levelno", "levelname", "msg")
    args = ()
    exc_info = exc_text = stack_info = None

    def __init__(self, name: str, levelno: int, msg: str) -> None:
        self.name, self.levelno, self.msg = name, levelno, msg
        self.levelname = logging.getLevelName(levelno)

    def getMessage(self) -> str:
        return self.msg


class _SinkLogger:
    """structlog's final logger: hands each rendered line to the configured handlers (stdout, the file)."""

    def __init__(self, name: str | None = None, *args) -> None:
        self.name = name or "hd_compute"

    def msg(self, lines: dict[str, str], level: int) -> None:
        _emit(self.name, level, lines)

    debug = info = warning = warn = error = exception = critical = fatal = log = msg


# Lines written on an event loop's thread at INFO or below wait here for the end of the loop iteration (a deque:
# appends and pops are atomic, so adding a line takes no lock). Each: (logger, level, {format: text}), or a
# _RequestLine in place of the dict.
_pending: deque[tuple[str, int, dict[str, str]]] = deque()
_flush_lock = threading.Lock()  # one flush at a time, so that lines leave in the order they came
_flush_loop: asyncio.AbstractEventLoop | None = None  # the loop a flush of _pending is scheduled on


def _emit(name: str, level: int, lines: dict[str, str]) -> None:
    global _flush_loop
    loop = asyncio._get_running_loop()
    if loop is None or level > logging.INFO:
        with _flush_lock:
            _write(drain(_pending) + [(name, level, lines)])  # what came before goes first
        return
    _pending.append((name, level, lines))
    if _flush_loop is loop:  # set and cleared on this loop's thread only: no other thread can interleave
        return
    _flush_loop = loop
    try:
        loop.call_soon(_flush_scheduled)
    except RuntimeError:  # the loop is closing: write now
        flush_logs()


def _flush_scheduled() -> None:
    global _flush_loop
    _flush_loop = None
    flush_logs()


def flush_logs() -> None:
    """Writes the lines buffered on event loop threads now (the worker calls it before it exits)."""
    if _pending:
        with _flush_lock:
            _write(drain(_pending))


atexit.register(flush_logs)


def _write(entries: list[tuple[str, int, dict[str, str]]]) -> None:
    """All `entries` (their lines joined by newlines) in one write per handler, in each handler's format.

    The stdout handler is written directly (under its lock): the logging module's round trip (filters,
    formatter, two lock passes) cost twice the write itself. Other handlers (the rotating file) take it."""
    if not entries:
        return
    level = max(e[1] for e in entries)
    for handler, fmt in _SINKS:
        text = "\n".join(lines[fmt] for _, _, lines in entries)
        if type(handler) is _StdoutHandler and not handler.filters and level >= handler.level:
            handler.acquire()
            try:
                stream = sys.stdout
                stream.write(text + "\n")
                stream.flush()
            except Exception:  # noqa: BLE001 - like logging: report on stderr, never fail the caller
                handler.handleError(_Rendered(entries[0][0], level, text))
            finally:
                handler.release()
        else:
            handler.handle(_Rendered(entries[0][0], level, text))


# Whether log_request_line may build its JSON line directly: set by configure_logging (JSON only, INFO enabled).
_fast_lines = False


def log_request_line(logger: str, event: str, fields: dict) -> None:
    """An INFO line of the request being served (the worker's hypervector_operation_completed): the line
    `get_logger(logger).info(event, **fields)` would write, with the request scope's correlation id and the
    trace ids, built without structlog's processor chain when the output is JSON (bindings made with
    structlog.contextvars are not merged on this road), and rendered when it is written (`_RequestLine`):
    `fields` must not change afterwards. Other formats take the usual road."""
    if not _fast_lines:
        get_logger(logger).info(event, **fields)
        return
    scope = REQUEST_SCOPE.get()
    _emit(logger, logging.INFO, _RequestLine(logger, event, fields, scope, _trace_ids(scope), time.time_ns()))


class _RequestLine:
    """A log_request_line line: what it says is taken when it is logged (fields, time, the request's ids), its
    JSON is rendered when it is written. On an event loop that is at the end of the iteration, together with
    the other lines of that iteration: one loop over them instead of a render in the middle of each request,
    where its steps, timed in place on the 2-core EPYC, cost 4-5 times what they cost in a loop. Stands for the
    {format: text} dict of the other lines; only "json" exists on this road (`_fast_lines`)."""

    __slots__ = ("logger", "event", "fields", "scope", "ids", "time_ns", "_text")

    def __init__(self, logger: str, event: str, fields: dict, scope: RequestScope | None,
                 ids: tuple[str, str] | None, time_ns: int) -> None:
        self.logger, self.event, self.fields, self.scope, self.ids, self.time_ns = \
            logger, event, fields, scope, ids, time_ns
        self._text: str | None = None

    def __getitem__(self, fmt: str) -> str:
        if self._text is None:
            line = _add_ids({"event": self.event, **self.fields}, self.scope, self.ids)
            line["level"] = "info"
            line["logger"] = self.logger
            line["timestamp"] = _iso_at(self.time_ns)
            self._text = orjson.dumps(line, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        return self._text


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter for standard records; structlog lines arrive rendered and pass through as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record, _Rendered):
            return record.msg
        return super().format(record)


def get_logger(name: str | None = None):
    return structlog.get_logger(name or "hd_compute")


_generation = 0  # how many times configure_logging ran


class LoggerCache:
    """`log = LoggerCache("hd_compute.service")`, then `log().info(...)`: a bound logger for hot paths.

    `get_logger(name).info(...)` binds a new logger for every line (about 5 us, a quarter of a JSON line); this
    binds once and again only after configure_logging changed the set-up."""

    __slots__ = ("name", "_logger", "_generation")

    def __init__(self, name: str) -> None:
        self.name, self._logger, self._generation = name, None, -1

    def __call__(self):
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
