"""The operator's scaler wired into the reconcile loop (spec.autoscaling.mode: operator).

On a reconcile of a workload in mode operator (every sync, plus the scaling tick, `tick_forever`, which queues
those workloads every --autoscale-interval seconds), `Autoscaler.step`:

1. observes demand and capacity through metrics_source.PrometheusMetricsSource (the operator's
   --prometheus-url; none configured -> the scaler sees no data: hold, ScalingActive=False MetricsUnavailable);
2. calls scaling.decide(spec.replicas, observation, config, history, now, ready_replicas=<Deployment's ready>);
3. when the decision differs from spec.replicas, patches spec.replicas through the HDCWorkload's scale
   subresource (the path `kubectl scale` and an HPA use), stores the history in the annotation
   `hdcompute.io/autoscaler-history`, posts an Event `Autoscaled` and counts
   hdc_operator_autoscaler_scales_total{direction};
4. returns the status fields (scaling.status_fields) and the ScalingActive condition for the reconcile's one
   status write (`merge_status`, pure).

The history lives in memory per workload (as the HPA controller's does) and is persisted with every scale, so a
restarted operator (or a peer taking over) keeps the rate limits and the scale events; the recommendations of
the windows since the last scale are lost on a restart, as on an HPA controller restart. Writing the history on
every evaluation would write to an idle workload every tick (each evaluation adds a timed recommendation).

Writes only on change: the status is rewritten when desiredReplicas, lastScale*, the condition's status or
reason change, or an observed value moves by more than OBSERVED_CHANGE (relative); an idle workload in mode
operator whose demand stays constant costs Prometheus queries, no API write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from .names import GROUP
from .scaling import (
    Decision,
    History,
    InvalidAutoscaling,
    MetricsObservation,
    ScalerConfig,
    decide,
    scaling_active_condition,
    status_fields,
)

log = structlog.get_logger("hdc_operator.autoscaler")

HISTORY_ANNOTATION = f"{GROUP}/autoscaler-history"
CONDITION = "ScalingActive"
AUTOSCALER_KEYS = (
    "desiredReplicas",
    "lastScaleTime",
    "lastScaleReason",
    "observedDemandOpsPerSec",
    "observedCapacityOpsPerSec",
    "throughputOpsPerSec",
)
OBSERVED_KEYS = ("observedDemandOpsPerSec", "observedCapacityOpsPerSec", "throughputOpsPerSec")
OBSERVED_CHANGE = 0.05  # observed demand/capacity rewritten in status when they move by more than 5 %
MIN_EVALUATION_INTERVAL_S = 5.0  # a burst of pod events does not query Prometheus on each reconcile
NO_PROMETHEUS = "no Prometheus URL configured (--prometheus-url / HDC_OPERATOR_PROMETHEUS_URL)"

Key = tuple[str, str]


def _now_iso(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Step:
    """What one evaluation gives the reconcile's status write (None fields: nothing to say)."""

    fields: Mapping  # status_fields(...) of the decision
    condition: Mapping  # the ScalingActive condition (no lastTransitionTime yet)
    decision: Decision | None = None
    scaled_from: int | None = None  # spec.replicas before a scale this step made


def history_from_annotation(body: Mapping) -> History:
    """The persisted history of a workload, an empty one when absent or unreadable (as after an HPA restart)."""
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(HISTORY_ANNOTATION)
    if not raw:
        return History()
    try:
        return History.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        log.info("autoscaler_history_unreadable", error=str(exc))
        return History()


def history_annotation(history: History) -> str:
    return json.dumps(history.to_dict(), separators=(",", ":"))


def _moved(old, new) -> bool:
    if old is None or new is None:
        return old != new
    try:
        old, new = float(old), float(new)
    except (TypeError, ValueError):
        return True
    if not (math.isfinite(old) and math.isfinite(new)):
        return old != new
    return abs(new - old) > OBSERVED_CHANGE * max(abs(old), abs(new), 1e-9) and abs(new - old) > 1e-6


