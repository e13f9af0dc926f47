"""`hdc-bench`: the seed's baseline cases, ours against torchhd, with ratios, peak memory and roofline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from hd_compute.device import resolve_device
from hd_compute.kernels import dispatch

from .cases import MAX_LATENCY_MS, MAX_MEMORY_MB, RATIO_FLOORS, build_cases
from .measure import copy_bandwidth_gb_s, machine_description, peak_memory_mb, time_call

app = typer.Typer(add_completion=False, help=__doc__)
console = Console()


def run_cases(device: torch.device, repeats: int, vsas: list[str], with_torchhd: bool) -> dict:
    bandwidth = copy_bandwidth_gb_s(device)
    rows = []
    copy_rates: dict[int, float] = {}
    for vsa in vsas:
        for case in build_cases(vsa, device, with_torchhd=with_torchhd):
            console.log(f"{vsa} {case.name}")
            ours_s = time_call(case.ours, device, repeats=repeats)
            ours_mb = peak_memory_mb(case.ours, device)
            # The roofline is a plain copy of the same number of bytes (read + written), measured now: caches
            # make small working sets faster than the large-copy bandwidth, so one figure would mislead.
            copy_mb = max(1, round(case.bytes_moved / 2 / 2**20))
            if copy_mb not in copy_rates:
                copy_rates[copy_mb] = copy_bandwidth_gb_s(device, megabytes=copy_mb, repeats=max(5, repeats))
            row = {
                "case": case.name,
                "vsa": vsa,
                "ours_s": ours_s,
                "ours_peak_mb": ours_mb,
                "bytes_moved": case.bytes_moved,
                "copy_bandwidth_gb_s": copy_rates[copy_mb],
                "roofline_fraction": case.bytes_moved / ours_s / (copy_rates[copy_mb] * 1e9),
                "max_latency_ms": MAX_LATENCY_MS.get(case.name),
                "max_memory_mb": MAX_MEMORY_MB.get(case.name),
                "baselines": [],
            }
            row["meets_latency"] = row["max_latency_ms"] is None or ours_s * 1e3 <= row["max_latency_ms"]
            row["meets_memory"] = row["max_memory_mb"] is None or (
                ours_mb is not None and ours_mb <= row["max_memory_mb"]
            )
            for label, baseline in case.baselines.items():
                theirs_repeats = case.repeats_override.get(label, repeats)
                theirs_s = time_call(baseline, device, repeats=theirs_repeats, warmup=min(1, theirs_repeats - 1))
                theirs_mb = peak_memory_mb(baseline, device) if theirs_repeats > 1 else None
                floor = RATIO_FLOORS.get((vsa, case.name, label)) if device.type == "cpu" else None
                ratio = theirs_s / ours_s
                row["baselines"].append(
                    {
                        "torchhd_function": label,
                        "torchhd_s": theirs_s,
                        "torchhd_peak_mb": theirs_mb,
                        "ratio": ratio,
                        "ratio_floor": floor,
                        "meets_floor": floor is None or ratio >= floor,
                    }
                )
            rows.append(row)
    return {
        "machine": machine_description(device),
        "kernels": dispatch.describe(),
        "copy_bandwidth_gb_s": bandwidth,
        "repeats": repeats,
        "cases": rows,
    }


def _seed_limits(row: dict) -> str:
    limits = []
    if row["max_latency_ms"] is not None:
        limits.append(f"≤ {row['max_latency_ms']:g} ms")
    if row["max_memory_mb"] is not None:
        limits.append(f"≤ {row['max_memory_mb']:g} MB")
    return ", ".join(limits)


def _peak_text(row: dict) -> str:
    return "n/a" if row["ours_peak_mb"] is None else f"{row['ours_peak_mb']:.1f}"


def print_report(report: dict) -> None:
    machine = report["machine"]
    console.print(
        f"[bold]{machine['cpu']}[/] ({machine['cores']} cores, torch {machine['torch']}, "
        f"device {machine['device']}{', ' + machine['gpu'] if 'gpu' in machine else ''}); "
        f"copy bandwidth {report['copy_bandwidth_gb_s']:.1f} GB/s; kernels {report['kernels']}"
    )
    table = Table(title="hdc-bench: ours vs torchhd (median seconds; ratio = torchhd / ours)")
    for column in (
        "VSA",
        "case",
        "ours ms",
        "peak MB",
        "roofline",
        "seed baseline",
        "torchhd function",
        "torchhd ms",
        "ratio",
        "floor",
    ):
        table.add_column(column, justify="right" if column not in ("VSA", "case", "torchhd function") else "left")
    for row in report["cases"]:
        ok = row["meets_latency"] and row["meets_memory"]
        baseline_cell = f"{'✓' if ok else '✗'} {_seed_limits(row)}"
        common = [
            row["vsa"],
            row["case"],
            f"{row['ours_s'] * 1e3:.2f}",
            _peak_text(row),
            f"{row['roofline_fraction']:.1%}",
            baseline_cell,
        ]
        for index, base in enumerate(row["baselines"] or [None]):
            cells = common if index == 0 else [""] * len(common)
            if base is None:
                table.add_row(*cells, "", "", "", "")
                continue
            floor = (
                ""
                if base["ratio_floor"] is None
                else f"{'✓' if base['meets_floor'] else '✗'} ≥{base['ratio_floor']:g}x"
            )
            table.add_row(
                *cells, base["torchhd_function"], f"{base['torchhd_s'] * 1e3:.1f}", f"{base['ratio']:.1f}x", floor
            )
    console.print(table)


def markdown_report(report: dict) -> str:
    """The report as Markdown tables, for docs/benchmarks.md."""
    machine = report["machine"]
    lines = [
        f"Machine: {machine.get('gpu', machine['cpu'])} ({machine['cores']} CPU cores, torch {machine['torch']}, "
        f"{machine['torch_threads']} torch threads, device `{machine['device']}`); kernels: {report['kernels']}; "
        f"copy bandwidth of a 512 MB tensor: {report['copy_bandwidth_gb_s']:.1f} GB/s; median of "
        f"{report['repeats']} runs. Roofline = (bytes the operation must read and write / its time) divided by "
        f"the bandwidth of a plain copy of as many bytes, measured in the same run.",
        "",
        "| VSA | case | ours ms | ours peak MB | roofline | seed baseline | torchhd function | torchhd ms "
        "| ratio (torchhd/ours) | floor |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for row in report["cases"]:
        verdict = "met" if row["meets_latency"] and row["meets_memory"] else "MISSED"
        head = (
            f"| {row['vsa']} | {row['case']} | {row['ours_s'] * 1e3:.2f} | {_peak_text(row)} | "
            f"{row['roofline_fraction']:.0%} | {verdict}: {_seed_limits(row)} "
        )
        for base in row["baselines"] or [None]:
            if base is None:
                lines.append(head + "| | | | |")
                continue
            floor = (
                ""
                if base["ratio_floor"] is None
                else f"{'met' if base['meets_floor'] else 'MISSED'}: ≥ {base['ratio_floor']:g}×"
            )
            lines.append(
                head
                + f"| {base['torchhd_function']} | {base['torchhd_s'] * 1e3:.1f} | {base['ratio']:.1f}× | {floor} |"
            )
    if "kernel_candidates" in report:
        lines += ["", "| operation | implementation | ms | used |", "|---|---|---:|---|"]
        for c in report["kernel_candidates"]:
            lines.append(
                f"| {c['operation']} | {c['implementation']} | {c['seconds'] * 1e3:.2f} "
                f"| {'yes' if c['chosen'] else ''} |"
            )
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ours, theirs = [], [], []
    for row in report["cases"]:
        for base in row["baselines"]:
            labels.append(f"{row['vsa']} {row['case']}\nvs {base['torchhd_function']}")
            ours.append(row["ours_s"] * 1e3)
            theirs.append(base["torchhd_s"] * 1e3)
    if not labels:
        raise typer.BadParameter("--plot needs the torchhd comparison; drop --no-torchhd")
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(labels)), 5))
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], ours, width=0.4, label="hd_compute")
    ax.bar([p + 0.2 for p in positions], theirs, width=0.4, label="torchhd 5.8.4")
    for p, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        ax.annotate(f"{t / o:.1f}x", (p, max(o, t)), ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median milliseconds (log scale)")
    ax.set_xticks(list(positions), labels, fontsize=7)
    machine = report["machine"]
    ax.set_title(f"hdc-bench on {machine.get('gpu', machine['cpu'])} ({machine['device']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@app.command()
def bench(
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    repeats: int = typer.Option(10, min=1, help="timed repetitions per case (median reported)"),
    vsa: list[str] = typer.Option(["MAP", "BSC"], help="VSA models to run (repeat the option)"),
    torchhd: bool = typer.Option(True, help="compare with torchhd (pip install 'hd-compute-toolkit[bench]')"),
    kernels: bool = typer.Option(False, help="also time the kernel candidates behind each CPU kernel choice"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the full report as JSON"),
    plot: Optional[Path] = typer.Option(None, help="write a bar chart (PNG) of ours vs torchhd"),
    markdown: Optional[Path] = typer.Option(None, help="write the tables as Markdown (docs/benchmarks.md)"),
    service: bool = typer.Option(
        False,
        "--service",
        help="instead of the kernel cases: drive `hdc-worker serve` "
        "processes over HTTP and compare with the same search in-process",
    ),
    service_seconds: float = typer.Option(3.0, min=0.05, help="--service: seconds per measurement"),
    service_max_requests: int = typer.Option(
        5_000, min=1, help="--service: at most this many requests per measurement"
    ),
    service_items: int = typer.Option(10_000, min=1, help="--service: items in each item memory"),
    service_dimension: int = typer.Option(10_000, min=1, help="--service: dimension"),
    service_clients: int = typer.Option(32, min=1, help="--service: concurrent clients sending single queries"),
    service_batch_clients: int = typer.Option(2, min=1, help="--service: concurrent clients sending batched queries"),
    service_batch: list[int] = typer.Option([64, 256], help="--service: queries per batched request (repeat)"),
    service_rounds: int = typer.Option(2, min=1, help="--service: observability on/off alternations"),
    service_ab_workers: int = typer.Option(
        2,
        min=1,
        help="--service: worker processes per setting (observability on, off) that the on/off rounds take turns on",
    ),
    service_threads: int = typer.Option(
        0, min=0, help="--service: torch threads of each worker and of the in-process baseline (0: all cores)"
    ),
    service_body: str = typer.Option(
        "npy", help="--service: the queries' body, npy (the array alone, application/x-npy) or npz (an archive)"
    ),
) -> None:
    if service:
        _service(
            device,
            repeats,
            vsa,
            json_path,
            markdown,
            service_seconds,
            service_max_requests,
            service_items,
            service_dimension,
            service_clients,
            service_batch_clients,
            service_batch,
            service_rounds,
            service_ab_workers,
            service_threads,
            service_body,
        )
        return
    resolved = resolve_device(device)
    names = [v.upper() for v in vsa]
    for name in names:
        if name not in ("MAP", "BSC"):
            raise typer.BadParameter(f"the seed's cases are defined for MAP and BSC, got {name}", param_hint="--vsa")
    if torchhd:
        try:
            import torchhd as _  # noqa: F401
        except ImportError:
            raise typer.BadParameter(
                "torchhd is not installed: pip install 'hd-compute-toolkit[bench]' or pass --no-torchhd"
            ) from None
    report = run_cases(resolved, repeats, names, torchhd)
    if kernels:
        from .kernels import cpu_candidates, time_candidates

        report["kernel_candidates"] = time_candidates(cpu_candidates(), repeats)
    print_report(report)
    if kernels:
        table = Table(title="CPU kernel candidates (median ms; ● = used by dispatch)")
        for column in ("operation", "implementation", "ms", ""):
            table.add_column(column)
        for c in report["kernel_candidates"]:
            table.add_row(c["operation"], c["implementation"], f"{c['seconds'] * 1e3:.2f}", "●" if c["chosen"] else "")
        console.print(table)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")
    if markdown:
        markdown.write_text(markdown_report(report))
        console.print(f"wrote {markdown}")
    if plot:
        plot_report(report, plot)
        console.print(f"wrote {plot}")
    failures = [r for r in report["cases"] if not (r["meets_latency"] and r["meets_memory"])]
    failures += [b for r in report["cases"] for b in r["baselines"] if not b["meets_floor"]]
    if failures:
        console.print(f"[red]{len(failures)} target(s) missed[/]")
        raise typer.Exit(1)


def _service(
    device: str,
    repeats: int,
    vsa: list[str],
    json_path: Optional[Path],
    markdown: Optional[Path],
    seconds: float,
    max_requests: int,
    items: int,
    dimension: int,
    clients: int,
    batch_clients: int,
    batch: list[int],
    rounds: int,
    ab_workers: int,
    threads: int,
    body: str,
) -> None:
    """hdc-bench --service: floors are printed (met/missed), never turned into a failing exit status."""
    import os

    from .service import ServiceConfig, run_service_bench
    from .service_report import print_service_report, service_markdown

    names = [v.upper() for v in vsa]
    for name in names:
        if name not in ("MAP", "BSC"):
            raise typer.BadParameter(f"--service runs MAP and BSC memories, got {name}", param_hint="--vsa")
    if any(q < 1 for q in batch):
        raise typer.BadParameter("queries per request must be >= 1", param_hint="--service-batch")
    if body not in ("npy", "npz"):
        raise typer.BadParameter(f"must be npy or npz, got {body}", param_hint="--service-body")
    cfg = ServiceConfig(
        vsas=names,
        items=items,
        dimension=dimension,
        batch_sizes=list(batch),
        batch_clients=batch_clients,
        single_clients=clients,
        seconds=seconds,
        max_requests=max_requests,
        rounds=rounds,
        ab_workers=ab_workers,
        threads=threads or (os.cpu_count() or 1),
        repeats=repeats,
        body=body,
        device=str(resolve_device(device)),
    )
    report = run_service_bench(cfg, log=console.log)
    print_service_report(report, console)
    if json_path:
        json_path.write_text(json.dumps({"service": report}, indent=2))
        console.print(f"wrote {json_path}")
    if markdown:
        markdown.write_text(service_markdown(report))
        console.print(f"wrote {markdown}")
    if not report["answers_correct"]:
        console.print("[red]the service answered differently from the in-process search[/]")
        raise typer.Exit(1)


def main() -> None:
    app()
