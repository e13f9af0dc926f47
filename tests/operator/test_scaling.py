"""The operator's scaler (hdc_operator.scaling): properties with hypothesis, and the HPA behavior against a
line-by-line reference of the Kubernetes HPA controller (pkg/controller/podautoscaler/horizontal.go)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hdc_operator.scaling import (
    Behavior,
    Decision,
    History,
    InvalidAutoscaling,
    MetricsObservation,
    ScalerConfig,
    apply_behavior,
    decide,
    record_scale,
    scaling_active_condition,
    status_fields,
)

NOW = 1_800_000_000.0


def obs(demand, capacity=100.0, age=5.0, reporting=3, recent=None, now=NOW):
    return MetricsObservation(demand, capacity, now - age, reporting, recent_demand_ops_per_second=recent)


# --- the HPA reference: a transcription of the Go controller, with its mutable lists ----------------------


class ReferenceHPA:
    """kube-controller-manager's normalizeDesiredReplicasWithBehaviors + storeScaleEvent, kept literal."""

    def __init__(self, behavior: dict):
        self.b = behavior
        self.recommendations: list[list] = []  # [replicas, time]
        self.up_events: list[list] = []  # [change, time, outdated]
        self.down_events: list[list] = []

    @staticmethod
    def change_per_period(period, events, now):
        return sum(e[0] for e in events if e[1] > now - period)

    def up_limit(self, current, now):
        rules = self.b["scaleUp"]
        if rules["selectPolicy"] == "Disabled":
            return current
        if rules["selectPolicy"] == "Min":
            result, fn = 2**31 - 1, min
        else:
            result, fn = -(2**31), max
        for p in rules["policies"]:
            start = (
                current
                - self.change_per_period(p["periodSeconds"], self.up_events, now)
                + self.change_per_period(p["periodSeconds"], self.down_events, now)
            )
            proposed = start + p["value"] if p["type"] == "Pods" else math.ceil(start * (1 + p["value"] / 100))
            result = fn(result, proposed)
        return result

    def down_limit(self, current, now):
        rules = self.b["scaleDown"]
        if rules["selectPolicy"] == "Disabled":
            return current
        if rules["selectPolicy"] == "Min":
            result, fn = -(2**31), max
        else:
            result, fn = 2**31 - 1, min
        for p in rules["policies"]:
            start = (
                current
                - self.change_per_period(p["periodSeconds"], self.up_events, now)
                + self.change_per_period(p["periodSeconds"], self.down_events, now)
            )
            proposed = start - p["value"] if p["type"] == "Pods" else int(start * (1 - p["value"] / 100))
            result = fn(result, proposed)
        return result

    def normalize(self, current, desired, lo, hi, now):
        up_w = self.b["scaleUp"]["stabilizationWindowSeconds"]
        down_w = self.b["scaleDown"]["stabilizationWindowSeconds"]
        up_rec = down_rec = desired
        found_old, old_index = False, 0
        for i, (r, t) in enumerate(self.recommendations):
            if t > now - up_w:
                up_rec = min(r, up_rec)
            if t > now - down_w:
                down_rec = max(r, down_rec)
            if t < now - up_w and t < now - down_w:
                found_old, old_index = True, i
        rec = current
        if rec < up_rec:
            rec = up_rec
        if rec > down_rec:
            rec = down_rec
        if found_old:
            self.recommendations[old_index] = [desired, now]
        else:
            self.recommendations.append([desired, now])
        desired = rec
        if desired > current:
            limit = max(self.up_limit(current, now), current)
            allowed = limit if hi > limit else hi
            if desired > allowed:
                return allowed
        elif desired < current:
            limit = min(self.down_limit(current, now), current)
            allowed = limit if lo < limit else lo
            if desired < allowed:
                return allowed
        return desired

    def store_event(self, prev, new, now):
        direction = "scaleUp" if new > prev else "scaleDown"
        events = self.up_events if new > prev else self.down_events
        longest = max((p["periodSeconds"] for p in self.b[direction]["policies"]), default=0)
        for e in events:
            if e[1] < now - longest:
                e[2] = True
        change = abs(new - prev)
        old = [i for i, e in enumerate(events) if e[2]]
        if old:
            events[old[-1]] = [change, now, False]
        else:
            events.append([change, now, False])


