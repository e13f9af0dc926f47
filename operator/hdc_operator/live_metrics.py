"""A workload's live figures from Prometheus, for people: `hdcctl status --prometheus URL` and `make demo`.

    queries = live_queries("hdc-demo", "hdc-baselines", window="10s")   # pure: name -> PromQL
    live = fetch_live_metrics("http://127.0.0.1:9090", "hdc-demo", "hdc-baselines")   # LiveMetrics
    # PrometheusUnavailable (its message names the URL and the cause) when Prometheus cannot answer

Every query selects `{namespace="<ns>", workload="<name>"}` (hdc_operator.metrics_source.label_selector), the
target labels the ServiceMonitor gives every worker series, and reads the same worker metrics as the dashboards:

    requests/s    sum(rate(hdc_operation_total{sel}[w]))
    hv ops/s      sum(rate(hdc_hypervector_operations_total{sel}[w]))     the scaler's demand unit
    errors/s      sum(rate(hdc_operation_errors_total{sel}[w]))
    p50/p95/p99   histogram_quantile(q, sum by (le) (rate(hdc_operation_duration_seconds_bucket{sel}[w])))
    per operation the request rate and p95 by `operation`
    targets up    count(up{sel} == 1)
    alerts        ALERTS{sel}  (alertstate firing / pending)

The autoscaler's queries (demand, capacity, freshness) stay in metrics_source; this module is for display.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from hdc_operator.metrics_source import label_selector

DEFAULT_WINDOW = "1m"


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not answer; the message names its URL and why."""


def live_queries(namespace: str, workload: str, window: str = DEFAULT_WINDOW) -> dict[str, str]:
    """The PromQL behind LiveMetrics, by field name (pure)."""
    sel = label_selector(namespace, workload)
    buckets = f"sum by (le) (rate(hdc_operation_duration_seconds_bucket{sel}[{window}]))"
    return {
        "targets_up": f"count(up{sel} == 1)",
        "requests_per_s": f"sum(rate(hdc_operation_total{sel}[{window}]))",
        "hypervector_ops_per_s": f"sum(rate(hdc_hypervector_operations_total{sel}[{window}]))",
        "errors_per_s": f"sum(rate(hdc_operation_errors_total{sel}[{window}]))",
        "p50": f"histogram_quantile(0.5, {buckets})",
        "p95": f"histogram_quantile(0.95, {buckets})",
        "p99": f"histogram_quantile(0.99, {buckets})",
        "by_operation_rate": f"sum by (operation) (rate(hdc_operation_total{sel}[{window}]))",
        "by_operation_p95": "histogram_quantile(0.95, sum by (operation, le) "
        f"(rate(hdc_operation_duration_seconds_bucket{sel}[{window}])))",
        "alerts": f"ALERTS{sel}",
    }


@dataclass
class LiveMetrics:
    targets_up: int = 0
    requests_per_s: float | None = None
    hypervector_ops_per_s: float | None = None
    errors_per_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    by_operation: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # op -> (req/s, p95 ms)
    firing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def error_ratio(self) -> float | None:
        """Failed / all operations over the window; None without traffic."""
        if not self.requests_per_s or self.errors_per_s is None:
            return None
        return self.errors_per_s / self.requests_per_s

    def as_dict(self) -> dict:
        return {
            "targetsUp": self.targets_up,
            "requestsPerSec": self.requests_per_s,
            "hypervectorOpsPerSec": self.hypervector_ops_per_s,
            "errorsPerSec": self.errors_per_s,
            "errorRatio": self.error_ratio,
            "latencyMs": {"p50": self.p50_ms, "p95": self.p95_ms, "p99": self.p99_ms},
            "byOperation": {op: {"requestsPerSec": r, "p95Ms": p} for op, (r, p) in self.by_operation.items()},
            "firingAlerts": self.firing,
            "pendingAlerts": self.pending,
        }


def query_prometheus(url: str, promql: str, timeout: float = 5) -> list[dict]:
    """The instant vector of `promql`; PrometheusUnavailable for every failure (unreachable, error, not JSON)."""
    full = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode(errors="replace").strip()
        raise PrometheusUnavailable(f"Prometheus at {url} answered HTTP {exc.code} to {promql!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusUnavailable(f"Prometheus at {url} is unreachable: {reason}") from None
    except ValueError:
        raise PrometheusUnavailable(f"Prometheus at {url} did not answer JSON (is it Prometheus?)") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusUnavailable(
            f"Prometheus at {url}: query {promql!r} failed: {body.get('error') if isinstance(body, dict) else body}"
        )
    return (body.get("data") or {}).get("result") or []


def _number(result: list[dict], default: float | None = None) -> float | None:
    if not result:
        return default
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else default  # histogram_quantile of no samples is NaN


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def fetch_live_metrics(
    url: str,
    namespace: str,
    workload: str,
    window: str = DEFAULT_WINDOW,
    query: Callable[[str, str], list[dict]] = query_prometheus,
) -> LiveMetrics:
    """LiveMetrics of one workload; PrometheusUnavailable when Prometheus cannot answer."""
    q = live_queries(namespace, workload, window)
    live = LiveMetrics()
    live.targets_up = int(_number(query(url, q["targets_up"]), 0))
    live.requests_per_s = _number(query(url, q["requests_per_s"]))
    live.hypervector_ops_per_s = _number(query(url, q["hypervector_ops_per_s"]))
    live.errors_per_s = _number(query(url, q["errors_per_s"]), 0.0 if live.requests_per_s is not None else None)
    live.p50_ms, live.p95_ms, live.p99_ms = (_ms(_number(query(url, q[p]))) for p in ("p50", "p95", "p99"))
    rates = {r["metric"].get("operation", "?"): float(r["value"][1]) for r in query(url, q["by_operation_rate"])}
    p95 = {r["metric"].get("operation", "?"): _ms(_number([r])) for r in query(url, q["by_operation_p95"])}
    live.by_operation = {op: (rate, p95.get(op)) for op, rate in sorted(rates.items())}
    alerts = query(url, q["alerts"])
    live.firing = sorted({a["metric"]["alertname"] for a in alerts if a["metric"].get("alertstate") == "firing"})
    live.pending = sorted({a["metric"]["alertname"] for a in alerts if a["metric"].get("alertstate") == "pending"})
    return live


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    """A figure for a table: "-" when there is none, else with thousands separators."""
    return "-" if value is None else f"{value:,.{digits}f}{unit}"
