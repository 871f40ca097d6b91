"""`leitstand simulate replay`: job-level trace replay of our cycle against greedy baselines.

Thin CLI over `leitstand.scheduler.sim.replay` (the simulator) and `.workloads` (the streams): builds
one stream per offered load, runs every requested scheduler on that same stream, and prints a table,
JSON (`--json`) and PNG plots (`--plot DIR`: allocation over time, waiting-time CDF). The heavy
imports (numpy, numba, matplotlib) happen inside the command, so `leitstand --help` stays fast.

Scheduler names: `leitstand` is ours (`cycle.run_cycle`, policy leitstand, consolidation on, fair
share, reclaim and preemption); `leitstand-noconsolidation` is the same cycle without moves; any
placement policy name (`fgd`, `bestfit`, `gpupacking`, ...) is a greedy FIFO-backfill baseline with
that policy; `greedy-leitstand` is that baseline with our policy (separates policy from cycle).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

_REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACES = Path(os.environ.get("LEITSTAND_TRACES", str(_REPO.parent / "shared" / "traces")))


def _scheduler(name: str, workload: Any) -> Any:
    from leitstand.scheduler.policies import PolicyContext, typical_tasks_from_shapes
    from leitstand.scheduler.sim.replay import CycleScheduler, GreedyScheduler, cycle_config

    key = name.strip().lower()
    if key in ("leitstand", "leitstand-noconsolidation"):
        config = cycle_config(policy="leitstand", consolidation=key == "leitstand")
        return CycleScheduler(workload.nodes, workload.queues, config, topology=workload.topology, name=key)
    policy = key.removeprefix("greedy-")

    def context(state: Any) -> Any:
        if workload.shapes:
            table = typical_tasks_from_shapes(workload.shapes, state.model_codes)
            return PolicyContext.build(state, policy, typical=table)
        return PolicyContext.build(state, policy)

    return GreedyScheduler(policy, name=key, context_factory=context)


def _fmt_seconds(value: float) -> str:
    return "–" if value != value else f"{value:,.0f}"


def replay(
    trace: Annotated[str, typer.Option(help="openb (Alibaba GPU-sharing trace) or philly.")] = "openb",
    load: Annotated[str, typer.Option(help="Offered loads, fractions of cluster GPU capacity.")] = "0.8,1.0,1.2",
    schedulers: Annotated[
        str, typer.Option(help="Comma-separated: leitstand (ours), fgd, bestfit, greedy-leitstand, ...")
    ] = "leitstand,fgd,bestfit",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write PNG plots into this directory.")] = None,
    window: Annotated[float, typer.Option(help="openb: arrival window, seconds.")] = 1800.0,
    warmup: Annotated[
        float | None,
        typer.Option(help="Seconds after the first arrival left out of the metrics (openb default 600, philly 0)."),
    ] = None,
    horizon: Annotated[
        float | None, typer.Option(help="Stop at this virtual time, seconds (openb default: 2 × window).")
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between scheduling passes; 0 = every event.")] = 5.0,
    seed: Annotated[int, typer.Option(help="openb: seed of the Poisson arrivals.")] = 42,
    pods: Annotated[str, typer.Option(help="openb: pod list name under alibaba-gpu-2023/.")] = (
        "openb_pod_list_default.csv"
    ),
    start: Annotated[str, typer.Option(help="philly: first day of the sampled window.")] = "2017-10-02",
    days: Annotated[float, typer.Option(help="philly: days of submissions replayed.")] = 3.0,
    quota: Annotated[str, typer.Option(help="philly: VC quotas by 'demand' share or 'equal'.")] = "demand",
    traces: Annotated[Path, typer.Option(help="The shared traces directory.")] = DEFAULT_TRACES,
    save: Annotated[Path | None, typer.Option(help="Also write the JSON to this file.")] = None,
) -> None:
    """Replay a trace with arrivals, departures and queueing; compare schedulers on the same stream."""
    from leitstand.scheduler.sim.replay import replay as run_replay
    from leitstand.scheduler.sim.workloads import openb_workload, philly_workload

    loads = [float(x) for x in load.split(",") if x.strip()]
    names = [x.strip() for x in schedulers.split(",") if x.strip()]
    out: dict[str, Any] = {"trace": trace, "interval_seconds": interval, "runs": []}
    results_by_load: list[tuple[Any, list[Any]]] = []
    stop_at: float | None
    for level in loads:
        if trace == "openb":
            base = traces / "alibaba-gpu-2023"
            workload = openb_workload(
                base / pods, base / "openb_node_list_gpu_node.csv", load=level, window_seconds=window, seed=seed
            )
            stop_at = horizon if horizon is not None else 2.0 * window
            skip = warmup if warmup is not None else 600.0
        elif trace == "philly":
            base = traces / "philly"
            workload = philly_workload(
                base / "adaptdl_philly_jobs.csv",
                base / "revised_machine_list.csv",
                start=start,
                days=days,
                load=level,
                quota=quota,
            )
            stop_at = horizon if horizon is not None else None
            skip = warmup if warmup is not None else 0.0
        else:
            raise typer.BadParameter(f"unknown trace {trace!r}; choose openb or philly")
        results = []
        for name in names:
            if not json_out:
                print(f"[{workload.name}] {name} ...", file=sys.stderr, flush=True)
            result = run_replay(
                workload,
                _scheduler(name, workload),
                interval_seconds=interval,
                horizon_seconds=stop_at,
                warmup_seconds=skip,
            )
            results.append(result)
        results_by_load.append((workload, results))
        out["runs"].append(
            {
                "workload": workload.name,
                "params": workload.params,
                "horizon_seconds": stop_at,
                "warmup_seconds": skip,
                "results": {r.scheduler: r.summary() for r in results},
            }
        )
    if plot is not None:
        _plot(plot, trace, results_by_load)
        out["plots"] = str(plot)
    if save is not None:
        save.write_text(json.dumps(out, indent=2, default=float) + "\n")
    if json_out:
        print(json.dumps(out, indent=2, default=float))
        return
    _print_tables(trace, results_by_load)


def _print_tables(trace: str, results_by_load: list[tuple[Any, list[Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 170))
    for workload, results in results_by_load:
        p = workload.params
        title = (
            f"{workload.name}: {len(workload.tasks):,} tasks, {len(workload.nodes):,} nodes, "
            f"offered load {p['offered_load']:.3f}; metrics after a {results[0].warmup_seconds:g} s warm-up"
        )
        table = Table(title=title)
        for col in (
            "scheduler",
            "GPU alloc %",
            "alloc % incl. ramp",
            "wait p50 s",
            "wait p99 s",
            "wait mean s",
            "never placed",
        ):
            table.add_column(col, justify="right")
        if trace == "philly":
            for col in ("JCT mean s", "JCT p50 s", "JCT p99 s", "fair-share dev GPUs", "evictions"):
                table.add_column(col, justify="right")
        else:
            table.add_column("queued at window end", justify="right")
            table.add_column("moves", justify="right")
        table.add_column("runtime s", justify="right")
        for r in results:
            row = [
                r.scheduler,
                f"{r.allocation_pct:.2f}",
                f"{r.allocation_pct_window:.2f}",
                _fmt_seconds(r.wait_p50_seconds),
                _fmt_seconds(r.wait_p99_seconds),
                _fmt_seconds(r.wait_mean_seconds),
                f"{r.never_placed:,}",
            ]
            if trace == "philly":
                dev = sum(q.mean_abs_deviation_gpus for q in r.queues.values())
                row += [
                    _fmt_seconds(r.completion_mean_seconds),
                    _fmt_seconds(r.completion_p50_seconds),
                    _fmt_seconds(r.completion_p99_seconds),
                    f"{dev:.1f}",
                    f"{r.evictions:,}",
                ]
            else:
                row += [f"{r.waiting_at_window_end:,}", f"{r.moves:,}"]
            row.append(f"{r.wall_seconds:.1f}")
            table.add_row(*row)
        console.print(table)
        if trace == "philly":
            _print_queue_table(console, workload, results)


def _print_queue_table(console: Any, workload: Any, results: list[Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{workload.name}: per queue, time-averaged over the arrival window (GPUs)")
    table.add_column("queue")
    table.add_column("jobs", justify="right")
    table.add_column("quota", justify="right")
    for r in results:
        table.add_column(f"{r.scheduler} alloc/share", justify="right")
        table.add_column(f"{r.scheduler} |dev|", justify="right")
    quotas = {q.name: q.quota_milli / 1000.0 for q in workload.queues}
    for q_name in sorted(quotas, key=lambda n: -quotas[n]):
        first = results[0].queues.get(q_name)
        row = [q_name, f"{first.jobs if first else 0:,}", f"{quotas[q_name]:.1f}"]
        for r in results:
            s = r.queues.get(q_name)
            if s is None:
                row += ["–", "–"]
            else:
                row += [f"{s.mean_allocated_gpus:.1f}/{s.mean_fair_share_gpus:.1f}", f"{s.mean_abs_deviation_gpus:.1f}"]
        table.add_row(*row)
    console.print(table)


def _plot(directory: Path, trace: str, results_by_load: list[tuple[Any, list[Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    n = len(results_by_load)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for ax, (workload, results) in zip(axes[0], results_by_load, strict=True):
        window = float(workload.params.get("window_seconds", 0.0)) or None
        for r in results:
            t = np.array([p[0] for p in r.allocation_timeline])
            a = np.array([p[1] for p in r.allocation_timeline])
            limit = 2.0 * window if window else t.max()
            keep = t <= limit
            ax.step(t[keep], a[keep], where="post", label=f"{r.scheduler} ({r.allocation_pct:.1f}%)")
        if window:
            ax.axvline(window, color="grey", linestyle=":", linewidth=1)
        ax.set_title(workload.name)
        ax.set_xlabel("virtual time since first arrival (s)")
        ax.set_ylabel("GPU allocation (% of capacity)")
        ax.set_ylim(0, 100)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / f"replay-{trace}-allocation.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    for ax, (workload, results) in zip(axes[0], results_by_load, strict=True):
        for r in results:
            waits = np.sort(np.array(r.waits_seconds))
            frac = np.arange(1, waits.size + 1) / waits.size
            ax.plot(np.maximum(waits, 0.1), frac, label=f"{r.scheduler} (p99 {r.wait_p99_seconds:,.0f} s)")
        ax.set_xscale("log")
        ax.set_title(workload.name)
        ax.set_xlabel("waiting time (s, log; 0 shown at 0.1)")
        ax.set_ylabel("fraction of tasks")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / f"replay-{trace}-wait-cdf.png", dpi=120)
    plt.close(fig)
