"""What `hdc-bench --service` prints and writes: the console tables and the markdown of docs/benchmarks.md, from
the report dict that bench/service.py's run_service_bench returns (no measuring here)."""

from __future__ import annotations

import statistics


def _floor_text(row: dict, markdown: bool = False) -> str:
    if row["floor"] is None:
        return ""
    mark = ("met" if row["meets_floor"] else "MISSED") if markdown else ("✓" if row["meets_floor"] else "✗")
    return f"{mark} ≥ {row['floor']:.0%}"


def _worker_text(row: dict) -> str:
    return f"batching {'on' if row['batching'] else 'off'}, observability {'on' if row['observability'] else 'off'}"


def print_service_report(report: dict, console) -> None:
    from rich.table import Table

    machine, cfg = report["machine"], report["config"]
    console.print(
        f"[bold]{machine['cpu']}[/] ({machine['cores']} cores, torch {machine['torch']}); worker and "
        f"in-process: {cfg['threads']} torch threads; memory {cfg['items']:,} items, D={cfg['dimension']:,}; "
        f"{cfg['seconds']:g} s per measurement; .{cfg.get('body', 'npz')} query bodies"
    )
    console.print(
        f"load average at start {_load(machine, 'start')}, at end {_load(machine, 'end')}; OpenMP wait "
        f"policy: in-process {_omp(machine, 'in_process')}, workers {_omp(machine, 'workers')}"
    )
    table = Table(title="hdc-bench --service: memory query (k=1) over HTTP vs ItemMemory.search in-process")
    for column in (
        "VSA",
        "load",
        "worker",
        "clients",
        "requests",
        "service q/s",
        "in-process q/s",
        "ratio",
        "paired ratio: median (rounds)",
        "floor",
        "vs batched in-process",
        "p50 ms",
        "p99 ms",
        "rows/kernel call",
        "batching gain",
        "CPU µs/query service / in-process",
    ):
        table.add_column(column, justify="left" if column in ("VSA", "load", "worker") else "right")
    for r in report["rows"]:
        gain = r.get("batching_gain")
        table.add_row(
            r["vsa"],
            _load_text(r),
            _worker_text(r),
            str(r["clients"]),
            str(r["requests"]),
            f"{r['service_qps']:,.0f}",
            f"{r['in_process_qps']:,.0f}",
            f"{r['ratio']:.0%}",
            _paired_ratio_text(r),
            _floor_text(r),
            _vs_batched_text(r),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            "" if r["mean_batch_rows"] is None else f"{r['mean_batch_rows']:.1f}",
            "" if gain is None else f"{gain:.1f}x",
            _cpu_text(r),
        )
    console.print(table)
    table = Table(title="Observability (metrics + tracing + logging) on vs off, measured alternately")
    for column in (
        "VSA",
        "load",
        "clients",
        "q/s on",
        "q/s off",
        "overhead",
        "ceiling",
        "paired rounds (median)",
        "event-loop CPU µs/request on / off (paired)",
        "p50 ms on",
        "p50 ms off",
    ):
        table.add_column(column, justify="left" if column in ("VSA", "load") else "right")
    for o in report["overheads"]:
        table.add_row(
            o["vsa"],
            o["scenario"],
            str(o["clients"]),
            f"{o['qps_on']:,.0f}",
            f"{o['qps_off']:,.0f}",
            f"{o['overhead']:+.1%}",
            f"{'✓' if o['meets_ceiling'] else '✗'} ≤ {o['ceiling']:.0%}",
            _paired_text(o),
            _loop_cpu_text(o),
            f"{o['p50_ms_on']:.2f}",
            f"{o['p50_ms_off']:.2f}",
        )
    console.print(table)
    _print_client_overheads(report, console)
    checked = sum(c["checked"] for c in report["checks"])
    wrong = sum(c["mismatches"] for c in report["checks"])
    console.print(f"answers: {checked} top-1 results checked against the in-process search, {wrong} mismatches")
    missed = [r for r in report["rows"] if r["meets_floor"] is False] + [
        o for o in report["overheads"] + report.get("client_overheads", []) if not o["meets_ceiling"]
    ]
    if missed:
        console.print(
            f"[yellow]{len(missed)} service floor(s) missed (reported, not an error: timings on a shared "
            f"machine vary)[/]"
        )


