"""The operator's scaler glue (hdc_operator.autoscaler): the pure parts, with the real scaler behind them, and
which KubeApi writes a scale makes (against a recording stand-in).

The API writes themselves (scale subresource, annotation, Event, status) are exercised on the real control plane
by tests/operator/test_autoscaling_k8s.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from hdc_operator.autoscaler import (
    HISTORY_ANNOTATION,
    NO_PROMETHEUS,
    Autoscaler,
    Step,
    evaluate,
    history_annotation,
    history_from_annotation,
    merge_status,
)
from hdc_operator.metrics import OperatorMetrics
from hdc_operator.scaling import History, MetricsObservation, scaling_active_condition, status_fields
from hdc_operator.status import WorkloadObservation, compute_status

T0 = 1_800_000_000.0


def body(replicas=2, annotation=None, generation=1, rv="10", mode="operator"):
    meta = {"name": "w", "namespace": "ns", "uid": "u1", "generation": generation, "resourceVersion": rv}
    if annotation is not None:
        meta["annotations"] = {HISTORY_ANNOTATION: annotation}
    return {"metadata": meta, "spec": {"replicas": replicas}}


def spec(target=100.0, **autoscaling):
    a = {
        "mode": "operator",
        "minReplicas": 1,
        "maxReplicas": 10,
        "targetUtilizationPercent": 50,
        "targetOpsPerReplica": target,
        "tolerancePercent": 10,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 20}},
    }
    a.update(autoscaling)
    return {"autoscaling": a}


def obs(demand, at=T0, reporting=2):
    return MetricsObservation(demand, None, at, reporting)


def step_of(demand, replicas=2, history=None, now=T0):
    history = History() if history is None else history
    decision, current = evaluate(body(replicas), spec(), history, obs(demand, now), now, ready_replicas=replicas)
    return Step(
        status_fields(decision, obs(demand, now), current, "2027-01-15T08:00:00Z"),
        scaling_active_condition(decision),
        decision,
    ), decision


def base_status():
    return compute_status(WorkloadObservation(1, desired_replicas=2), {}, "2027-01-15T08:00:00Z")


def test_evaluate_reads_spec_replicas_and_scales_up_on_demand():
    _, decision = step_of(demand=300.0)  # 300 / (100 x 50 %) = 6 replicas (+4: within the rate limit)
    assert decision.desired_replicas == 6 and decision.reason == "DemandAboveTarget"


def test_history_round_trips_through_the_annotation():
    _, decision = step_of(demand=300.0)
    text = history_annotation(decision.history)
    assert history_from_annotation(body(annotation=text)) == decision.history
    assert json.loads(text)["scaleUpEvents"] == [[T0, 4]]


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", '{"recommendations": [[1]]}'])
def test_unreadable_history_is_an_empty_one(bad):
    assert history_from_annotation(body(annotation=bad)) == History()


def test_merge_status_adds_fields_and_condition():
    step, decision = step_of(demand=300.0)
    new, changed = merge_status(base_status(), {}, step, "2027-01-15T08:00:00Z")
    assert changed
    assert new["desiredReplicas"] == 6 and new["lastScaleReason"].startswith("DemandAboveTarget")
    assert new["observedDemandOpsPerSec"] == 300.0 and new["observedCapacityOpsPerSec"] == 100.0
    cond = [c for c in new["conditions"] if c["type"] == "ScalingActive"]
    assert len(cond) == 1 and cond[0]["status"] == "True" and cond[0]["reason"] == "ValidMetricFound"
    assert cond[0]["lastTransitionTime"] == "2027-01-15T08:00:00Z"
    assert {c["type"] for c in new["conditions"]} >= {"Ready", "Progressing", "Degraded"}


def test_steady_demand_with_noise_writes_nothing():
    step, _ = step_of(demand=100.0)  # 2 replicas x 50 = 100: exactly on target
    first, changed = merge_status(base_status(), {}, step, "2027-01-15T08:00:00Z")
    assert changed
    for i, demand in enumerate((101.0, 98.5, 103.0, 100.2)):  # noise under 5 %: no rewrite
        step, decision = step_of(demand=demand, now=T0 + 15 * (i + 1))
        assert decision.desired_replicas == 2
        again, changed = merge_status(base_status(), first, step, "2027-01-15T09:00:00Z")
        assert not changed, (demand, again)
        assert again == first  # the stored message and observed numbers are kept


def test_observed_demand_moving_more_than_5_percent_is_written():
    step, _ = step_of(demand=100.0)
    first, _ = merge_status(base_status(), {}, step, "2027-01-15T08:00:00Z")
    step, decision = step_of(demand=108.0)  # within the scaler's 10 % tolerance: no scale, but a new number
    assert decision.desired_replicas == 2
    new, changed = merge_status(base_status(), first, step, "2027-01-15T08:01:00Z")
    assert changed and new["observedDemandOpsPerSec"] == 108.0
    cond = next(c for c in new["conditions"] if c["type"] == "ScalingActive")
    assert cond["lastTransitionTime"] == "2027-01-15T08:00:00Z"  # same status: the transition time stays


def test_metrics_unavailable_flips_the_condition_and_keeps_observed_values():
    step, _ = step_of(demand=100.0)
    first, _ = merge_status(base_status(), {}, step, "2027-01-15T08:00:00Z")
    down = MetricsObservation(None, None, None, unavailable_reason="down")
    decision, current = evaluate(body(2), spec(), History(), down, T0, None)
    assert decision.desired_replicas == 2 and decision.reason == "MetricsUnavailable"
    down = Step(status_fields(decision, None, current, "x"), scaling_active_condition(decision), decision)
    new, changed = merge_status(base_status(), first, down, "2027-01-15T08:05:00Z")
    assert changed
    cond = next(c for c in new["conditions"] if c["type"] == "ScalingActive")
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == (
        "False",
        "MetricsUnavailable",
        "2027-01-15T08:05:00Z",
    )
    assert new["observedDemandOpsPerSec"] == 100.0  # the last measured value stays
    again, changed = merge_status(base_status(), new, down, "2027-01-15T08:06:00Z")
    assert not changed and again == new


def test_no_step_changes_nothing():
    new, changed = merge_status(base_status(), {}, None, "now")
    assert not changed and new == base_status()


class _NoApi:
    """The autoscaler must not write when nothing scales: any call here fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"unexpected API call {name}")


