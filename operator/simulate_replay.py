"""`leitstand simulate replay`: job-level trace replay of our cycle against greedy baselines.

Thin CLI over `leitstand.scheduler.sim.replay` (the simulator) and `.workloads` (the streams): builds
one stream per offered load, runs every requested scheduler on that same stream, and prints a table,
JSON (`--json`) and PNG plots (`--plot DIR`: allocation over time, waiting-time CDF). The heavy
imports (numpy, numba, matplotlib) happen inside the command, so `leitstand --help` stays fast.

Scheduler names: `leitstand` is ours (`cycle.run_cycle`, policy leitstand, consolidation on, fair
share, reclaim, preemption and migration — migration is off in `SchedulerConfig` by default and
turned on here); `leitstand-noconsolidation` is the same cycle without moves;
`leitstand-nomigration` keeps consolidation and turns only migration off; any
placement policy name (`fgd`, `bestfit`, `gpupacking`, ...) is a greedy FIFO-backfill baseline with
that policy; `greedy-leitstand` is that baseline with our policy configured as the cycle's (the same
typical shapes, `--cycle-shapes`), which separates the policy from the cycle.

Input errors end in one message and exit code 2, never a traceback: the options are checked before
any file is read (naming the option and the fix), missing trace files name the path and
`leitstand traces fetch` (the lookup order is in `leitstand.operator.traces`), a malformed file
names its line and column (`openb.TraceFormatError`).
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from leitstand.operator import traces as trace_files

CYCLE_SCHEDULERS = ("leitstand", "leitstand-noconsolidation", "leitstand-nomigration")
OPENB_NODES = "openb_node_list_gpu_node.csv"
PHILLY_JOBS = "adaptdl_philly_jobs.csv"
PHILLY_MACHINES = "revised_machine_list.csv"
MAX_OPENB_WINDOW = 86_400.0


def _bad(option: str, message: str) -> NoReturn:
    raise typer.BadParameter(message, param_hint=option)


def parse_loads(text: str) -> list[float]:
    """`"0.8,1.0,1.2"` → [0.8, 1.0, 1.2]; anything that is not a positive number names `--load`."""
    loads: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            _bad("--load", f"{part!r} is not a number; give fractions of cluster GPU capacity, e.g. 0.8,1.0,1.2")
        if not (math.isfinite(value) and value > 0):
            _bad("--load", f"{part} is not above 0; give fractions of cluster GPU capacity, e.g. 0.8,1.0,1.2")
        loads.append(value)
    if not loads:
        _bad("--load", "no load given; e.g. --load 0.8,1.0,1.2")
    return loads


def parse_schedulers(text: str) -> list[str]:
    """Scheduler names (module docstring); an unknown one names `--schedulers` and the valid ones."""
    from leitstand.scheduler.codes import PolicyCode

    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not names:
        _bad("--schedulers", "no scheduler given; e.g. --schedulers leitstand,fgd,bestfit")
    for name in names:
        if name in CYCLE_SCHEDULERS:
            continue
        try:
            PolicyCode.parse(name.removeprefix("greedy-"))
        except ValueError:
            policies = ", ".join(p.display_name.lower() for p in PolicyCode)
            _bad(
                "--schedulers",
                f"unknown scheduler {name!r}; choose {', '.join(CYCLE_SCHEDULERS)}, a placement policy "
                f"({policies}) or greedy-<policy>",
            )
    return names


def _check_options(
    trace: str, window: float, warmup: float | None, horizon: float | None, interval: float, days: float, quota: str,
    start: str, move_cost: str = "free",
) -> None:
    """Every option checked before any file is read (ranges that only the stream can check: later)."""
    if move_cost not in ("free", "restart"):
        _bad(
            "--move-cost",
            f"unknown move cost {move_cost!r}; choose free (a moved task keeps its progress) or restart",
        )
    if trace not in ("openb", "philly"):
        _bad("--trace", f"unknown trace {trace!r}; choose openb or philly")
    if not (math.isfinite(window) and window > 0):
        _bad("--window", f"{window:g} s; the arrival window must be a positive number of seconds (default 1800)")
    if not (math.isfinite(interval) and interval >= 0):
        _bad("--interval", f"{interval:g} s; give seconds between passes ≥ 0 (0 = a pass after every event)")
    if horizon is not None and not horizon > 0:
        _bad("--horizon", f"{horizon:g} s; give a positive virtual time in seconds, or leave it out")
    if warmup is not None and not (math.isfinite(warmup) and warmup >= 0):
        _bad("--warmup", f"{warmup:g} s; the warm-up must be ≥ 0 seconds (0 = measure from the first arrival)")
    if trace == "openb" and window > MAX_OPENB_WINDOW:
        _bad(
            "--window",
            f"{window:g} s is longer than the {MAX_OPENB_WINDOW:,.0f} s the openb stream supports (it draws "
            "arrivals for ≥ 100 per second of window up front); give a shorter window",
        )
    if trace == "openb" and (600.0 if warmup is None else warmup) >= window:
        if warmup is None:
            _bad(
                "--window",
                f"{window:g} s is not longer than the default 600 s warm-up: nothing would be measured; "
                "give a longer window, or a shorter --warmup",
            )
        _bad(
            "--warmup",
            f"{warmup:g} s is not shorter than the arrival window (--window {window:g} s): nothing would be "
            "measured; choose a warm-up below the window (default 600 s)",
        )
    if trace == "philly":
        if not (math.isfinite(days) and days > 0):
            _bad("--days", f"{days:g}; give a positive number of days of submissions (default 3)")
        if quota not in ("demand", "equal"):
            _bad("--quota", f"unknown quota mode {quota!r}; choose demand or equal")
        try:
            datetime.fromisoformat(start)
        except ValueError:
            _bad("--start", f"{start!r} is not a date; write YYYY-MM-DD (the Philly trace runs 2017-09-04..2017-12-22)")


def _input_error(message: str) -> NoReturn:
    """A bad trace file or a stream the options cannot produce: one message, exit code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _scheduler(
    name: str, workload: Any, cycle_shapes: str = "defaults", migration: dict[str, Any] | None = None
) -> Any:
    from leitstand.scheduler.policies import PolicyContext, typical_tasks_from_shapes
    from leitstand.scheduler.sim.replay import CycleScheduler, GreedyScheduler, cycle_config

    key = name.strip().lower()
    policy = "leitstand" if key in CYCLE_SCHEDULERS else key.removeprefix("greedy-")

    def context(state: Any) -> Any:
        """The policy with the trace's typical shapes (what the FGD protocol gives the baselines)."""
        if workload.shapes:
            table = typical_tasks_from_shapes(workload.shapes, state.model_codes)
            return PolicyContext.build(state, policy, typical=table)
        return PolicyContext.build(state, policy)

    if key in CYCLE_SCHEDULERS:
        config = cycle_config(
            policy="leitstand",
            consolidation=key != "leitstand-noconsolidation",
            migration=key == "leitstand",
            **(migration or {}),
        )
        return CycleScheduler(
            workload.nodes, workload.queues, config, topology=workload.topology, name=key,
            context_factory=context if cycle_shapes == "trace" else None,
        )
    # `greedy-leitstand` stands for our policy without the cycle (what the cycle adds, in quality and
    # in cost, is measured against it), so its policy is configured as the cycle's: the same typical
    # shapes. The other baselines get the trace's shapes, as the FGD protocol gives them.
    same_as_ours = key == "greedy-leitstand" and cycle_shapes != "trace"
    return GreedyScheduler(policy, name=key, context_factory=None if same_as_ours else context)


