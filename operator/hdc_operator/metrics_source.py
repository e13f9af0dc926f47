"""The only module that talks to Prometheus: a workload's demand and capacity for the scaler.

    source = PrometheusMetricsSource("http://prometheus.monitoring:9090", timeout_seconds=5)
    observation = await source.observe("default", "my-workload")     # hdc_operator.scaling.MetricsObservation
    if observation.unavailable_reason: ...                              # never raises for a Prometheus problem
    await source.close()

PromQL (instant queries on /api/v1/query, `sel` = {namespace="<ns>", workload="<name>"}):

    demand    sum(rate(hdc_hypervector_operations_total{sel}[1m]))      hypervector ops/s of all replicas
    recent    sum(rate(hdc_hypervector_operations_total{sel}[20s]))     the same over a short window
    capacity  avg(hdc_capacity_ops_per_second{sel})                     one replica's measured capacity
    reporting count(up{sel} == 1)                                       replicas scraped successfully
    sampled   min(timestamp(up{sel}))                                   the oldest latest scrape

The demand is in hypervector operations per second, the unit of hdc_capacity_ops_per_second (the continuous
benchmark measures hypervectors per second); hdc_operation_total counts requests, whatever their size, so it is
not used for scaling. An observation is unavailable (unavailable_reason set, the scaler holds) when Prometheus
cannot be reached or answers an error, when no replica of the workload is scraped, when no replica has measured
its capacity yet (and the spec gives none), or when the latest scrape is older than `max_age_seconds`.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp

from hdc_operator.scaling import MetricsObservation

__all__ = ["PrometheusMetricsSource", "MetricsUnavailable", "queries", "label_selector"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_selector(namespace: str, workload: str) -> str:
    for name, value in (("namespace", namespace), ("workload", workload)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return f'{{namespace="{_escape(namespace)}", workload="{_escape(workload)}"}}'


def _duration(name: str, seconds: float) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 1:
        raise ValueError(f"{name} must be a number of seconds >= 1, got {seconds!r}")
    return f"{int(round(seconds))}s"


def queries(
    namespace: str, workload: str, window_seconds: float = 60, recent_window_seconds: float = 20
) -> dict[str, str]:
    """The PromQL the source runs, by name (pure; docs/autoscaling.md shows them)."""
    sel = label_selector(namespace, workload)
    w, r = _duration("window_seconds", window_seconds), _duration("recent_window_seconds", recent_window_seconds)
    return {
        "demand": f"sum(rate(hdc_hypervector_operations_total{sel}[{w}]))",
        "recent": f"sum(rate(hdc_hypervector_operations_total{sel}[{r}]))",
        "capacity": f"avg(hdc_capacity_ops_per_second{sel})",
        "reporting": f"count(up{sel} == 1)",
        "sampled": f"min(timestamp(up{sel}))",
    }


class MetricsUnavailable(Exception):
    """A query that gave no usable answer; str() is the reason (observe() turns it into unavailable_reason)."""


class PrometheusMetricsSource:
    """Reads a workload's MetricsObservation from the Prometheus HTTP API (aiohttp; one session, reused)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 5.0,
        window_seconds: float = 60,
        recent_window_seconds: float = 20,
        max_age_seconds: float = 60.0,
        session: aiohttp.ClientSession | None = None,
        headers: dict[str, str] | None = None,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http:// or https:// Prometheus address, got {url!r}")
        for name, value in (("timeout_seconds", timeout_seconds), ("max_age_seconds", max_age_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        _duration("window_seconds", window_seconds)
        _duration("recent_window_seconds", recent_window_seconds)
        self.url = url.rstrip("/")
        self.timeout_seconds = float(timeout_seconds)
        self.window_seconds, self.recent_window_seconds = window_seconds, recent_window_seconds
        self.max_age_seconds = float(max_age_seconds)
        self._session, self._own_session = session, session is None
        self._headers = dict(headers or {})

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> "PrometheusMetricsSource":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
            self._own_session = True
        return self._session

    async def query(self, promql: str) -> list[dict]:
        """The instant vector of `promql`; MetricsUnavailable (its message is the reason) for every failure."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            async with self._client().get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=timeout
            ) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    raise MetricsUnavailable(f"Prometheus answered {resp.status} without JSON for {promql!r}") from None
        except asyncio.TimeoutError:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} did not answer within {self.timeout_seconds:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} is unreachable: {type(exc).__name__}: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise MetricsUnavailable(f"query {promql!r} failed: {error}")
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise MetricsUnavailable(f"query {promql!r} returned {data.get('resultType')!r}, expected a vector")
        return data.get("result") or []

    @staticmethod
    def _value(result: list[dict]) -> float | None:
        if not result:
            return None
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    async def observe(
        self, namespace: str, workload: str, *, need_capacity: bool = True, now: float | None = None
    ) -> MetricsObservation:
        """The workload's MetricsObservation; unavailable_reason says why it cannot be used (never raises for that).

        need_capacity False: spec.autoscaling.targetOpsPerReplica is set, so a missing measurement is fine.
        """
        q = queries(namespace, workload, self.window_seconds, self.recent_window_seconds)
        try:
            results = await asyncio.gather(
                *(self.query(q[name]) for name in ("demand", "recent", "capacity", "reporting", "sampled"))
            )
        except MetricsUnavailable as exc:
            return MetricsObservation(None, None, None, None, unavailable_reason=str(exc))
        demand, recent, capacity, reporting, sampled = (self._value(r) for r in results)
        reporting_n = int(reporting) if reporting is not None else 0
        where = f"{namespace}/{workload}"
        if sampled is None:
            return MetricsObservation(
                None, capacity, None, 0, unavailable_reason=f"no series: Prometheus scrapes no replica of {where}"
            )
        now = time.time() if now is None else now
        age = now - sampled
        if age > self.max_age_seconds:
            return MetricsObservation(
                demand,
                capacity,
                sampled,
                reporting_n,
                unavailable_reason=f"stale: the latest scrape of {where} is {age:.0f} s old "
                f"(limit {self.max_age_seconds:g} s)",
            )
        if reporting_n == 0:
            return MetricsObservation(
                None, capacity, sampled, 0, unavailable_reason=f"no replica of {where} is up (every scrape fails)"
            )
        if need_capacity and capacity is None:
            return MetricsObservation(
                demand,
                None,
                sampled,
                reporting_n,
                unavailable_reason=f"no series: no replica of {where} has measured hdc_capacity_ops_per_second yet",
            )
        # Replicas are scraped but no counter exists yet: nothing was ever served, the demand is 0.
        return MetricsObservation(
            0.0 if demand is None else demand, capacity, sampled, reporting_n, recent_demand_ops_per_second=recent
        )
