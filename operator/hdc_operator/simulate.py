"""Trace-driven autoscaling simulator: the operator's scaler against the plain HPA formula, on the same trace.

    hdcctl simulate-autoscaling --json result.json --plot scaling.png --seed 1
    python -m hdc_operator.simulate --json result.json --plot scaling.png --seed 1

The world, one step per second (SimConfig holds every number):
- offered demand: a diurnal curve (one "day" per `period_s`) with short-term jitter, plus bursts (Poisson
  arrivals, a multiplier and a duration each), in hypervector operations per second;
- each pod serves at most `capacity_per_pod` ops/s once it is ready, `startup_s` after it was created; the
  served rate is min(demand, ready pods x capacity) (what hdc_hypervector_operations_total counts);
- Prometheus scrapes every `scrape_interval_s`; a scaler evaluating at t sees the rate over `rate_window_s`
  ending `metrics_delay_s` earlier, times (1 + noise), and the pods that were ready then. Our scaler also sees
  each pod's measured capacity (the continuous benchmark, with its own noise);
- both scalers evaluate every `sync_period_s` (the HPA's 15 s) with the HPA's default behavior, the same
  bounds, target utilization and tolerance; both worlds see the same demand trace and the same metric noise.

The plain HPA formula (Pods metric = utilization of the ready pods, as the HPA averages over pods with
metrics): desired = ceil(ready x utilization / target), the current replicas when |utilization / target - 1|
<= tolerance, then the HPA behavior. Ours: hdc_operator.scaling.decide with measured capacity and a second,
short-window rate (`recent_window_s`).

Scores per scaler: seconds of unmet demand (ready capacity < offered demand), unmet operations, replica-seconds
(pods that exist, starting ones included), scale events (changes of the replica count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from hdc_operator.scaling import (
    Behavior,
    History,
    MetricsObservation,
    ScalerConfig,
    apply_behavior,
    decide,
    record_scale,
)

__all__ = ["SimConfig", "Trace", "make_trace", "simulate", "run", "main", "OPERATOR_TUNING"]

# The estimation terms our scaler runs with in the operator (ScalerConfig fields; docs/autoscaling.md).
OPERATOR_TUNING: dict[str, Any] = {}  # ScalerConfig's defaults: recent_up_gate 2, recent_down_gate 0.5


@dataclass(frozen=True)
class SimConfig:
    duration_s: int = 6 * 3600
    period_s: int = 6 * 3600  # one diurnal cycle
    base_demand: float = 6000.0  # ops/s, the diurnal mean
    diurnal_amplitude: float = 0.7  # demand goes from base x (1 - a) to base x (1 + a)
    jitter: float = 0.05  # short-term relative variation of the offered demand
    burst_every_s: float = 1200.0  # mean gap between bursts
    burst_multiplier: tuple[float, float] = (1.5, 3.0)
    burst_duration_s: tuple[float, float] = (60.0, 360.0)
    capacity_per_pod: float = 1000.0  # true ops/s of one ready pod
    capacity_noise: float = 0.03  # relative error of a pod's benchmark measurement
    startup_s: int = 45  # pod creation -> ready
    scrape_interval_s: int = 5
    rate_window_s: int = 60
    recent_window_s: int = 20  # our scaler's short window (0: off)
    operator_rate_window_s: int = 60  # our scaler's demand window (the HPA's is rate_window_s)
    metrics_delay_s: int = 10
    metric_noise: float = 0.05  # relative noise of an observed rate
    sync_period_s: int = 15
    min_replicas: int = 1
    max_replicas: int = 60
    target_utilization_percent: float = 70.0
    tolerance_percent: float = 10.0
    initial_replicas: int = 3


@dataclass
class Trace:
    demand: list[float]  # offered ops/s per second
    metric_noise: list[float]  # one multiplicative factor per sync (shared by both scalers)
    recent_noise: list[float]  # the same for the short-window rate (ours only)
    capacity_errors: list[float]  # measured/true capacity of the n-th pod created (shared)
    bursts: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, multiplier)


def make_trace(cfg: SimConfig, seed: int) -> Trace:
    rng = random.Random(seed)
    bursts = []
    t = rng.expovariate(1.0 / cfg.burst_every_s)
    while t < cfg.duration_s:
        length = rng.uniform(*cfg.burst_duration_s)
        bursts.append((int(t), int(min(cfg.duration_s, t + length)), rng.uniform(*cfg.burst_multiplier)))
        t += length + rng.expovariate(1.0 / cfg.burst_every_s)
    demand, wobble = [], 0.0
    for s in range(cfg.duration_s):
        diurnal = 1.0 - cfg.diurnal_amplitude * math.cos(2 * math.pi * s / cfg.period_s)
        wobble = 0.98 * wobble + rng.gauss(0.0, cfg.jitter * math.sqrt(1 - 0.98**2))  # AR(1), sd = jitter
        d = cfg.base_demand * diurnal * (1.0 + wobble)
        for start, end, mult in bursts:
            if start <= s < end:
                ramp = min(1.0, (s - start) / 10.0, (end - s) / 10.0)  # 10 s edges
                d *= 1.0 + (mult - 1.0) * ramp
        demand.append(max(0.0, d))
    syncs = cfg.duration_s // cfg.sync_period_s + 1
    noise = [max(0.0, 1.0 + rng.gauss(0.0, cfg.metric_noise)) for _ in range(syncs)]
    recent_noise = [max(0.0, 1.0 + rng.gauss(0.0, cfg.metric_noise)) for _ in range(syncs)]
    cap_err = [1.0 + rng.gauss(0.0, cfg.capacity_noise) for _ in range(100_000)]
    return Trace(demand, noise, recent_noise, cap_err, bursts)


def _hpa_step(
    cfg: SimConfig, behavior: Behavior, current: int, served_rate: float, ready: int, history: History, now: float
) -> tuple[int, History]:
    """The plain HPA formula on a utilization metric, then the HPA behavior (same code path as ours)."""
    if ready <= 0:
        return current, history  # no pod reports the metric: the HPA cannot compute, it holds
    utilization = served_rate / (ready * cfg.capacity_per_pod)
    ratio = utilization / (cfg.target_utilization_percent / 100.0)
    raw = current if abs(ratio - 1.0) <= cfg.tolerance_percent / 100.0 else math.ceil(ready * ratio - 1e-9)
    if current > cfg.max_replicas or current < cfg.min_replicas:
        return min(max(current, cfg.min_replicas), cfg.max_replicas), history
    desired, _, history = apply_behavior(current, raw, cfg.min_replicas, cfg.max_replicas, behavior, history, now)
    if desired != current:
        history = record_scale(history, current, desired, behavior, now)
    return desired, history


def simulate(cfg: SimConfig, trace: Trace, scaler: str, tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs one scaler ("operator" or "hpa") over the trace; returns its scores and time series."""
    if scaler not in ("operator", "hpa"):
        raise ValueError(f"scaler must be 'operator' or 'hpa', got {scaler!r}")
    behavior = Behavior.from_spec({})
    config = ScalerConfig(
        min_replicas=cfg.min_replicas,
        max_replicas=cfg.max_replicas,
        target_utilization_percent=cfg.target_utilization_percent,
        tolerance_percent=cfg.tolerance_percent,
        behavior=behavior,
        **(OPERATOR_TUNING if tuning is None else tuning),
    )
    pods: list[tuple[int, float]] = []  # (created at, measured capacity)
    created = 0
    for _ in range(cfg.initial_replicas):
        pods.append((-cfg.startup_s, cfg.capacity_per_pod * trace.capacity_errors[created]))
        created += 1
    history = History()
    counter = 0.0  # served ops so far (hdc_hypervector_operations_total summed over pods)
    scrapes: list[tuple[int, float, int, float]] = []  # (time, counter, ready pods, mean measured capacity)
    unmet_s = 0
    unmet_ops = 0.0
    replica_s = 0
    events = 0
    series = {"t": [], "demand": [], "capacity": [], "replicas": []}
    for t in range(cfg.duration_s):
        ready = [p for p in pods if p[0] + cfg.startup_s <= t]
        cap = len(ready) * cfg.capacity_per_pod
        d = trace.demand[t]
        counter += min(d, cap)
        if cap < d:
            unmet_s += 1
            unmet_ops += d - cap
        replica_s += len(pods)
        if t % cfg.scrape_interval_s == 0:
            mean_cap = sum(p[1] for p in ready) / len(ready) if ready else float("nan")
            scrapes.append((t, counter, len(ready), mean_cap))
        if t % cfg.sync_period_s == 0 and t > 0:
            seen = [s for s in scrapes if s[0] <= t - cfg.metrics_delay_s]
            if len(seen) >= 2:
                last = seen[-1]
                window = cfg.operator_rate_window_s if scaler == "operator" else cfg.rate_window_s
                first = next((s for s in seen if s[0] >= last[0] - window), seen[0])
                span = last[0] - first[0]
                rate = (last[1] - first[1]) / span * trace.metric_noise[t // cfg.sync_period_s] if span > 0 else None
                current = len(pods)
                if scaler == "operator":
                    recent = None
                    if cfg.recent_window_s:
                        early = next((s for s in seen if s[0] >= last[0] - cfg.recent_window_s), seen[0])
                        if last[0] > early[0]:
                            recent = (
                                (last[1] - early[1]) / (last[0] - early[0]) * trace.recent_noise[t // cfg.sync_period_s]
                            )
                    obs = MetricsObservation(
                        rate, last[3] if last[2] else None, float(last[0]), last[2], recent_demand_ops_per_second=recent
                    )
                    decision = decide(current, obs, config, history, float(t), ready_replicas=len(ready))
                    desired, history = decision.desired_replicas, decision.history
                else:
                    desired, history = (
                        (current, history)
                        if rate is None
                        else _hpa_step(cfg, behavior, current, rate, last[2], history, float(t))
                    )
                if desired > current:
                    for _ in range(desired - current):
                        error = trace.capacity_errors[created % len(trace.capacity_errors)]
                        pods.append((t, cfg.capacity_per_pod * error))
                        created += 1
                elif desired < current:
                    # a Deployment removes pods that are not ready first, then the newest
                    pods.sort(key=lambda p: (p[0] + cfg.startup_s <= t, -p[0]))
                    pods = pods[current - desired :]
                if desired != current:
                    events += 1
        if t % 30 == 0:
            series["t"].append(t)
            series["demand"].append(round(d, 1))
            series["capacity"].append(cap)
            series["replicas"].append(len(pods))
    return {
        "unmet_demand_seconds": unmet_s,
        "unmet_operations": round(unmet_ops),
        "replica_seconds": replica_s,
        "scale_events": events,
        "series": series,
    }


def _machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()} ({cpu or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def run(seed: int = 1, cfg: SimConfig | None = None, tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = cfg or SimConfig()
    trace = make_trace(cfg, seed)
    ours = simulate(cfg, trace, "operator", tuning)
    hpa = simulate(cfg, trace, "hpa")
    floor = {
        "fewerUnmetSeconds": ours["unmet_demand_seconds"] < hpa["unmet_demand_seconds"],
        "noMoreReplicaSeconds": ours["replica_seconds"] <= hpa["replica_seconds"],
        "fewerScaleEvents": ours["scale_events"] < hpa["scale_events"],
    }
    return {
        "seed": seed,
        "machine": _machine(),
        "config": asdict(cfg),
        "tuning": dict(OPERATOR_TUNING if tuning is None else tuning),
        "bursts": len(trace.bursts),
        "operator": ours,
        "hpa": hpa,
        "floor": floor,
        "floorMet": all(floor.values()),
    }


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True, sharey=True)
    cap = result["config"]["capacity_per_pod"]
    top = 1.05 * max(max(result[n]["series"][k]) for n in ("operator", "hpa") for k in ("demand", "capacity"))
    for ax, name, title in ((axes[0], "operator", "operator scaler"), (axes[1], "hpa", "plain HPA formula")):
        r = result[name]
        s = r["series"]
        hours = [t / 3600 for t in s["t"]]
        ax.plot(hours, s["demand"], color="black", lw=0.8, label="offered demand")
        ax.plot(hours, s["capacity"], color="tab:green", lw=1.0, label="ready capacity")
        ax.step(
            hours,
            [n * cap for n in s["replicas"]],
            where="post",
            color="tab:blue",
            lw=1.0,
            alpha=0.8,
            label=f"replicas (right axis; x {cap:g} ops/s on the left)",
        )
        ax.set_ylim(0, top)
        ax.set_ylabel("hypervector ops/s")
        ax2 = ax.twinx()
        ax2.set_ylim(0, top / cap)  # one replica's capacity per unit: the step line reads on both axes
        ax2.set_ylabel("replicas")
        ax.set_title(
            f"{title}: unmet {r['unmet_demand_seconds']} s, {r['replica_seconds']} replica-s, "
            f"{r['scale_events']} scale events"
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[1].set_xlabel("hours")
    fig.suptitle(f"Autoscaling simulation, seed {result['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the time series (what --json prints to the terminal)."""
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "series"} if k in ("operator", "hpa") else v)
        for k, v in result.items()
        if k != "config"
    }


def cli(json_path: str | None, plot_path: str | None, seed: int, hours: float | None = None) -> dict[str, Any]:
    cfg = SimConfig()
    if hours is not None:
        if not (isinstance(hours, (int, float)) and 0 < hours <= 48):
            raise ValueError(f"--hours must be in (0, 48], got {hours!r}")
        cfg = SimConfig(duration_s=int(hours * 3600), period_s=int(hours * 3600))
    result = run(seed, cfg)
    if json_path:
        text = json.dumps(result, indent=1)
        if json_path == "-":
            sys.stdout.write(text + "\n")
        else:
            with open(json_path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
    if plot_path:
        plot(result, plot_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hdc_operator.simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", help="write the full result (with time series) here; - for stdout")
    parser.add_argument("--plot", dest="plot_path", help="write a PNG of demand, capacity and replicas here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=None, help="trace length (one diurnal cycle); default 6")
    args = parser.parse_args(argv)
    try:
        result = cli(args.json_path, args.plot_path, args.seed, args.hours)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json_path != "-":
        print(json.dumps(summary(result), indent=1))
    return 0 if result["floorMet"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