CLIENT_COLUMNS = (
    "VSA",
    "load",
    "clients",
    "q/s raw",
    "q/s client",
    "client / raw",
    "overhead",
    "ceiling",
    "paired rounds (median)",
    "client CPU µs/request raw / client",
    "p50 ms raw",
    "p50 ms client",
)


def _client_cells(o: dict, markdown: bool = False) -> list[str]:
    """One row of the client-overhead table."""
    mark = ("met" if o["meets_ceiling"] else "MISSED") if markdown else ("✓" if o["meets_ceiling"] else "✗")
    return [
        o["vsa"],
        o["scenario"],
        str(o["clients"]),
        f"{o['qps_raw']:,.0f}",
        f"{o['qps_client']:,.0f}",
        f"{o['ratio']:.1%}",
        f"{o['overhead']:+.1%}",
        f"{mark} ≤ {o['ceiling']:.0%}",
        _paired_text(o),
        f"{o['client_cpu_us_raw']:,.0f} / {o['client_cpu_us_client']:,.0f}",
        f"{o['p50_ms_raw']:.2f}",
        f"{o['p50_ms_client']:.2f}",
    ]


def _print_client_overheads(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="hd_compute.client (AsyncClient) vs raw aiohttp requests, measured alternately")
    for column in CLIENT_COLUMNS:
        table.add_column(column, justify="left" if column in ("VSA", "load") else "right")
    for o in report.get("client_overheads", []):
        table.add_row(*_client_cells(o))
    console.print(table)


def _cpu_text(row: dict) -> str:
    if row.get("cpu_us_per_query") is None or row.get("in_process_cpu_us_per_query") is None:
        return ""
    return f"{row['cpu_us_per_query']:,.0f} / {row['in_process_cpu_us_per_query']:,.0f}"


def _paired_ratio_text(row: dict) -> str:
    if row.get("paired_ratio") is None:
        return ""
    return f"{row['paired_ratio']:.0%} ({', '.join(f'{x:.0%}' for x in row['paired_ratios'])})"


def _paired_text(o: dict) -> str:
    rounds = ", ".join(f"{x:+.0%}" for x in o.get("overhead_paired", []))
    return f"{o.get('overhead_paired_median', float('nan')):+.1%} ({rounds})"


def _loop_cpu_text(o: dict) -> str:
    """Median event-loop CPU per request on / off, and the median of the rounds' differences (µs and %)."""
    if o.get("loop_cpu_us_paired_median") is None:
        return ""
    on, off = statistics.median(o["loop_cpu_us_on"]), statistics.median(o["loop_cpu_us_off"])
    return (
        f"{on:,.0f} / {off:,.0f} ({o['loop_cpu_us_paired_median']:+,.0f} µs, "
        f"{o['loop_cpu_overhead_paired_median']:+.1%})"
    )


def _vs_batched_text(row: dict) -> str:
    if row.get("ratio_vs_batched") is None:
        return ""
    return f"{row['ratio_vs_batched']:.0%} of {row['batched_in_process_qps']:,.0f}"


def _load_text(row: dict) -> str:
    return row["scenario"] if row["queries_per_request"] > 1 else "single query"


def _load(machine: dict, when: str) -> str:
    values = machine.get("load_average", {}).get(when)
    return "unknown" if not values else ", ".join(f"{v:.2f}" for v in values)


def _omp(machine: dict, who: str) -> str:
    return str(machine.get("omp_wait_policy", {}).get(who, "unknown"))