policy = st.fixed_dictionaries(
    {"type": st.sampled_from(["Pods", "Percent"]), "value": st.integers(1, 150), "periodSeconds": st.integers(1, 60)}
)
rules = st.fixed_dictionaries(
    {
        "stabilizationWindowSeconds": st.integers(0, 120),
        "selectPolicy": st.sampled_from(["Max", "Min", "Disabled"]),
        "policies": st.lists(policy, min_size=1, max_size=3),
    }
)
behaviors = st.fixed_dictionaries({"scaleUp": rules, "scaleDown": rules})


@settings(max_examples=500, deadline=None)
@given(
    behavior=behaviors,
    bounds=st.tuples(st.integers(1, 5), st.integers(0, 30)),
    start=st.integers(1, 35),
    steps=st.lists(st.tuples(st.integers(1, 30), st.integers(0, 40)), min_size=1, max_size=40),
)
def test_behavior_matches_the_hpa_controller(behavior, bounds, start, steps):
    lo, hi = bounds[0], bounds[0] + bounds[1]
    b = Behavior.from_spec(behavior)
    ref = ReferenceHPA(b.to_spec())
    current = min(max(start, lo), hi)
    history, now = History(), NOW
    for dt, raw in steps:
        now += dt
        expected = ref.normalize(current, raw, lo, hi, now)
        got, reason, history = apply_behavior(current, raw, lo, hi, b, history, now)
        assert got == expected, (current, raw, reason)
        assert lo <= got <= hi
        if got != current:
            ref.store_event(current, got, now)
            history = record_scale(history, current, got, b, now)
        current = got