def test_without_prometheus_it_holds_and_reports_metrics_unavailable():
    metrics = OperatorMetrics()

    async def io(fn, *args):
        return fn(*args)

    scaler = Autoscaler(_NoApi(), metrics, "", io=io, clock=lambda: T0)
    step = asyncio.run(scaler.step(("ns", "w"), body(3), spec(), None))
    assert step.decision.desired_replicas == 3
    assert step.condition["status"] == "False" and step.condition["reason"] == "MetricsUnavailable"
    assert NO_PROMETHEUS in step.condition["message"]
    assert (
        metrics.registry.get_sample_value("hdc_operator_autoscaler_decisions_total", {"reason": "MetricsUnavailable"})
        == 1
    )
    assert asyncio.run(scaler.step(("ns", "w"), body(3), {"autoscaling": {"mode": "hpa"}}, None)) is None


class _RecordingApi:
    """Records the autoscaler's writes (KubeApi's methods, by name and arguments)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, args))
            return {}

        return call


class _FixedSource:
    def __init__(self, observation):
        self.observation = observation

    async def observe(self, namespace, name, need_capacity):
        return self.observation

    async def close(self):
        pass


def test_a_scale_patches_the_scale_subresource_saves_the_history_and_posts_an_event():
    api = _RecordingApi()

    async def io(fn, *args):
        return fn(*args)

    # 2 replicas, target 50 ops/s each (100 x 50 %): a demand of 300 ops/s wants 6, which the default scale-up
    # policies allow (the larger of +100 % and +4 pods per 15 s).
    scaler = Autoscaler(api, OperatorMetrics(), "", io=io, clock=lambda: T0, source=_FixedSource(obs(300.0)))
    step = asyncio.run(scaler.step(("ns", "w"), body(2), spec(), {"status": {"readyReplicas": 2}}))
    assert step.scaled_from == 2 and step.decision.desired_replicas == 6
    names = [name for name, _ in api.calls]
    assert names == ["patch_scale", "patch_annotations", "post_event"]
    assert api.calls[0][1] == ("ns", "w", 6)
    saved = api.calls[1][1][2][HISTORY_ANNOTATION]
    assert history_from_annotation(body(annotation=saved)) == step.decision.history
    assert api.calls[2][1][1:3] == ("Normal", "Autoscaled")