WARM_UP_NODES = 16
WARM_UP_TASKS = 300


def _warm_up(
    workload: Any, names: list[str], cycle_shapes: str, migration: dict[str, Any] | None, interval: float
) -> None:
    """Run each scheduler untimed on a slice of the stream (its first `WARM_UP_NODES` nodes and
    `WARM_UP_TASKS` tasks, crowded enough that placements fail, victims are searched and failures
    are remembered), so that every compiled kernel is loaded from Numba's on-disk cache — or
    compiled — before any pass is timed. Otherwise the scheduler that runs first pays for loading
    kernels (~0.1–0.2 s) that the ones after it find loaded."""
    from dataclasses import replace

    from leitstand.scheduler.sim.replay import replay as run_replay

    tasks = workload.tasks[:WARM_UP_TASKS]
    if not tasks:
        return
    small = replace(workload, nodes=workload.nodes[:WARM_UP_NODES], tasks=tasks)
    start = tasks[0].arrival_seconds
    for name in names:
        scheduler = _scheduler(name, small, cycle_shapes, migration)
        run_replay(small, scheduler, interval_seconds=interval, horizon_seconds=start + max(20 * interval, 100.0))


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
    traces: Annotated[
        Path | None,
        typer.Option(help="Traces directory [default: $LEITSTAND_TRACES, ../shared/traces, the fetch cache]."),
    ] = None,
    save: Annotated[Path | None, typer.Option(help="Also write the JSON to this file.")] = None,
    move_cost: Annotated[
        str,
        typer.Option(help="What a move costs the moved task: free (keeps its progress) or restart (loses it)."),
    ] = "free",
    cycle_shapes: Annotated[
        str,
        typer.Option(help="Typical shapes of our cycle's placement policy, and of greedy-leitstand's: defaults "
                     "(DGX-style) or trace (the trace's own, as the FGD protocol gives the other baselines; an "
                     "operator sets scheduler.typical_shapes)."),
    ] = "defaults",
    migration_tries: Annotated[
        int, typer.Option(help="leitstand: node sets tried for migration per cycle (max_migration_tries).")
    ] = 60,
    migration_max_age: Annotated[
        float | None,
        typer.Option(help="leitstand: move only jobs that have run at most this many seconds "
                     "(migration_max_age_seconds; with --move-cost restart, 600 bounds the loss) [default: any age]."),
    ] = None,
    migration_prune: Annotated[
        int, typer.Option(help="leitstand: pruning steps per kept migration try (migration_prune_moves).")
    ] = 16,
) -> None:
    """Replay a trace with arrivals, departures and queueing; compare schedulers on the same stream."""
    from leitstand.scheduler.sim.openb import TraceFormatError
    from leitstand.scheduler.sim.replay import packing_bound
    from leitstand.scheduler.sim.replay import replay as run_replay
    from leitstand.scheduler.sim.workloads import openb_workload, philly_workload

    _check_options(trace, window, warmup, horizon, interval, days, quota, start, move_cost)
    if cycle_shapes not in ("defaults", "trace"):
        _bad("--cycle-shapes", f"unknown {cycle_shapes!r}; choose defaults (DGX-style shapes) or trace")
    if migration_tries < 0:
        _bad("--migration-tries", f"{migration_tries}; give the node sets tried per cycle, ≥ 0 (default 60)")
    if migration_max_age is not None and not (math.isfinite(migration_max_age) and migration_max_age >= 0):
        _bad("--migration-max-age", f"{migration_max_age:g} s; give seconds ≥ 0, or leave it out for any age")
    if migration_prune < 0:
        _bad("--migration-prune", f"{migration_prune}; give pruning steps per kept try, ≥ 0 (0: none; default 16)")
    migration = {
        "max_migration_tries": migration_tries,
        "migration_max_age_seconds": migration_max_age,
        "migration_prune_moves": migration_prune,
    }
    loads = parse_loads(load)
    names = parse_schedulers(schedulers)
    root = trace_files.resolve_root(traces)
    if trace == "openb":
        base = root / trace_files.OPENB_DIR
        files = [base / pods, base / OPENB_NODES]
    else:
        base = root / trace_files.PHILLY_DIR
        files = [base / PHILLY_JOBS, base / PHILLY_MACHINES]
    try:
        trace_files.require(root, files)
    except trace_files.TracesMissing as err:
        _input_error(str(err))

    out: dict[str, Any] = {
        "trace": trace, "interval_seconds": interval, "move_cost": move_cost, "cycle_shapes": cycle_shapes,
        "migration": migration, "runs": [],
    }
    results_by_load: list[tuple[Any, list[Any], Any]] = []
    stop_at: float | None
    for level in loads:
        try:
            if trace == "openb":
                workload = openb_workload(files[0], files[1], load=level, window_seconds=window, seed=seed)
                stop_at = horizon if horizon is not None else 2.0 * window
                skip = warmup if warmup is not None else 600.0
            else:
                workload = philly_workload(
                    files[0], files[1], start=start, days=days, load=level, quota=quota
                )
                stop_at = horizon if horizon is not None else None
                skip = warmup if warmup is not None else 0.0
        except TraceFormatError as err:
            _input_error(str(err))
        except ValueError as err:  # a stream these options cannot make (e.g. a load out of reach)
            _input_error(f"{err} (--load {level:g}, trace {trace})")
        first, last = workload.tasks[0].arrival_seconds, workload.tasks[-1].arrival_seconds
        if skip > 0 and first + skip >= last:
            _bad(
                "--warmup",
                f"{skip:g} s reaches past the last arrival ({last - first:,.0f} s after the first) of "
                f"{workload.name}: nothing would be measured; choose a shorter warm-up",
            )
        bound = packing_bound(workload, start=first + skip, end=last)
        if not results_by_load:  # once per run, before the first timed pass
            _warm_up(workload, names, cycle_shapes, migration, interval)
        results = []
        for name in names:
            if not json_out:
                print(f"[{workload.name}] {name} ...", file=sys.stderr, flush=True)
            result = run_replay(
                workload,
                _scheduler(name, workload, cycle_shapes, migration),
                interval_seconds=interval,
                horizon_seconds=stop_at,
                warmup_seconds=skip,
                move_cost=move_cost,
            )
            results.append(result)
        results_by_load.append((workload, results, bound))
        out["runs"].append(
            {
                "workload": workload.name,
                "params": workload.params,
                "horizon_seconds": stop_at,
                "warmup_seconds": skip,
                "bound_allocation_pct": {"gpu_time": bound.gpu_time_pct, "tasks": bound.tasks_pct},
                "results": {r.scheduler: r.summary() for r in results},
            }
        )
    if plot is not None:
        _plot(plot, trace, [(w, r) for w, r, _ in results_by_load])
        out["plots"] = str(plot)
    if save is not None:
        save.write_text(json.dumps(out, indent=2, default=float) + "\n")
    if json_out:
        print(json.dumps(out, indent=2, default=float))
        return
    _print_tables(trace, results_by_load, move_cost, cycle_shapes)