def test_hpa_defaults():
    b = Behavior.from_spec({})
    assert b.to_spec() == {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 4, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        },
    }
    # A partial spec keeps the defaults for what it omits, as the API server's defaulting does.
    partial = Behavior.from_spec({"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert partial.scale_down.stabilization_window_seconds == 60
    assert partial.scale_down.policies == b.scale_down.policies and partial.scale_up == b.scale_up


def test_default_behavior_scale_up_rate_and_scale_down_window():
    cfg = ScalerConfig(max_replicas=100)
    # 2 replicas, demand for 20: +100 % or +4 per 15 s, whichever is more -> 6 first.
    d = decide(2, obs(1400.0), cfg, History(), NOW)
    assert (d.desired_replicas, d.reason, d.raw_recommendation) == (6, "ScaleUpLimit", 20)
    d2 = decide(6, obs(1400.0, now=NOW + 5), cfg, d.history, NOW + 5)
    assert d2.desired_replicas == 6  # the 15 s period still holds the +4 (start 2 -> limit max(4, 6))
    d3 = decide(6, obs(1400.0, now=NOW + 16), cfg, d2.history, NOW + 16)
    assert d3.desired_replicas == 12  # a new period: 100 % of 6
    # Demand drops: the 300 s scale-down window keeps the highest recommendation (20 -> limited to max seen).
    h, cur = d3.history, 12
    for t in range(30, 300, 15):
        d = decide(cur, obs(70.0, now=NOW + t), cfg, h, NOW + t)
        assert d.desired_replicas == cur and d.reason == "ScaleDownStabilized"
        h = d.history
    d = decide(cur, obs(70.0, now=NOW + 330), cfg, h, NOW + 330)
    assert d.desired_replicas == 1 and d.reason in ("DemandBelowTarget", "TooFewReplicas")


def test_bad_behavior_names_the_field():
    with pytest.raises(InvalidAutoscaling) as err:
        Behavior.from_spec({"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}})
    assert err.value.field == "spec.autoscaling.behavior.scaleUp.policies[0].value"
    with pytest.raises(InvalidAutoscaling) as err:
        Behavior.from_spec({"scaleDown": {"selectPolicy": "Fastest"}})
    assert err.value.field == "spec.autoscaling.behavior.scaleDown.selectPolicy"
    assert "Max, Min, Disabled" in str(err.value)
    with pytest.raises(InvalidAutoscaling) as err:
        ScalerConfig.from_spec({"minReplicas": 5, "maxReplicas": 2})
    assert err.value.field == "spec.autoscaling.maxReplicas"
    with pytest.raises(InvalidAutoscaling) as err:
        ScalerConfig.from_spec({"targetUtilizationPercent": 0})
    assert err.value.field == "spec.autoscaling.targetUtilizationPercent"


# --- properties of decide -----------------------------------------------------------------------------------

configs = st.builds(
    lambda lo, span, util, tol, beh, top: ScalerConfig(
        min_replicas=lo,
        max_replicas=lo + span,
        target_utilization_percent=util,
        tolerance_percent=tol,
        behavior=Behavior.from_spec(beh),
        target_ops_per_replica=top,
    ),
    st.integers(1, 5),
    st.integers(0, 40),
    st.integers(1, 100),
    st.floats(0, 30),
    behaviors,
    st.one_of(st.none(), st.floats(1, 1e4)),
)
demands = st.floats(0, 1e6, allow_nan=False)


@st.composite
def histories(draw, config):
    """A history produced by the scaler itself from earlier random demands."""
    h, cur, now = History(), draw(st.integers(0, 50)), NOW - 600
    for _ in range(draw(st.integers(0, 8))):
        now += draw(st.integers(1, 80))
        d = decide(cur, obs(draw(demands), now=now), config, h, now)
        h, cur = d.history, d.desired_replicas
    return h, cur


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    config=configs,
    demand=st.one_of(st.none(), st.just(math.nan), demands),
    capacity=st.one_of(st.none(), st.just(math.nan), st.floats(0, 1e4)),
    current=st.integers(0, 60),
)
def test_never_outside_bounds(data, config, demand, capacity, current):
    history, _ = data.draw(histories(config))
    d = decide(current, obs(demand, capacity), config, history, NOW)
    assert config.min_replicas <= d.desired_replicas <= config.max_replicas


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    config=configs,
    d1=demands,
    d2=demands,
    capacity=st.floats(1, 1e4),
    recent_factor=st.one_of(st.none(), st.floats(0, 3)),
)
def test_monotonic_in_demand(data, config, d1, d2, capacity, recent_factor):
    history, current = data.draw(histories(config))
    current = min(max(current, config.min_replicas), config.max_replicas)
    lo, hi = sorted((d1, d2))
    r = (lambda d: None) if recent_factor is None else (lambda d: d * recent_factor)
    a = decide(current, obs(lo, capacity, recent=r(lo)), config, history, NOW)
    b = decide(current, obs(hi, capacity, recent=r(hi)), config, history, NOW)
    assert a.desired_replicas <= b.desired_replicas


@settings(max_examples=200, deadline=None)
@given(
    config=configs,
    current=st.integers(1, 40),
    offset=st.floats(-1, 1),
    capacity=st.floats(1, 1e4),
    noise=st.lists(st.floats(-1, 1), min_size=30, max_size=80),
    data=st.data(),
)
def test_no_oscillation_under_noise_within_tolerance(config, current, offset, capacity, noise, data):
    """Constant demand whose noisy observations (both windows) stay within the tolerance: nothing moves."""
    current = min(max(current, config.min_replicas), config.max_replicas)
    tol = config.tolerance_percent / 100.0
    target = config.per_replica_target(capacity)
    # Inside the band: (1 +- tol/3) x (1 +- tol/3) stays within 1 +- tol for any tol <= 100 %.
    center = current * target * (1 + offset * tol / 3)
    spread = tol / 3
    h, now = History(), NOW
    for i, n in enumerate(noise):
        now += 15
        m = data.draw(st.floats(-1, 1), label=f"recent noise {i}")
        d = decide(
            current, obs(center * (1 + n * spread), capacity, recent=center * (1 + m * spread), now=now), config, h, now
        )
        assert d.desired_replicas == current, d.message
        h = d.history


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    config=configs,
    current=st.integers(0, 60),
    bad=st.sampled_from(["none", "nan", "stale", "capacity", "reason", "negative"]),
)
def test_holds_on_missing_data(data, config, current, bad):
    history, _ = data.draw(histories(config))
    o = {
        "none": obs(None),
        "nan": obs(math.nan),
        "stale": obs(500.0, age=config.max_metric_age_seconds + 1),
        "capacity": obs(500.0, capacity=None),
        "negative": obs(-5.0),
        "reason": MetricsObservation(None, None, None, None, unavailable_reason="Prometheus unreachable"),
    }[bad]
    if bad == "capacity" and config.target_ops_per_replica is not None:
        o = obs(500.0, capacity=math.nan, age=config.max_metric_age_seconds * 2)
    d = decide(current, o, config, history, NOW)
    assert d.reason == "MetricsUnavailable" and not d.metrics_available
    assert d.desired_replicas == min(max(current, config.min_replicas), config.max_replicas)
    if config.min_replicas <= current <= config.max_replicas:
        assert d.desired_replicas == current and d.history == history  # nothing recorded
    if bad == "reason":
        assert "Prometheus unreachable" in d.message


def test_formula_tolerance_and_units():
    cfg = ScalerConfig(max_replicas=50, target_utilization_percent=50)
    # 4 replicas of 100 ops/s at 50 %: target 50 ops/s per replica. 210 ops/s: ratio 1.05 -> within 10 %.
    d = decide(4, obs(210.0), cfg, History(), NOW)
    assert (d.desired_replicas, d.reason) == (4, "WithinTolerance")
    d = decide(4, obs(230.0), cfg, History(), NOW)  # ratio 1.15: just outside
    assert (d.desired_replicas, d.reason) == (5, "DemandAboveTarget")
    d = decide(4, obs(150.0), cfg, History(), NOW)  # ratio 0.75: no earlier recommendation, so down at once
    assert (d.desired_replicas, d.reason, d.raw_recommendation) == (3, "DemandBelowTarget", 3)
    held = History(recommendations=((NOW - 200, 4),))  # ... unless the 300 s window remembers 4
    d = decide(4, obs(150.0), cfg, held, NOW)
    assert (d.desired_replicas, d.reason) == (4, "ScaleDownStabilized")
    d = decide(4, obs(330.0), cfg, History(), NOW)
    assert (d.desired_replicas, d.reason, d.raw_recommendation) == (7, "DemandAboveTarget", 7)  # ceil(6.6)
    # targetOpsPerReplica replaces the measured capacity (the CRD: "capacity of one replica").
    cfg2 = ScalerConfig(max_replicas=50, target_utilization_percent=50, target_ops_per_replica=200.0)
    d = decide(4, obs(1000.0, capacity=None), cfg2, History(), NOW)
    assert d.raw_recommendation == 10 and d.per_replica_target == 100.0


def test_short_window_counts_only_when_clearly_different():
    cfg = ScalerConfig(max_replicas=50)
    base = decide(10, obs(700.0, recent=800.0), cfg, History(), NOW)  # +14 %: below the 2-tolerance gate
    assert base.desired_replicas == 10 and base.demand_estimate == 700.0
    burst = decide(10, obs(700.0, recent=1400.0), cfg, History(), NOW)
    assert burst.demand_estimate == 1400.0 and burst.desired_replicas == 20
    over = decide(10, obs(700.0, recent=500.0), cfg, History(), NOW)
    assert over.demand_estimate == 500.0 and over.raw_recommendation == 8
    dip = decide(10, obs(700.0, recent=670.0), cfg, History(), NOW)  # -4 %: inside the half-tolerance gate
    assert dip.demand_estimate == 700.0


def test_outside_bounds_goes_to_the_bound():
    cfg = ScalerConfig(min_replicas=2, max_replicas=5)
    assert decide(9, obs(10.0), cfg, History(), NOW).desired_replicas == 5
    assert decide(0, obs(1e5), cfg, History(), NOW).desired_replicas == 2


def test_history_round_trip_and_bad_history():
    cfg = ScalerConfig(max_replicas=30)
    d = decide(2, obs(1400.0), cfg, History(), NOW)
    assert History.from_dict(d.history.to_dict()) == d.history
    import json

    assert History.from_dict(json.loads(json.dumps(d.history.to_dict()))) == d.history
    with pytest.raises(ValueError, match=r"history.recommendations\[0\]"):
        History.from_dict({"recommendations": [["x", 3]]})
    with pytest.raises(ValueError, match="current_replicas"):
        decide(-1, obs(1.0), cfg, History(), NOW)
    assert isinstance(d, Decision)


def test_from_spec_reads_the_crd_defaults():
    from hdc_operator.spec import default_spec

    cfg = ScalerConfig.from_spec(default_spec()["autoscaling"])
    assert (
        cfg.min_replicas,
        cfg.max_replicas,
        cfg.target_utilization_percent,
        cfg.tolerance_percent,
        cfg.target_ops_per_replica,
    ) == (1, 10, 70, 10, None)
    assert cfg.behavior == Behavior.from_spec({})


anything = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10, 10**12),
    st.text(max_size=3),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    config=configs,
    current=st.integers(0, 60),
    fields=st.tuples(anything, anything, anything, anything, anything),
    reason=st.one_of(st.none(), st.text(max_size=10)),
)
def test_garbage_observations_never_raise(config, current, fields, reason):
    """Whatever a broken metrics source hands over: a decision within bounds, never an exception."""
    demand, capacity, sampled, reporting, recent = fields
    o = MetricsObservation(
        demand, capacity, sampled, reporting, unavailable_reason=reason, recent_demand_ops_per_second=recent
    )
    d = decide(current, o, config, History(), NOW)
    assert config.min_replicas <= d.desired_replicas <= config.max_replicas
    if not d.metrics_available:
        assert d.desired_replicas == min(max(current, config.min_replicas), config.max_replicas)


