"""`hdcctl bench ...`: runs `hdc-bench` (the worker package's benchmark) with the same arguments.

    hdcctl bench --help                     # hdc-bench's own options
    hdcctl bench --kernels --json out/bench.json

A thin wrapper: every argument goes to hdc-bench unchanged and its exit status is hdcctl's. Where the worker
package (hd_compute, with torch) is not installed, e.g. the operator image, it says how to get it instead.
docs/benchmarks.md has the measured results.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import typer

INSTALL_HINT = (
    "hdc-bench is part of the worker package (hd_compute, with torch), which this Python does not have. "
    "In a source checkout run `make install` and then `.venv/bin/hdcctl bench ...` (or `make bench`); "
    "elsewhere `pip install 'hd-compute-toolkit[dev]'`."
)


def bench_command() -> list[str] | None:
    """hdc-bench next to this Python, else `python -m hd_compute.bench` when importable, else None."""
    script = pathlib.Path(sys.executable).parent / "hdc-bench"
    if script.exists():
        return [str(script)]
    if importlib.util.find_spec("hd_compute") is not None:
        return [sys.executable, "-c", "from hd_compute.bench.cli import main; main()"]
    return None


def register(app: typer.Typer) -> None:
    @app.command(
        "bench", add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )
    def bench(ctx: typer.Context) -> None:
        """Run hdc-bench (ours vs torchhd; --service for the worker's HTTP path); arguments pass through."""
        command = bench_command()
        if command is None:
            typer.echo(f"hdcctl: error: {INSTALL_HINT}", err=True)
            raise typer.Exit(1)
        raise typer.Exit(subprocess.run([*command, *ctx.args]).returncode)