def merge_status(new: Mapping, stored: Mapping, step: Step | None, now_iso: str) -> tuple[dict, bool]:
    """status.compute_status's `new` with the autoscaler's fields and ScalingActive condition merged in.

    Returns (status to write, whether the autoscaler's part differs from `stored` enough to write). Observed
    values that moved by at most OBSERVED_CHANGE keep the stored number, and the condition keeps its stored
    message while its status and reason stay, so a steady workload is not rewritten on every evaluation.
    """
    out = dict(new)
    if step is None:
        return out, False
    changed = False
    for key in AUTOSCALER_KEYS:
        if key not in step.fields:
            if key in stored:
                out[key] = stored[key]  # e.g. the last measured demand while metrics are unavailable
            continue
        value = step.fields[key]
        if key in OBSERVED_KEYS:
            if _moved(stored.get(key), value):
                out[key], changed = value, True
            elif key in stored:
                out[key] = stored[key]
        else:
            out[key] = value
            changed = changed or stored.get(key) != value
    conditions = [dict(c) for c in out.get("conditions") or () if c.get("type") != CONDITION]
    old = next((c for c in stored.get("conditions") or () if c.get("type") == CONDITION), None)
    cond = dict(step.condition)
    same = old is not None and old.get("status") == cond["status"] and old.get("reason") == cond["reason"]
    if same and not changed:
        cond = dict(old)  # keep the stored message: it carries numbers that change every evaluation
    else:
        cond["lastTransitionTime"] = (
            old.get("lastTransitionTime")
            if old and old.get("status") == cond["status"] and old.get("lastTransitionTime")
            else now_iso
        )
        cond["message"] = str(cond.get("message", ""))[:32768]
        changed = changed or not same
    out["conditions"] = conditions + [cond]
    return out, changed


def evaluate(
    body: Mapping,
    spec: Mapping,
    history: History,
    observation: MetricsObservation | None,
    now: float,
    ready_replicas: int | None,
) -> tuple[Decision, int]:
    """decide() for a workload body (pure): (decision, current spec.replicas)."""
    config = ScalerConfig.from_spec(spec.get("autoscaling"))
    current = int((body.get("spec") or {}).get("replicas") or 0)
    return decide(current, observation, config, history, now, ready_replicas=ready_replicas), current


