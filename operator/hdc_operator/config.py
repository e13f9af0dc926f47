"""The operator's settings: flags override HDC_OPERATOR_* environment variables, which override defaults.

| flag                    | environment                        | default                 |
|-------------------------|------------------------------------|-------------------------|
| --namespace NS (repeat) | HDC_OPERATOR_NAMESPACES (a,b,c)    | (none: all namespaces)  |
| --all-namespaces        | HDC_OPERATOR_ALL_NAMESPACES=true   | true when no namespace  |
| --metrics-port          | HDC_OPERATOR_METRICS_PORT          | 8081 (0: a free port)   |
| --liveness-port         | HDC_OPERATOR_LIVENESS_PORT         | 8082 (0: off)           |
| --prometheus-url        | HDC_OPERATOR_PROMETHEUS_URL        | "" (none)               |
| --resync-interval       | HDC_OPERATOR_RESYNC_INTERVAL       | 60 (seconds)            |
| --resync-jitter         | HDC_OPERATOR_RESYNC_JITTER         | 0.1 (+0..10% a cycle)   |
| --autoscale-interval    | HDC_OPERATOR_AUTOSCALE_INTERVAL    | 15 (s, scaler tick of mode operator) |
| --peering NAME          | HDC_OPERATOR_PEERING               | "" (standalone)         |
| --priority N            | HDC_OPERATOR_PRIORITY              | random 1..10^6          |
| --workers N             | HDC_OPERATOR_WORKERS               | 8                       |
| --log-level, --log-format | HDC_OPERATOR_LOG_LEVEL / _FORMAT | INFO, json              |
|                         | HDC_OPERATOR_PEERING_LIFETIME      | 60 (s a peer counts as alive) |
|                         | HDC_OPERATOR_CAPABILITY_TTL        | 30 (s between CRD discovery) |
|                         | HDC_OPERATOR_BACKOFF_MAX           | 300 (s, longest retry delay) |
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_PREFIX = "HDC_OPERATOR_"


class ConfigError(ValueError):
    """A setting with a bad value; the message names the flag/variable and what was expected."""


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    metrics_port: int = 8081
    liveness_port: int = 8082
    prometheus_url: str = ""
    resync_interval_s: float = 60.0
    resync_jitter: float = 0.1
    autoscale_interval_s: float = 15.0
    peering: str = ""
    priority: int = field(default_factory=lambda: random.randint(1, 1_000_000))
    workers: int = 8
    log_level: str = "INFO"
    log_format: str = "json"
    capability_ttl_s: float = 30.0
    peering_lifetime_s: int = 60
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _number(name: str, value, lo, hi, kind: type = float):
    what = "an integer" if kind is int else "a number"
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {what} from {lo} to {hi}, got {value!r}") from None
    if not lo <= number <= hi:
        raise ConfigError(f"{name} must be {what} from {lo} to {hi}, got {number}")
    return number


def _int(name: str, value, lo: int, hi: int) -> int:
    return _number(name, value, lo, hi, int)


def _float(name: str, value, lo: float, hi: float) -> float:
    return _number(name, value, lo, hi, float)


def load_config(overrides: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Settings from `env` (default os.environ) with `overrides` (flag values; None = not given) on top."""
    env = os.environ if env is None else env
    given = {k: v for k, v in (overrides or {}).items() if v is not None and v != ()}

    def pick(key: str, default):
        if key in given:
            return given[key], f"--{key.replace('_', '-')}"
        name = ENV_PREFIX + key.upper()
        if name in env:
            return env[name], name
        return default, f"--{key.replace('_', '-')}"

    namespaces_value = given.get("namespaces")
    if namespaces_value is None:
        raw = env.get(ENV_PREFIX + "NAMESPACES", "")
        namespaces_value = [n.strip() for n in raw.split(",") if n.strip()]
        ns_source = ENV_PREFIX + "NAMESPACES"
    else:
        ns_source = "--namespace"
    namespaces = tuple(dict.fromkeys(namespaces_value))
    for ns in namespaces:
        if not _DNS_LABEL.match(ns) or len(ns) > 63:
            raise ConfigError(f"{ns_source}: {ns!r} is not a namespace name (a DNS label)")
    all_ns, all_source = pick("all_namespaces", False)
    if isinstance(all_ns, str):
        all_ns = _bool(all_source, all_ns)
    if all_ns and namespaces:
        raise ConfigError("--all-namespaces and --namespace/HDC_OPERATOR_NAMESPACES exclude each other")

    values: dict[str, object] = {"namespaces": namespaces}
    v, src = pick("metrics_port", 8081)
    values["metrics_port"] = _int(src, v, 0, 65535)
    v, src = pick("liveness_port", 8082)
    values["liveness_port"] = _int(src, v, 0, 65535)
    v, src = pick("prometheus_url", "")
    url = str(v)
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError(f"{src} must be an http(s) URL such as http://prometheus:9090, got {url!r}")
    values["prometheus_url"] = url.rstrip("/")
    v, src = pick("resync_interval", 60.0)
    values["resync_interval_s"] = _float(src, v, 1.0, 86400.0)
    v, src = pick("resync_jitter", 0.1)
    values["resync_jitter"] = _float(src, v, 0.0, 1.0)
    v, src = pick("autoscale_interval", 15.0)
    values["autoscale_interval_s"] = _float(src, v, 1.0, 3600.0)
    v, src = pick("peering", "")
    peering = str(v)
    if peering and not _DNS_LABEL.match(peering):
        raise ConfigError(f"{src} must be a DNS label (the KopfPeering object's name), got {peering!r}")
    values["peering"] = peering
    v, src = pick("priority", None)
    if v is not None:
        values["priority"] = _int(src, v, 0, 2**31 - 1)
    v, src = pick("workers", 8)
    values["workers"] = _int(src, v, 1, 64)
    v, src = pick("log_level", "INFO")
    level = str(v).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{src} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {v!r}")
    values["log_level"] = level
    v, src = pick("log_format", "json")
    if v not in ("json", "console"):
        raise ConfigError(f"{src} must be json or console, got {v!r}")
    values["log_format"] = str(v)
    v, src = pick("peering_lifetime", 60)
    values["peering_lifetime_s"] = _int(src, v, 5, 3600)
    v, src = pick("capability_ttl", 30.0)
    values["capability_ttl_s"] = _float(src, v, 0.0, 3600.0)
    v, src = pick("backoff_max", 300.0)
    values["backoff_max_s"] = _float(src, v, 1.0, 3600.0)
    return OperatorConfig(**values)