def _print_tables(
    trace: str,
    results_by_load: list[tuple[Any, list[Any], Any]],
    move_cost: str = "free",
    cycle_shapes: str = "defaults",
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 185))
    for workload, results, bound in results_by_load:
        p = workload.params
        title = (
            f"{workload.name}: {len(workload.tasks):,} tasks, {len(workload.nodes):,} nodes, "
            f"offered load {p['offered_load']:.3f}; metrics after a {results[0].warmup_seconds:g} s warm-up; "
            f"moves {move_cost}; our typical shapes: {cycle_shapes}"
        )
        table = Table(title=title, caption=_BOUND_CAPTION.format(tasks=bound.tasks_pct))
        for col in (
            "scheduler",
            "GPU alloc %",
            "bound %",
            "idle node-h",
            "idle nodes %",
            "idle GPUs %",
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
        if move_cost == "restart":
            table.add_column("lost GPU-h", justify="right")  # progress moved tasks lost, whole run
        table.add_column("runtime s", justify="right")
        # The scheduler's own time (wall time inside its passes; the rest is the simulator), and
        # against the greedy loop with our policy when it ran at this load (issue 10's cost measure).
        table.add_column("sched s", justify="right")
        greedy = next((r.scheduler_seconds for r in results if r.scheduler == "greedy-leitstand"), None)
        if greedy:
            table.add_column("× greedy", justify="right")
        for r in results:
            row = [
                r.scheduler,
                f"{r.allocation_pct:.2f}",
                f"{bound.gpu_time_pct:.2f}",
                f"{r.idle_node_hours:,.1f}",
                f"{r.idle_node_pct:.2f}",
                f"{r.idle_gpu_pct:.2f}",
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
            if move_cost == "restart":
                row.append(f"{r.lost_gpu_hours:,.1f}")
            row += [f"{r.wall_seconds:.1f}", f"{r.scheduler_seconds:.1f}"]
            if greedy:
                row.append(f"{r.scheduler_seconds / greedy:.1f}×")
            table.add_row(*row)
        console.print(table)
        if trace == "philly":
            _print_queue_table(console, workload, results)


_BOUND_CAPTION = (
    "bound %: no placement of this stream's mix beats it once the cluster is saturated (a GPU of its own for "
    "every share over half a GPU, its leftover only for shares that small; CPU, memory and node boundaries "
    "ignored; shares weighted by GPU-time in the window; by task count: {tasks:.2f}). idle node-h: node-hours "
    "with nothing allocated on the node (could be powered down) over the measurement window; idle nodes % / idle "
    "GPUs %: the same as a share of all nodes / of the GPUs on them."
)


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
