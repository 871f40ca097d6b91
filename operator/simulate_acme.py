"""`leitstand simulate acme`: big pretraining gangs among 1-GPU evaluation jobs, with and without
reservations for starving gangs, on the same synthesised stream (`leitstand.scheduler.sim.acme`).

Reads `<traces>/acme/gpu_num_histogram.csv` and `job_type_duration_queue_cdf.csv` (the traces root
is found as for `simulate replay`: `--traces`, `$LEITSTAND_TRACES`, `../shared/traces`, the cache).
Input errors end in one message naming the option or the file, line and column, and exit code 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from leitstand.operator import traces as trace_files


def acme(
    hours: Annotated[float, typer.Option(help="Hours of arrivals (the run goes on for half as long again).")] = 24.0,
    gangs: Annotated[int, typer.Option(help="Pretraining gangs (512 or 1,024 GPUs) arriving in that time.")] = 8,
    eval_load: Annotated[
        float, typer.Option(help="GPUs offered by 1-GPU evaluation jobs, as a fraction of the cluster.")
    ] = 0.9,
    nodes: Annotated[int, typer.Option(help="8-GPU nodes (spines of 128 nodes, racks of 16).")] = 256,
    reserve_after: Annotated[
        float, typer.Option(help="reserve_after_seconds of the run with reservations, seconds.")
    ] = 1800.0,
    max_gang_hours: Annotated[float, typer.Option(help="Cap on sampled gang durations, hours.")] = 12.0,
    period: Annotated[float, typer.Option(help="Seconds between scheduling cycles.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthesised arrivals and durations.")] = 1,
    cluster: Annotated[str, typer.Option(help="Acme cluster whose tables calibrate the mix.")] = "Kalos",
    traces: Annotated[
        Path | None,
        typer.Option(help="Traces directory [default: $LEITSTAND_TRACES, ../shared/traces, the fetch cache]."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Starvation of big gangs behind small jobs: waits and allocation without and with reservations."""
    from leitstand.scheduler.sim.acme import DURATIONS, HISTOGRAM, compare, load_tables, make_workload
    from leitstand.scheduler.sim.openb import TraceFormatError

    checks = (
        ("--hours", hours > 0 and math.isfinite(hours), "give a positive number of hours, e.g. 24"),
        ("--gangs", gangs >= 1, "give at least 1 gang"),
        ("--eval-load", 0 <= eval_load < 10, "give a fraction of the cluster, e.g. 0.9"),
        ("--nodes", nodes >= 128, "give at least 128 nodes (one spine holds a 1,024-GPU gang)"),
        ("--reserve-after", reserve_after >= 0 and math.isfinite(reserve_after), "give seconds >= 0, e.g. 1800"),
        ("--max-gang-hours", max_gang_hours > 0, "give a positive number of hours"),
        ("--period", period > 0, "give seconds > 0, e.g. 60"),
    )
    for option, ok, fix in checks:
        if not ok:
            raise typer.BadParameter(fix, param_hint=option)
    root = trace_files.resolve_root(traces)
    folder = root / "acme"
    try:
        trace_files.require(root, [folder / HISTOGRAM, folder / DURATIONS])
        tables = load_tables(folder, cluster)
    except (trace_files.TracesMissing, TraceFormatError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    workload = make_workload(
        tables, nodes=nodes, hours=hours, gangs=gangs, eval_load=eval_load, max_gang_hours=max_gang_hours, seed=seed
    )
    results = compare(workload, reserve_after_seconds=reserve_after, period=period)
    rows = [r.as_dict() for r in results]
    if json_out:
        typer.echo(json.dumps({"nodes": nodes, "gpus": 8 * nodes, "jobs": len(workload.arrivals), "runs": rows}))
        return
    typer.echo(
        f"{tables.cluster}-calibrated mix on {nodes} nodes ({8 * nodes} GPUs): {len(workload.arrivals)} jobs "
        f"({gangs} gangs) over {hours:g} h, seed {seed}"
    )
    header = (
        f"{'':34} {'gangs':>5} {'started':>7} {'wait p50 h':>10} {'wait max h':>10} {'eval p50 s':>10} "
        f"{'eval p99 s':>10} {'alloc':>6} {'evicted':>7} {'lost GPU-h':>10}"
    )
    typer.echo(header)
    for row in rows:
        typer.echo(
            f"{row['label']:34} {row['gangs']:>5} {row['gangs_started']:>7} {row['gang_wait_p50_hours']:>10.2f} "
            f"{row['gang_wait_max_hours']:>10.2f} {row['eval_wait_p50_seconds']:>10.0f} "
            f"{row['eval_wait_p99_seconds']:>10.0f} {row['allocation']:>6.1%} {row['evictions']:>7} "
            f"{row['lost_gpu_hours']:>10.1f}"
        )
    typer.echo(
        "gang waits count a gang never started by how long it had waited at the end; alloc is over the "
        "arrival window; evicted jobs start over (lost GPU-h)"
    )
