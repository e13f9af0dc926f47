"""The operator's scaler (autoscaling.mode: operator): a pure function from metrics and state to replicas.

    config = ScalerConfig.from_spec(workload.spec["autoscaling"])
    history = History.from_dict(saved) if saved else History()       # the operator keeps it between calls
    decision = decide(current_replicas, observation, config, history, now=time.time())
    decision.desired_replicas, decision.reason, decision.message, decision.history

No kopf, Kubernetes client or network here (metrics_source.py fetches the MetricsObservation). Units: demand and
capacity are both *hypervector operations per second*: demand is
``sum(rate(hdc_hypervector_operations_total[w]))`` over the workload's replicas and capacity is
``hdc_capacity_ops_per_second``, which the continuous benchmark measures in hypervectors per second
(docs/autoscaling.md).

The algorithm, in order:
1. Missing or stale metrics (None, NaN, older than ``max_metric_age_seconds``): hold the current replicas
   (clamped to [min, max] only), reason ``MetricsUnavailable``. Never a scale-down on missing data.
2. Current replicas outside [min, max]: go to the bound (as the HPA does), nothing else.
3. Demand estimate: the rate over the long window (60 s), or the rate over a short window (20 s) when that one
   is above it by more than 2 tolerances (a burst: scale up before the long window catches up) or below it by
   more than half a tolerance (the burst is over: the scale-down window starts counting sooner).
4. Raw recommendation: ``ceil(demand / (capacity x targetUtilization))`` (capacity = targetOpsPerReplica when
   set, else the measured one), or the current replicas when ``demand / (current x capacity x
   targetUtilization)`` is within ``tolerancePercent`` of 1.
5. ``apply_behavior``: exactly the autoscaling/v2 HPA ``behavior`` (stabilization windows, then Pods/Percent
   policies per period with selectPolicy, then min/max), with the HPA's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, TypeGuard

__all__ = [
    "InvalidAutoscaling",
    "ScalingPolicy",
    "ScalingRules",
    "Behavior",
    "ScalerConfig",
    "MetricsObservation",
    "History",
    "Decision",
    "decide",
    "apply_behavior",
    "raw_recommendation",
    "estimate_demand",
    "metrics_problem",
    "record_scale",
    "status_fields",
    "scaling_active_condition",
    "DEFAULT_DOWNSCALE_STABILIZATION_SECONDS",
]

# kube-controller-manager --horizontal-pod-autoscaler-downscale-stabilization (default 5m): the scale-down
# window when behavior.scaleDown.stabilizationWindowSeconds is not given.
DEFAULT_DOWNSCALE_STABILIZATION_SECONDS = 300
_MAX_WINDOW = 3600  # autoscaling/v2 validation: stabilizationWindowSeconds in [0, 3600]
_MAX_PERIOD = 1800  # autoscaling/v2 validation: periodSeconds in (0, 1800]
_MAX_REPLICAS = 1_000_000
_SELECT = ("Max", "Min", "Disabled")
_TYPES = ("Pods", "Percent")


class InvalidAutoscaling(ValueError):
    """A bad spec.autoscaling value; `field` is its path, e.g. spec.autoscaling.behavior.scaleUp.policies[0].type."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _int(path: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAutoscaling(path, f"expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise InvalidAutoscaling(path, f"expected an integer in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return value


def _number(path: str, value: Any, lo: float, hi: float | None = None, *, exclusive_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidAutoscaling(path, f"expected a finite number, got {value!r}")
    if value < lo or (exclusive_lo and value == lo) or (hi is not None and value > hi):
        bound = f"({lo}" if exclusive_lo else f"[{lo}"
        raise InvalidAutoscaling(path, f"expected a number in {bound}, {hi if hi is not None else 'inf'}], got {value}")
    return float(value)


def _mapping(path: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidAutoscaling(path, f"expected an object, got {type(value).__name__}")
    return value


# --- behavior: autoscaling/v2 HorizontalPodAutoscalerBehavior ---------------------------------------------


@dataclass(frozen=True)
class ScalingPolicy:
    type: str  # "Pods" | "Percent"
    value: int  # > 0
    period_seconds: int  # 1..1800


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    select_policy: str  # "Max" | "Min" | "Disabled"
    policies: tuple[ScalingPolicy, ...]

    @property
    def longest_period(self) -> int:
        return max((p.period_seconds for p in self.policies), default=0)


def _rules(path: str, raw: Any, *, default_window: int, default_policies: tuple[ScalingPolicy, ...]) -> ScalingRules:
    raw = _mapping(path, raw)
    unknown = set(raw) - {"stabilizationWindowSeconds", "selectPolicy", "policies"}
    if unknown:
        raise InvalidAutoscaling(
            f"{path}.{sorted(unknown)[0]}",
            "unknown field; expected stabilizationWindowSeconds, selectPolicy or policies",
        )
    window = raw.get("stabilizationWindowSeconds")
    window = default_window if window is None else _int(f"{path}.stabilizationWindowSeconds", window, 0, _MAX_WINDOW)
    select = raw.get("selectPolicy")
    select = "Max" if select is None else select
    if select not in _SELECT:
        raise InvalidAutoscaling(f"{path}.selectPolicy", f"expected one of {', '.join(_SELECT)}, got {select!r}")
    policies_raw = raw.get("policies")
    if policies_raw is None or policies_raw == []:
        policies = default_policies
    else:
        if not isinstance(policies_raw, (list, tuple)):
            raise InvalidAutoscaling(f"{path}.policies", f"expected a list, got {type(policies_raw).__name__}")
        parsed: list[ScalingPolicy] = []
        for i, item in enumerate(policies_raw):
            p = f"{path}.policies[{i}]"
            item = _mapping(p, item)
            if item.get("type") not in _TYPES:
                raise InvalidAutoscaling(f"{p}.type", f"expected Pods or Percent, got {item.get('type')!r}")
            for key in ("value", "periodSeconds"):
                if key not in item:
                    raise InvalidAutoscaling(f"{p}.{key}", "is required")
            parsed.append(
                ScalingPolicy(
                    item["type"],
                    _int(f"{p}.value", item["value"], 1),
                    _int(f"{p}.periodSeconds", item["periodSeconds"], 1, _MAX_PERIOD),
                )
            )
        policies = tuple(parsed)
    return ScalingRules(window, select, policies)


@dataclass(frozen=True)
class Behavior:
    """autoscaling/v2 behavior with the HPA's defaults filled in (k8s pkg/apis/autoscaling/v2/defaults.go):
    scaleUp: window 0, Max of {100 % per 15 s, 4 pods per 15 s}; scaleDown: window 300 s, 100 % per 15 s."""

    scale_up: ScalingRules
    scale_down: ScalingRules

    @classmethod
    def from_spec(cls, raw: Mapping[str, Any] | None, path: str = "spec.autoscaling.behavior") -> "Behavior":
        raw = _mapping(path, raw)
        unknown = set(raw) - {"scaleUp", "scaleDown"}
        if unknown:
            raise InvalidAutoscaling(f"{path}.{sorted(unknown)[0]}", "unknown field; expected scaleUp or scaleDown")
        up = _rules(
            f"{path}.scaleUp",
            raw.get("scaleUp"),
            default_window=0,
            default_policies=(ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)),
        )
        down = _rules(
            f"{path}.scaleDown",
            raw.get("scaleDown"),
            default_window=DEFAULT_DOWNSCALE_STABILIZATION_SECONDS,
            default_policies=(ScalingPolicy("Percent", 100, 15),),
        )
        return cls(up, down)

    def to_spec(self) -> dict[str, Any]:
        """The camelCase form (what an autoscaling/v2 HPA's spec.behavior takes)."""

        def rules(r: ScalingRules) -> dict[str, Any]:
            return {
                "stabilizationWindowSeconds": r.stabilization_window_seconds,
                "selectPolicy": r.select_policy,
                "policies": [{"type": p.type, "value": p.value, "periodSeconds": p.period_seconds} for p in r.policies],
            }

        return {"scaleUp": rules(self.scale_up), "scaleDown": rules(self.scale_down)}


# --- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalerConfig:
    min_replicas: int = 1
    max_replicas: int = 10
    target_utilization_percent: float = 70.0
    tolerance_percent: float = 10.0
    target_ops_per_replica: float | None = None  # set: one replica's capacity (ops/s), instead of the measured
    behavior: Behavior = field(default_factory=lambda: Behavior.from_spec({}))
    max_metric_age_seconds: float = 120.0  # older samples are stale -> MetricsUnavailable
    # The short-window demand (MetricsObservation.recent_demand_ops_per_second) counts when it is above the window
    # demand by more than recent_up_gate x tolerance, or (recent_down) below it by more than
    # recent_down_gate x tolerance. Tuned with hdcctl simulate-autoscaling (docs/autoscaling.md).
    recent_up_gate: float = 2.0
    recent_down: bool = True
    recent_down_gate: float = 0.5

    def __post_init__(self) -> None:
        p = "spec.autoscaling"
        _int(f"{p}.minReplicas", self.min_replicas, 1)
        _int(f"{p}.maxReplicas", self.max_replicas, 1)
        if self.max_replicas < self.min_replicas:
            raise InvalidAutoscaling(
                f"{p}.maxReplicas", f"must be >= minReplicas ({self.min_replicas}), got {self.max_replicas}"
            )
        _number(f"{p}.targetUtilizationPercent", self.target_utilization_percent, 0, 100, exclusive_lo=True)
        _number(f"{p}.tolerancePercent", self.tolerance_percent, 0, 100)
        if self.target_ops_per_replica is not None:
            _number(f"{p}.targetOpsPerReplica", self.target_ops_per_replica, 0, exclusive_lo=True)
        _number("max_metric_age_seconds", self.max_metric_age_seconds, 0, exclusive_lo=True)
        _number("recent_up_gate", self.recent_up_gate, 0)
        _number("recent_down_gate", self.recent_down_gate, 0, 1 / max(self.tolerance_percent / 100.0, 1e-9))
        if not isinstance(self.recent_down, bool):
            raise InvalidAutoscaling("recent_down", f"expected a boolean, got {self.recent_down!r}")
        if not isinstance(self.behavior, Behavior):
            raise InvalidAutoscaling(f"{p}.behavior", f"expected a Behavior, got {type(self.behavior).__name__}")

    @classmethod
    def from_spec(cls, autoscaling: Mapping[str, Any] | None, **tuning: Any) -> "ScalerConfig":
        """From the defaulted spec.autoscaling dict (camelCase); `tuning` sets the estimation terms."""
        a = _mapping("spec.autoscaling", autoscaling)
        kwargs: dict[str, Any] = {}
        for key, name in (
            ("minReplicas", "min_replicas"),
            ("maxReplicas", "max_replicas"),
            ("targetUtilizationPercent", "target_utilization_percent"),
            ("tolerancePercent", "tolerance_percent"),
            ("targetOpsPerReplica", "target_ops_per_replica"),
        ):
            if a.get(key) is not None:
                kwargs[name] = a[key]
        kwargs["behavior"] = Behavior.from_spec(a.get("behavior"))
        return cls(**kwargs, **tuning)

    def per_replica_target(self, measured_capacity: float | None) -> float | None:
        """Ops/s one replica should carry: capacity x targetUtilization, where the capacity is
        targetOpsPerReplica when set (the CRD: "capacity of one replica"), else the measured one."""
        capacity = self.target_ops_per_replica if self.target_ops_per_replica is not None else measured_capacity
        if capacity is None:
            return None
        return capacity * self.target_utilization_percent / 100.0


# --- inputs and state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsObservation:
    """What metrics_source measured; every field may be missing.

    demand_ops_per_second: sum over replicas of rate(hdc_hypervector_operations_total[window]).
    capacity_ops_per_second: one replica's hdc_capacity_ops_per_second (the average over reporting replicas).
    sampled_at: unix time of the oldest sample the values rest on. replicas_reporting: replicas with series.
    unavailable_reason: set by metrics_source when it could not measure (Prometheus down, no series, ...).
    recent_demand_ops_per_second: optional, the demand over a short window (see estimate_demand).
    """

    demand_ops_per_second: float | None
    capacity_ops_per_second: float | None
    sampled_at: float | None
    replicas_reporting: int | None = None
    unavailable_reason: str | None = None
    recent_demand_ops_per_second: float | None = None  # the same rate over a short window (fast scale-up)


def _finite(x: object) -> TypeGuard[float]:
    """A real number (int or float, not bool), not NaN or infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class History:
    """Past raw recommendations and scale events (times in unix seconds), the HPA controller's memory.

    The operator stores `to_dict()` (e.g. in an annotation or status) and passes `from_dict()` back: the
    HPA keeps the same state in memory. Losing it only forgets the windows (as an HPA controller restart does).
    """

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw recommendation)
    scale_up_events: tuple[tuple[float, int], ...] = ()  # (time, replicas added)
    scale_down_events: tuple[tuple[float, int], ...] = ()  # (time, replicas removed)

    def to_dict(self) -> dict[str, list[list[float]]]:
        return {
            "recommendations": [list(x) for x in self.recommendations],
            "scaleUpEvents": [list(x) for x in self.scale_up_events],
            "scaleDownEvents": [list(x) for x in self.scale_down_events],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "History":
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"history must be an object, got {type(raw).__name__}")

        def pairs(key: str) -> tuple[tuple[float, int], ...]:
            items = raw.get(key) or []
            if not isinstance(items, list):
                raise ValueError(f"history.{key} must be a list, got {type(items).__name__}")
            out = []
            for i, item in enumerate(items):
                if not (
                    isinstance(item, (list, tuple))
                    and len(item) == 2
                    and _finite(item[0])
                    and _finite(item[1])
                    and float(item[1]).is_integer()
                ):
                    raise ValueError(f"history.{key}[{i}] must be [time, integer], got {item!r}")
                out.append((float(item[0]), int(item[1])))
            return tuple(out)

        return cls(pairs("recommendations"), pairs("scaleUpEvents"), pairs("scaleDownEvents"))


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    reason: str  # MetricsUnavailable, TooManyReplicas, TooFewReplicas, ScaleUpLimit, ScaleDownLimit,
    #             ScaleUpStabilized, ScaleDownStabilized, WithinTolerance, DemandAboveTarget, DemandBelowTarget,
    #             DesiredWithinRange
    message: str
    history: History
    metrics_available: bool
    raw_recommendation: int | None = None  # before behavior
    demand_estimate: float | None = None  # ops/s, after estimate_demand
    per_replica_target: float | None = None  # ops/s: capacity x targetUtilization
    capacity_ops_per_second: float | None = None  # one replica's capacity used (targetOpsPerReplica or measured)


# --- the algorithm ----------------------------------------------------------------------------------------


def metrics_problem(observation: MetricsObservation | None, config: ScalerConfig, now: float) -> str | None:
    """Why the observation cannot be used (None when it can)."""
    if observation is None:
        return "no observation"
    if observation.unavailable_reason:
        return observation.unavailable_reason
    d = observation.demand_ops_per_second
    if not _finite(d) or d < 0:
        return f"demand is {d!r}"
    if config.target_ops_per_replica is None:
        c = observation.capacity_ops_per_second
        if not _finite(c) or c <= 0:
            return f"capacity is {c!r} and spec.autoscaling.targetOpsPerReplica is not set"
    t = observation.sampled_at
    if not _finite(t):
        return f"sample time is {t!r}"
    age = now - t
    if age > config.max_metric_age_seconds:
        return f"samples are {age:.0f} s old (limit {config.max_metric_age_seconds:g} s)"
    return None


def estimate_demand(observation: MetricsObservation, config: ScalerConfig) -> tuple[float, str]:
    """(demand estimate, note): the window demand, or the short-window demand when that one differs clearly.

    The short window (recent_demand_ops_per_second) is taken when it is above the window demand by more than
    `recent_up_gate` tolerances (a burst: scale up now rather than when the long window catches up) or, with
    `recent_down`, below it by more than `recent_down_gate` tolerances (the burst is over: the scale-down
    stabilization window starts counting earlier; the window still holds the highest recommendation). Otherwise
    the long window, which is less noisy, decides. Scaling both up never lowers the estimate (monotonic in demand).
    The observation must be usable (metrics_problem returned None for it).
    """
    if observation.demand_ops_per_second is None:
        raise ValueError("estimate_demand needs a usable observation: its demand is missing")
    demand = float(observation.demand_ops_per_second)
    recent = observation.recent_demand_ops_per_second
    tol = config.tolerance_percent / 100.0
    if _finite(recent) and recent >= 0:
        if recent > demand * (1.0 + tol * config.recent_up_gate):
            return float(recent), f"recent demand {recent:.4g} ops/s is above the window's"
        if config.recent_down and recent < demand * (1.0 - tol * config.recent_down_gate):
            return float(recent), f"recent demand {recent:.4g} ops/s is below the window's"
    return demand, ""


def raw_recommendation(
    demand: float, per_replica_target: float, current: int, tolerance_percent: float
) -> tuple[int, bool]:
    """(replicas, within tolerance): ceil(demand / per-replica target), or `current` within the tolerance."""
    if current > 0:
        ratio = demand / (current * per_replica_target)
        if abs(ratio - 1.0) <= tolerance_percent / 100.0:
            return current, True
    replicas = demand / per_replica_target
    if not math.isfinite(replicas) or replicas > _MAX_REPLICAS:
        return _MAX_REPLICAS, False  # a tiny capacity: as many as allowed (max_replicas clamps it later)
    return math.ceil(replicas - 1e-9), False  # the epsilon: 7.000000000000001 from float division is 7


def _change_in_period(events: tuple[tuple[float, int], ...], period: int, now: float) -> int:
    cutoff = now - period
    return sum(n for t, n in events if t > cutoff)


def _rate_limit(current: int, history: History, rules: ScalingRules, now: float, up: bool) -> int:
    """The HPA's calculateScale{Up,Down}Limit: the furthest the policies allow from `current`."""
    if rules.select_policy == "Disabled":
        return current
    # selectPolicy Max: the policy allowing the biggest change; Min: the smallest.
    choose = (max if rules.select_policy == "Max" else min) if up else (min if rules.select_policy == "Max" else max)
    proposals = []
    for p in rules.policies:
        start = (
            current
            - _change_in_period(history.scale_up_events, p.period_seconds, now)
            + _change_in_period(history.scale_down_events, p.period_seconds, now)
        )
        if p.type == "Pods":
            proposals.append(start + p.value if up else start - p.value)
        elif up:
            proposals.append(math.ceil(start * (1 + p.value / 100)))
        else:
            proposals.append(int(start * (1 - p.value / 100)))  # Go's int32(): truncation
    return choose(proposals) if proposals else current


def apply_behavior(
    current: int,
    recommendation: int,
    min_replicas: int,
    max_replicas: int,
    behavior: Behavior,
    history: History,
    now: float,
) -> tuple[int, str, History]:
    """The HPA's normalizeDesiredReplicasWithBehaviors: (replicas, reason, history with this recommendation).

    Stabilization: the result moves from `current` up to no more than the lowest recommendation of the
    scale-up window and down to no less than the highest of the scale-down window (this one included).
    Rate: the change is limited relative to the replicas at the start of each policy's period (current minus
    the scale-ups plus the scale-downs within it), the policies combined by selectPolicy; then [min, max].
    """
    up_w, down_w = behavior.scale_up.stabilization_window_seconds, behavior.scale_down.stabilization_window_seconds
    up_rec = down_rec = recommendation
    for t, r in history.recommendations:
        if t > now - up_w:
            up_rec = min(up_rec, r)
        if t > now - down_w:
            down_rec = max(down_rec, r)
    stabilized = min(max(current, up_rec), down_rec)
    obsolete = now - max(up_w, down_w)
    recs = tuple(x for x in history.recommendations if x[0] > obsolete) + ((now, recommendation),)
    history = replace(history, recommendations=recs)
    reason = "DesiredWithinRange"
    if stabilized != recommendation:
        reason = "ScaleUpStabilized" if recommendation > stabilized else "ScaleDownStabilized"
    desired = stabilized
    if stabilized > current:
        limit = max(_rate_limit(current, history, behavior.scale_up, now, up=True), current)
        allowed, why = (limit, "ScaleUpLimit") if max_replicas > limit else (max_replicas, "TooManyReplicas")
        if stabilized > allowed:
            desired, reason = allowed, why
    elif stabilized < current:
        limit = min(_rate_limit(current, history, behavior.scale_down, now, up=False), current)
        allowed, why = (limit, "ScaleDownLimit") if min_replicas < limit else (min_replicas, "TooFewReplicas")
        if stabilized < allowed:
            desired, reason = allowed, why
    return desired, reason, history


def record_scale(history: History, previous: int, new: int, behavior: Behavior, now: float) -> History:
    """The HPA's storeScaleEvent: remember a change (events older than the longest policy period are dropped)."""
    if new > previous:
        keep = now - behavior.scale_up.longest_period
        events = tuple(e for e in history.scale_up_events if e[0] >= keep) + ((now, new - previous),)
        return replace(history, scale_up_events=events)
    if new < previous:
        keep = now - behavior.scale_down.longest_period
        events = tuple(e for e in history.scale_down_events if e[0] >= keep) + ((now, previous - new),)
        return replace(history, scale_down_events=events)
    return history


def decide(
    current_replicas: int,
    observation: MetricsObservation | None,
    config: ScalerConfig,
    history: History,
    now: float,
    *,
    ready_replicas: int | None = None,
) -> Decision:
    """Desired replicas for a workload now. Pure: everything it needs comes in, the new history goes out.

    The caller scales to `desired_replicas` and keeps `history` for the next call (it already contains the
    scale event when desired != current). `ready_replicas` (the Deployment's ready pods), when given, guards
    against partial data: if fewer replicas report metrics than are ready, the summed demand misses some of
    them, so the recommendation is never below the current replicas (scale-up only).
    """
    if isinstance(current_replicas, bool) or not isinstance(current_replicas, int) or current_replicas < 0:
        raise ValueError(f"current_replicas must be a non-negative integer, got {current_replicas!r}")
    if not _finite(now):
        raise ValueError(f"now must be a finite unix time, got {now!r}")
    lo, hi = config.min_replicas, config.max_replicas
    bounded = min(max(current_replicas, lo), hi)

    def finish(desired: int, reason: str, message: str, hist: History, available: bool, **extra: Any) -> Decision:
        if desired != current_replicas:
            hist = record_scale(hist, current_replicas, desired, config.behavior, now)
        return Decision(desired, reason, message, hist, available, **extra)

    problem = metrics_problem(observation, config, now)
    if problem is not None:
        note = "" if bounded == current_replicas else f"; moved into [{lo}, {hi}]"
        return finish(
            bounded,
            "MetricsUnavailable",
            f"metrics unavailable ({problem}): holding {bounded} replicas{note}",
            history,
            False,
        )
    if current_replicas != bounded:
        reason = "TooManyReplicas" if current_replicas > hi else "TooFewReplicas"
        return finish(bounded, reason, f"{current_replicas} replicas is outside [{lo}, {hi}]", history, True)

    assert observation is not None
    estimate, note = estimate_demand(observation, config)
    target = config.per_replica_target(observation.capacity_ops_per_second)
    assert target is not None and target > 0
    raw, within = raw_recommendation(estimate, target, current_replicas, config.tolerance_percent)
    reporting = observation.replicas_reporting
    partial = (
        isinstance(ready_replicas, int)
        and not isinstance(ready_replicas, bool)
        and (not _finite(reporting) or reporting < ready_replicas)
    )
    if partial and raw < current_replicas:
        raw = current_replicas
        note = "; ".join(
            x for x in (note, f"only {reporting} of {ready_replicas} ready replicas report: no scale-down") if x
        )
    desired, reason, history = apply_behavior(current_replicas, raw, lo, hi, config.behavior, history, now)
    if reason == "DesiredWithinRange":
        if within:
            reason = "WithinTolerance"
        elif desired > current_replicas:
            reason = "DemandAboveTarget"
        elif desired < current_replicas:
            reason = "DemandBelowTarget"
    message = (
        f"demand {observation.demand_ops_per_second:.4g} ops/s"
        + (f" (estimate {estimate:.4g}: {note})" if note else "")
        + f", target {target:.4g} ops/s per replica -> {raw} recommended, {desired} after behavior ({reason})"
    )
    capacity = config.target_ops_per_replica
    if capacity is None:
        assert observation.capacity_ops_per_second is not None  # metrics_problem checked it
        capacity = float(observation.capacity_ops_per_second)
    return finish(
        desired,
        reason,
        message,
        history,
        True,
        raw_recommendation=raw,
        demand_estimate=estimate,
        per_replica_target=target,
        capacity_ops_per_second=capacity,
    )


# --- what the operator writes (pure helpers for status.py / handlers.py) -----------------------------------


def status_fields(
    decision: Decision, observation: MetricsObservation | None, current_replicas: int, now_iso: str
) -> dict[str, Any]:
    """HDCWorkload status fields of one decision (camelCase, as in crds/hdcworkload.yaml).

    lastScaleTime/lastScaleReason only when the replicas change; the observed values only when measured. The
    observed demand is also the workload's throughput (hypervector ops/s over all replicas, the THROUGHPUT column).
    """
    out: dict[str, Any] = {"desiredReplicas": decision.desired_replicas}
    if decision.desired_replicas != current_replicas:
        out["lastScaleTime"] = now_iso
        out["lastScaleReason"] = f"{decision.reason}: {decision.message}"
    demand = observation.demand_ops_per_second if observation is not None else None
    if decision.metrics_available and demand is not None:
        out["observedDemandOpsPerSec"] = out["throughputOpsPerSec"] = float(demand)
        out["observedCapacityOpsPerSec"] = decision.capacity_ops_per_second
    return {k: v for k, v in out.items() if v is not None}


def scaling_active_condition(decision: Decision) -> dict[str, str]:
    """The ScalingActive condition (type/status/reason/message; the caller keeps lastTransitionTime)."""
    if decision.metrics_available:
        return {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": decision.message}
    return {"type": "ScalingActive", "status": "False", "reason": "MetricsUnavailable", "message": decision.message}