def test_status_fields_and_condition():
    cfg = ScalerConfig(max_replicas=30)
    o = obs(1400.0)
    d = decide(2, o, cfg, History(), NOW)
    fields = status_fields(d, o, 2, "2026-11-28T13:00:00Z")
    assert fields["desiredReplicas"] == 6 and fields["lastScaleTime"] == "2026-11-28T13:00:00Z"
    assert fields["lastScaleReason"].startswith("ScaleUpLimit: demand 1400 ops/s")
    assert fields["observedDemandOpsPerSec"] == 1400.0 and fields["observedCapacityOpsPerSec"] == 100.0
    assert fields["throughputOpsPerSec"] == 1400.0  # the THROUGHPUT printer column
    assert scaling_active_condition(d) == {
        "type": "ScalingActive",
        "status": "True",
        "reason": "ValidMetricFound",
        "message": d.message,
    }
    down = MetricsObservation(None, None, None, None, unavailable_reason="Prometheus at http://p:9090 is unreachable")
    held = decide(4, down, cfg, History(), NOW)
    assert status_fields(held, down, 4, "t") == {"desiredReplicas": 4}
    cond = scaling_active_condition(held)
    assert (cond["status"], cond["reason"]) == ("False", "MetricsUnavailable") and "unreachable" in cond["message"]
    spec_cap = ScalerConfig(target_ops_per_replica=250.0)
    d = decide(1, obs(100.0, capacity=None), spec_cap, History(), NOW)
    assert status_fields(d, obs(100.0, capacity=None), 1, "t")["observedCapacityOpsPerSec"] == 250.0


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    config=configs,
    demand=demands,
    capacity=st.floats(1, 1e4),
    ready=st.integers(1, 60),
    missing=st.integers(1, 60),
)
def test_partial_metrics_never_scale_down(data, config, demand, capacity, ready, missing):
    """Fewer replicas report than are ready: the demand is a lower bound, so no scale-down from it."""
    history, current = data.draw(histories(config))
    current = min(max(current, config.min_replicas), config.max_replicas)
    reporting = max(0, ready - missing)
    d = decide(current, obs(demand, capacity, reporting=reporting), config, history, NOW, ready_replicas=ready)
    assert d.desired_replicas >= current


def test_partial_metrics_still_scale_up():
    cfg = ScalerConfig(max_replicas=50)
    low = decide(10, obs(100.0, reporting=2), cfg, History(), NOW, ready_replicas=10)
    assert low.desired_replicas == 10 and "only 2 of 10 ready replicas report" in low.message
    assert decide(10, obs(100.0, reporting=10), cfg, History(), NOW, ready_replicas=10).desired_replicas == 2
    high = decide(10, obs(1400.0, reporting=2), cfg, History(), NOW, ready_replicas=10)
    assert high.desired_replicas == 20
