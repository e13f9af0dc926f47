"""WorkerSettings: the worker's configuration, from HDC_* environment variables overridden by CLI flags.

Every variable is parsed and checked here, once, at start-up; a bad value stops the worker with an error that
names the variable (or the flag) and says what was expected. docs/worker-api.md lists them all.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

VSA_NAMES = ("MAP", "BSC", "HRR", "FHRR")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "console")


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the environment variable or the setting."""


def _int(name: str, raw: Any, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(raw, bool):
        raise SettingsError(f"{name} must be an integer, got {raw!r}")
    try:
        value = int(raw) if not isinstance(raw, str) else int(raw.strip(), 10)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if isinstance(raw, float) and raw != value:
        raise SettingsError(f"{name} must be an integer, got {raw!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingsError(f"{name} must be {bound}, got {value}")
    return value


def _float(name: str, raw: Any, *, minimum: float, maximum: float | None = None, exclusive_min: bool = False) -> float:
    if isinstance(raw, bool):
        raise SettingsError(f"{name} must be a number, got {raw!r}")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    too_small = value <= minimum if exclusive_min else value < minimum
    if too_small or (maximum is not None and value > maximum):
        low = f"> {minimum}" if exclusive_min else f">= {minimum}"
        bound = low if maximum is None else f"{low} and <= {maximum}"
        raise SettingsError(f"{name} must be {bound}, got {value}")
    return value


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false (1/0, yes/no, on/off), got {raw!r}")


def _choice(name: str, raw: Any, choices: tuple[str, ...], *, upper: bool = False, lower: bool = False) -> str:
    text = str(raw).strip()
    text = text.upper() if upper else text.lower() if lower else text
    if text not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return text


def _device(name: str, raw: Any) -> str:
    text = str(raw).strip().lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise SettingsError(f"{name} must be auto, cpu, cuda or cuda:N, got {raw!r}")


def _text(name: str, raw: Any) -> str:
    text = str(raw).strip()
    if not text:
        raise SettingsError(f"{name} must not be empty")
    return text


def _optional_text(name: str, raw: Any) -> str | None:
    text = "" if raw is None else str(raw).strip()
    return text or None


def _database_url(name: str, raw: Any) -> str | None:
    """A PostgreSQL URL for the shared state store (the password stays in the value, never in the message)."""
    text = _optional_text(name, raw)
    if text is None:
        return None
    # imported here: the state package loads torch, which `hdc-worker serve` must not load before it has set the
    # OpenMP wait policy (cli.prefer_passive_openmp_waits)
    from hd_compute.state.database import parse_postgres_url

    try:
        parse_postgres_url(text)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return text


STATE_BACKENDS = ("none", "local", "postgres")  # spec.state.backend of an HDCWorkload, as HDC_STATE_BACKEND


def _state_backend(backend: str | None, database_url: str | None) -> str:
    """The state backend the settings describe: HDC_STATE_BACKEND, or postgres when only a URL is given, else local;
    a URL goes with postgres and postgres needs one."""
    if backend is None:
        return "postgres" if database_url else "local"
    if backend == "postgres" and not database_url:
        raise SettingsError(
            "HDC_STATE_BACKEND=postgres needs HDC_STATE_DATABASE_URL (the database every replica shares)"
        )
    if backend != "postgres" and database_url:
        raise SettingsError(f"HDC_STATE_DATABASE_URL is read only with HDC_STATE_BACKEND=postgres, not {backend}")
    return backend


def _positive(name: str, raw: Any) -> float:
    return _float(name, raw, minimum=0.0, exclusive_min=True)


def _timeout(name: str, raw: Any) -> float:
    return _float(name, raw, minimum=0.0, maximum=3600.0, exclusive_min=True)


# field -> (environment variable, parser). Order is the documentation order; the defaults are WorkerSettings'.
_SPEC: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "dimension": ("HDC_DIMENSION", lambda n, v: _int(n, v, minimum=1, maximum=1 << 24)),
    "vsa": ("HDC_VSA", lambda n, v: _choice(n, v, VSA_NAMES, upper=True)),
    "device": ("HDC_DEVICE", _device),
    "port": ("HDC_PORT", lambda n, v: _int(n, v, minimum=0, maximum=65535)),
    "host": ("HDC_HOST", _text),
    "max_body_bytes": ("HDC_MAX_BODY_BYTES", lambda n, v: _int(n, v, minimum=1024)),
    "max_json_body_bytes": ("HDC_MAX_JSON_BODY_BYTES", lambda n, v: _int(n, v, minimum=1024)),
    "max_inflight_body_bytes": ("HDC_MAX_INFLIGHT_BODY_BYTES", lambda n, v: _int(n, v, minimum=1024)),
    "max_response_bytes": ("HDC_MAX_RESPONSE_BYTES", lambda n, v: _int(n, v, minimum=1024)),
    "max_allocation_bytes": ("HDC_MAX_ALLOCATION_BYTES", lambda n, v: _int(n, v, minimum=1 << 20)),
    "header_timeout_seconds": ("HDC_HEADER_TIMEOUT_SECONDS", _timeout),
    "body_timeout_seconds": ("HDC_BODY_TIMEOUT_SECONDS", _timeout),
    "state_dir": ("HDC_STATE_DIR", _text),
    "state_backend": ("HDC_STATE_BACKEND", lambda n, v: _choice(n, v, STATE_BACKENDS, lower=True)),
    "database_url": ("HDC_STATE_DATABASE_URL", _database_url),
    "read_wait_seconds": ("HDC_READ_WAIT_SECONDS", lambda n, v: _float(n, v, minimum=0.0, maximum=60.0)),
    "idempotency_ttl_seconds": ("HDC_IDEMPOTENCY_TTL_SECONDS", _positive),
    "batch_max_size": ("HDC_BATCH_MAX_SIZE", lambda n, v: _int(n, v, minimum=1)),
    "batch_max_wait_ms": ("HDC_BATCH_MAX_WAIT_MS", lambda n, v: _float(n, v, minimum=0.0, maximum=10_000.0)),
    "health_cuda_memory_mb": ("HDC_HEALTH_CUDA_MEMORY_MB", lambda n, v: _float(n, v, minimum=0.0)),
    "health_memory_percent": ("HDC_HEALTH_MEMORY_PERCENT", lambda n, v: _float(n, v, minimum=0.0, maximum=100.0)),
    "health_disk_percent": ("HDC_HEALTH_DISK_PERCENT", lambda n, v: _float(n, v, minimum=0.0, maximum=100.0)),
    "log_level": ("HDC_LOG_LEVEL", lambda n, v: _choice(n, v, LOG_LEVELS, upper=True)),
    "log_format": ("HDC_LOG_FORMAT", lambda n, v: _choice(n, v, LOG_FORMATS, lower=True)),
    "log_file": ("HDC_LOG_FILE", _optional_text),
    "observability": ("HDC_OBSERVABILITY", _bool),
    "benchmark_enabled": ("HDC_BENCHMARK_ENABLED", _bool),
    "benchmark_interval_seconds": ("HDC_BENCHMARK_INTERVAL_SECONDS", _positive),
    "benchmark_degradation_threshold": ("HDC_BENCHMARK_DEGRADATION_THRESHOLD", _positive),
    "benchmark_database_url": ("HDC_BENCHMARK_DATABASE_URL", _optional_text),
    "shutdown_grace_seconds": ("HDC_SHUTDOWN_GRACE_SECONDS", lambda n, v: _float(n, v, minimum=1.0, maximum=3600.0)),
    "admin_faults": ("HDC_ADMIN_FAULTS", _bool),
}

ENV_VARS: dict[str, str] = {name: spec[0] for name, spec in _SPEC.items()}


@dataclass
class WorkerSettings:
    dimension: int = 10_000
    vsa: str = "MAP"
    device: str = "auto"
    port: int = 8080
    host: str = "0.0.0.0"
    max_body_bytes: int = 64 << 20  # a request body, and the unpacked arrays of an .npz body
    # JSON bodies: json parsing holds the GIL for the whole body, so no thread frees the event loop from it; bulk
    # vectors travel as .npz, whose decoding runs off the loop. The limit is at most max_body_bytes.
    max_json_body_bytes: int = 4 << 20
    # the bodies of all requests together, from their first byte to their answer (at least max_body_bytes): many
    # large requests at once are a 503 for some of them instead of the host's memory for all
    max_inflight_body_bytes: int = 256 << 20
    max_response_bytes: int = 64 << 20  # an encoded response (checked before computing where the size is known)
    max_allocation_bytes: int = 1 << 30  # what one request may make the worker allocate up front (new state)
    header_timeout_seconds: float = 15.0  # a connection's request head must be complete within this (keep-alive too)
    body_timeout_seconds: float = 30.0  # a request body must have arrived this long after its head, else 408
    state_dir: str = "./hdc-state"  # the SQLite state store (backend local); snapshot files imported once
    # none: no memories or classifiers (their routes answer 400 naming spec.state); local: SQLite in state_dir, one
    # process; postgres: database_url, shared by every replica. from_env: postgres with a database URL, else local.
    state_backend: str = "local"
    # the PostgreSQL state store every replica shares (postgresql+psycopg://user:pw@host/db); None: SQLite in state_dir
    database_url: str | None = field(default=None, repr=False)  # left out of repr: it may hold a password
    read_wait_seconds: float = 2.0  # how long a read waits for the X-HDC-Min-State-Version it asks for
    idempotency_ttl_seconds: float = 86_400.0  # how long the answer of an Idempotency-Key is kept
    batch_max_size: int = 256
    batch_max_wait_ms: float = 0.0  # an idle kernel does not wait for company; a busy one gathers (batching.py)
    health_cuda_memory_mb: float = 1000.0
    health_memory_percent: float = 90.0
    health_disk_percent: float = 85.0
    log_level: str = "INFO"
    log_format: str = "json"
    log_file: str | None = None
    observability: bool = True  # false: no per-request metrics, spans or log lines (errors are still counted)
    benchmark_enabled: bool = True
    benchmark_interval_seconds: float = 300.0
    benchmark_degradation_threshold: float = 0.1
    benchmark_database_url: str | None = None
    shutdown_grace_seconds: float = 25.0
    admin_faults: bool = False  # true: PUT/DELETE /admin/faults inject latency and errors (service/faults.py)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # free slot for embedding code/tests

    @classmethod
    def from_env(
        cls, overrides: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None
    ) -> "WorkerSettings":
        """Defaults <- HDC_* environment variables <- overrides (CLI flags; None values are ignored)."""
        env = os.environ if environ is None else environ
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = set(overrides) - set(_SPEC)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, (var, parse) in _SPEC.items():
            if name in overrides:
                values[name] = parse(name.replace("_", "-"), overrides[name])
            elif env.get(var) not in (None, ""):
                values[name] = parse(var, env[var])
        values["state_backend"] = _state_backend(values.get("state_backend"), values.get("database_url"))
        return cls(**values)

    @property
    def batch_max_wait_seconds(self) -> float:
        return self.batch_max_wait_ms / 1000.0

    @property
    def benchmark_url(self) -> str:
        if self.benchmark_database_url:
            return self.benchmark_database_url
        return "sqlite:///" + os.path.join(os.path.abspath(self.state_dir), "benchmarks.db")

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra", None)
        return out
