"""`hdcctl simulate-autoscaling`: the operator's scaler against the plain HPA formula on one synthetic trace.

    hdcctl simulate-autoscaling --json result.json --plot scaling.png --seed 1 [--hours 6]

Prints the scores (unmet-demand seconds, replica-seconds, scale events) of both scalers; the JSON file also holds
the time series. Exit status 0 when our scaler meets the floor (fewer unmet seconds, no more replica-seconds and
fewer scale events than the HPA formula), 1 when not. hdc_operator.simulate has the model.
"""

from __future__ import annotations

import json
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate-autoscaling")
    def simulate_autoscaling(
        json_path: Optional[str] = typer.Option(None, "--json", help="Write the full result here (- for stdout)."),
        plot_path: Optional[str] = typer.Option(None, "--plot", help="Write a PNG of demand, capacity and replicas."),
        seed: int = typer.Option(1, "--seed", help="Seed of the trace and of the metric noise."),
        hours: Optional[float] = typer.Option(None, "--hours", help="Trace length, one diurnal cycle (default 6)."),
    ) -> None:
        """Compare the operator's scaler with the HPA formula on a synthetic diurnal trace with bursts."""
        from hdc_operator.simulate import cli, summary

        try:
            result = cli(json_path, plot_path, seed, hours)
        except ValueError as exc:
            typer.echo(f"hdcctl: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            typer.echo(f"hdcctl: error: cannot write {exc.filename}: {exc.strerror}", err=True)
            raise typer.Exit(1) from None
        if json_path != "-":
            typer.echo(json.dumps(summary(result), indent=1))
        raise typer.Exit(0 if result["floorMet"] else 1)