def service_markdown(report: dict) -> str:
    machine, cfg = report["machine"], report["config"]
    lines = [
        f"Machine: {machine['cpu']} ({machine['cores']} CPU cores, torch {machine['torch']}); worker and in-process "
        f"search on {cfg['threads']} torch threads; item memory of {cfg['items']:,} items, D={cfg['dimension']:,}; "
        f"`POST /v1/memories/{{name}}/query` with .{cfg.get('body', 'npz')} queries, k=1, JSON answers; "
        f"{cfg['seconds']:g} s per "
        f"measurement (observability on/off: {cfg['rounds']} alternating rounds each, over "
        f"{cfg['ab_workers']} worker processes per setting; event-loop CPU: the worker's main thread, per "
        f"request). Ratio = service queries/s / "
        f"in-process `ItemMemory.search` queries/s on the same queries per call (single-query requests: one query "
        f'per call); "vs batched in-process" = single-query service queries/s / the best batched in-process '
        f"queries/s of the run. CPU µs/query: worker + client CPU time per query over the service runs, and the "
        f"cheapest in-process figure (less affected by other load than throughput). Load average (1, 5, 15 min) at "
        f"start {_load(machine, 'start')}, at end "
        f"{_load(machine, 'end')}; OpenMP wait policy: in-process {_omp(machine, 'in_process')}, workers "
        f"{_omp(machine, 'workers')}.",
        "",
        "| VSA | load | worker | clients | requests | service q/s | in-process q/s | ratio "
        "| paired ratio: median (rounds) | floor | vs batched in-process | p50 ms | p99 ms | rows/kernel call "
        "| batching gain | CPU µs/query service / in-process |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        gain = r.get("batching_gain")
        lines.append(
            f"| {r['vsa']} | {_load_text(r)} | {_worker_text(r)} | {r['clients']} | {r['requests']} | "
            f"{r['service_qps']:,.0f} | {r['in_process_qps']:,.0f} | {r['ratio']:.0%} | {_paired_ratio_text(r)} | "
            f"{_floor_text(r, True)} | "
            f"{_vs_batched_text(r)} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{'' if r['mean_batch_rows'] is None else format(r['mean_batch_rows'], '.1f')} | "
            f"{'' if gain is None else format(gain, '.1f') + '×'} | {_cpu_text(r)} |"
        )
    lines += [
        "",
        "| VSA | load | clients | q/s observability on | q/s off | overhead | ceiling | paired rounds (median) "
        "| event-loop CPU µs/request on / off (paired) |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for o in report["overheads"]:
        verdict = "met" if o["meets_ceiling"] else "MISSED"
        lines.append(
            f"| {o['vsa']} | {o['scenario']} | {o['clients']} | {o['qps_on']:,.0f} | {o['qps_off']:,.0f} | "
            f"{o['overhead']:+.1%} | {verdict}: ≤ {o['ceiling']:.0%} | {_paired_text(o)} | "
            f"{_loop_cpu_text(o)} |"
        )
    lines += [
        "",
        "Client overhead: the same memory queries through `hd_compute.client.AsyncClient` (which encodes each "
        "query, sends it as .npy and reads the answer into tensors) and as raw aiohttp requests of pre-encoded .npy "
        "bodies, alternating round by round on the default worker; overhead = 1 - client q/s / raw q/s, judged on "
        "the median of the back-to-back pairs; client CPU: this process's CPU per request on each path.",
        "",
        "| " + " | ".join(CLIENT_COLUMNS) + " |",
        "|---|---|" + "---:|" * 5 + "---|---|" + "---:|" * 3,
    ]
    lines += ["| " + " | ".join(_client_cells(o, True)) + " |" for o in report.get("client_overheads", [])]
    checked = sum(c["checked"] for c in report["checks"])
    wrong = sum(c["mismatches"] for c in report["checks"])
    lines += ["", f"Answers: {checked} top-1 results checked against the in-process search, {wrong} mismatches."]
    return "\n".join(lines) + "\n"
