"""`leitstand bench core`: how fast the placement core is, in one run.

Thin CLI over `leitstand.scheduler.bench.run_core_bench`: per-gang placement latency at 1k, 10k and
100k GPUs (four labelled topology levels zone > spine > rack > nvlink-domain, plus the node; mixed
gang sizes and slices on a ~65 % full cluster with churn), the 5,000-gang placement loop on 100k
GPUs (`placement_loop_*`: no cycle around it), `cycle.run_cycle` on the same with one queue and
nothing running (`cycle_allocate_only`: reclaim, preempt and consolidate have nothing to do), the
contended cycle (`cycle_contended`: ~90 % of 100k GPUs held by ~25,000 jobs of 200 leaf queues in
three levels, 5,000 pending; seconds per phase and what each phase did), and the compiled kernels
against the pure-Python reference on the same placements. Prints a table, or the JSON dict with
`--json`. Numbers only: no thresholds are asserted here or in tests. Heavy imports (numpy, numba)
happen inside the command.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer


def core(
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    sizes: Annotated[str, typer.Option(help="Cluster sizes in GPUs, comma-separated.")] = "1000,10000,100000",
    gangs: Annotated[int, typer.Option(help="Gangs timed per size.")] = 2000,
    cycle_jobs: Annotated[int, typer.Option(help="Pending gangs in the cycle run (0: skip).")] = 5000,
    cycle_gpus: Annotated[int, typer.Option(help="GPUs of the cycle run's cluster.")] = 100_000,
    reference_gangs: Annotated[int, typer.Option(help="Gangs also placed by the reference engine.")] = 30,
    fill: Annotated[float, typer.Option(help="Fraction of GPUs in use before timing.")] = 0.65,
    policy: Annotated[str, typer.Option(help="Placement policy.")] = "leitstand",
    run_cycle: Annotated[bool, typer.Option(help="Also time cycle.run_cycle if present.")] = True,
    contended: Annotated[
        bool, typer.Option(help="Also time one contended cycle (reclaim, preempt and consolidate at work).")
    ] = True,
    contended_pending: Annotated[int, typer.Option(help="Pending jobs of the contended cycle.")] = 5000,
) -> None:
    """Per-gang placement latency, one full cycle, and the speed-up over the reference engine."""
    from leitstand.scheduler.bench import run_core_bench

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"bad --sizes {sizes!r}; use e.g. 1000,10000,100000") from None

    def progress(message: str) -> None:
        if not json_output:
            print(f"... {message}", file=sys.stderr)

    result = run_core_bench(
        size_list,
        gangs=gangs,
        cycle_jobs=cycle_jobs,
        cycle_gpus=cycle_gpus,
        reference_gangs=reference_gangs,
        fill=fill,
        policy=policy,
        run_cycle=run_cycle,
        contended=contended,
        contended_pending=contended_pending,
        progress=progress,
    )
    if json_output:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"placement latency, policy {result['policy']}, µs per gang")
    for column in ("GPUs", "median", "p99", "CPU-time median", "cold median", "reference median", "speed-up"):
        table.add_column(column, justify="right")
    for size, stats in result["placement_us"].items():
        cold = result["placement_cold_us"].get(size, {})
        cpu = result["placement_cpu_us"].get(size, {})
        ref = result["reference_us"].get(size, {})
        table.add_row(
            size,
            f"{stats['median']:.1f}",
            f"{stats['p99']:.1f}",
            f"{cpu.get('median', float('nan')):.1f}",
            f"{cold.get('median', float('nan')):.1f}",
            f"{ref.get('median', float('nan')):.1f}",
            f"{result['reference_speedup_by_size'].get(size, float('nan')):.0f}×",
        )
    console = Console()
    console.print(table)
    if "placement_loop_seconds" in result:
        console.print(
            f"placement loop (request, place, apply; no cycle): {result['placement_loop_jobs']} pending gangs on "
            f"{cycle_gpus} GPUs in {result['placement_loop_seconds']:.3f} s ({result['placement_loop_placed']} placed)"
        )
    if result.get("cycle_allocate_only"):
        alone = result["cycle_allocate_only"]
        console.print(
            f"allocate-only cycle (one queue, nothing running): {alone['seconds']:.3f} s, "
            f"phases {alone['phase_seconds']}"
        )
    if result.get("cycle_contended"):
        busy = result["cycle_contended"]
        console.print(
            f"contended cycle ({busy['gpus']} GPUs, {busy['held_fraction']:.0%} held by {busy['running_jobs']} jobs, "
            f"{busy['leaf_queues']} leaf queues, {busy['pending_jobs']} pending): {busy['seconds']:.3f} s, "
            f"CPU {busy['cpu_seconds']:.3f} s building every request, {busy['warm_cpu_seconds']:.3f} s with the "
            f"requests of the previous cycle (load average {busy['load_average_1m']})"
        )
        console.print(f"  phases {busy['phase_seconds']}")
        for phase in ("allocate", "reclaim", "preempt", "consolidate"):
            console.print(f"  {phase}: {busy[phase]}")
        console.print(f"  pending by reason: {busy['pending_by_reason']}")
        memory = busy["memory_mib"]
        console.print(
            f"  memory: snapshot + cluster state {memory['snapshot_and_state']} MiB, a cycle's peak above that "
            f"{memory['cycle_peak_above_resident']} MiB, process resident {memory['process_resident']} MiB"
        )
    console.print(f"reference parity on the timed gangs: {result['reference_identical']}")