class Autoscaler:
    """Per-operator state of mode operator: the metrics source, the in-memory histories, the API writes."""

    def __init__(
        self,
        api,
        metrics,
        prometheus_url: str,
        *,
        io: Callable,
        clock: Callable[[], float] = time.time,
        source=None,
        min_interval_s: float = MIN_EVALUATION_INTERVAL_S,
    ):
        self.api, self.metrics, self.io, self.clock = api, metrics, io, clock
        self.prometheus_url = prometheus_url
        if source is None and prometheus_url:
            from .metrics_source import PrometheusMetricsSource

            source = PrometheusMetricsSource(prometheus_url)
        self.source = source
        self.min_interval_s = min_interval_s
        self._history: dict[Key, tuple[str | None, History]] = {}  # key -> (annotation it came from, history)
        self._last: dict[Key, tuple[float, int, str, Step]] = {}  # key -> (time, generation, rv, last step)
        # key -> lastScaleTime/lastScaleReason of our last scale: the reconcile after our scale patch may read a
        # watch-cache body whose status predates our status write, and must not write the older values back.
        self._last_scale: dict[Key, dict] = {}
        self._active: dict[Key, str] = {}  # key -> ScalingActive status last seen ("True"/"False")
        self._warned: set[Key] = set()  # workloads whose metrics loss got a Warning Event

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()

    def forget(self, key: Key) -> None:
        self._history.pop(key, None)
        self._last.pop(key, None)
        self._last_scale.pop(key, None)
        self._active.pop(key, None)
        self._warned.discard(key)

    def history(self, key: Key, body: Mapping) -> History:
        annotation = ((body.get("metadata") or {}).get("annotations") or {}).get(HISTORY_ANNOTATION)
        known = self._history.get(key)
        if known is not None and known[0] == annotation:
            return known[1]
        history = history_from_annotation(body)  # first sight, or another peer scaled it meanwhile
        self._history[key] = (annotation, history)
        return history

    async def observe(self, namespace: str, name: str, config: ScalerConfig) -> MetricsObservation | None:
        if self.source is None:
            return MetricsObservation(None, None, None, unavailable_reason=NO_PROMETHEUS)
        return await self.source.observe(namespace, name, need_capacity=config.target_ops_per_replica is None)

    async def step(self, key: Key, body: Mapping, spec: Mapping, deployment: Mapping | None) -> Step | None:
        """One evaluation for a workload in mode operator (None for other modes); scales when it must."""
        if (spec.get("autoscaling") or {}).get("mode") != "operator":
            self.forget(key)
            return None
        meta = body.get("metadata") or {}
        generation, rv = int(meta.get("generation") or 0), str(meta.get("resourceVersion") or "")
        now = self.clock()
        last = self._last.get(key)
        if (
            last is not None
            and last[1] == generation
            and (now - last[0] < self.min_interval_s or last[2] == rv and last[3].scaled_from is not None)
        ):
            # Evaluated moments ago, or our scale has not reached the watch cache yet: reuse, do not re-scale.
            return Step(last[3].fields, last[3].condition, last[3].decision)
        try:
            config = ScalerConfig.from_spec(spec.get("autoscaling"))
        except InvalidAutoscaling as exc:
            return Step({}, {"type": CONDITION, "status": "False", "reason": "InvalidSpec", "message": str(exc)})
        observation = await self.observe(*key, config)
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0) if deployment else None
        history = self.history(key, body)
        decision, current = evaluate(body, spec, history, observation, now, ready)
        self.metrics.autoscaler_decisions.labels(reason=decision.reason).inc()
        fields = {**self._last_scale.get(key, {}), **status_fields(decision, observation, current, _now_iso(now))}
        step = Step(fields, scaling_active_condition(decision), decision)
        if decision.desired_replicas != current:
            annotation = history_annotation(decision.history)
            await self.io(self.api.patch_scale, key[0], key[1], decision.desired_replicas)
            direction = "up" if decision.desired_replicas > current else "down"
            self.metrics.autoscaler_scales.labels(direction=direction).inc()
            log.info(
                "autoscaled",
                namespace=key[0],
                name=key[1],
                replicas_from=current,
                replicas_to=decision.desired_replicas,
                reason=decision.reason,
                message=decision.message,
            )
            try:
                await self.io(self.api.patch_annotations, key[0], key[1], {HISTORY_ANNOTATION: annotation})
                self._history[key] = (annotation, decision.history)
            except Exception as exc:  # the scale is done; a lost history only resets the windows
                log.info("autoscaler_history_not_saved", namespace=key[0], name=key[1], error=str(exc))
                self._history[key] = (self._history.get(key, (None,))[0], decision.history)
            step = Step(step.fields, step.condition, decision, scaled_from=current)
            self._last_scale[key] = {k: fields[k] for k in ("lastScaleTime", "lastScaleReason")}
            await self.io(
                self.api.post_event,
                body,
                "Normal",
                "Autoscaled",
                f"scaled {direction} from {current} to {decision.desired_replicas} replicas: "
                f"{decision.reason}: {decision.message}",
            )
        else:
            annotation = self._history.get(key, (None,))[0]
            self._history[key] = (annotation, decision.history)
        await self._condition_event(key, body, step.condition)
        self._last[key] = (now, generation, rv, step)
        return step

    async def _condition_event(self, key: Key, body: Mapping, condition: Mapping) -> None:
        """A Warning Event when ScalingActive turns from True to False (metrics lost), and a Normal
        ScalingResumed when it turns back after such a Warning. A new workload whose replicas are not scraped
        yet (False from the start) gets no Warning."""
        before = self._active.get(key)
        if before is None:  # first sight since the operator started: what the workload's status says
            stored = next(
                (c for c in (body.get("status") or {}).get("conditions") or () if c.get("type") == CONDITION), None
            )
            before = stored.get("status") if stored else None
        self._active[key] = condition["status"]
        if before == "True" and condition["status"] == "False":
            self._warned.add(key)
            type_, reason, message = "Warning", condition["reason"], f"scaling paused: {condition['message']}"
        elif condition["status"] == "True" and key in self._warned:
            self._warned.discard(key)
            type_, reason, message = "Normal", "ScalingResumed", f"metrics available again: {condition['message']}"
        else:
            return
        try:
            await self.io(self.api.post_event, body, type_, reason, message)
        except Exception as exc:  # an Event is best effort
            log.info("event_not_posted", reason=reason, error=str(exc))

    async def tick_forever(
        self, interval_s: float, keys: Callable[[], list[Key]], enqueue: Callable[[Key], None]
    ) -> None:
        """The scaling tick: every interval, queue a reconcile of every workload in mode operator."""
        while True:
            await asyncio.sleep(interval_s)
            for key in keys():
                enqueue(key)


__all__ = [
    "Autoscaler",
    "Step",
    "merge_status",
    "evaluate",
    "history_from_annotation",
    "history_annotation",
    "HISTORY_ANNOTATION",
]
