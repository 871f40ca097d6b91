"""Job-level trace replay with a virtual clock: arrivals, departures, queueing, evictions, metrics.

What it holds: the event-driven simulator (`replay`), the seam for the scheduler under test
(`Scheduler`, a Protocol) with its two implementations — `CycleScheduler` (ours: the full
`cycle.run_cycle`, with consolidation, reclaim, preemption and fair share) and `GreedyScheduler`
(the baselines: FIFO first-fit backfill with one placement policy, no moves, no preemption) — and the
metrics every run reports the same way (`ReplayResult`).

Who calls it: `leitstand simulate replay` (operator/simulate_replay.py) with streams built by
`leitstand.scheduler.sim.workloads`, and the unit tests. It must not read files, print, plot or
read the wall clock except to time itself; all times are seconds on the virtual clock.

Simulation rules (the same for every scheduler; fairness of the comparison depends on them):

1. Events are task arrivals (at `Task.arrival_seconds`) and departures (start + remaining duration).
   All events with the same timestamp form one batch. After each batch a scheduling pass runs if
   anything is pending and something changed (an arrival, a departure, or an eviction in the last
   pass). With `interval_seconds > 0` such a pass waits for the next multiple of that interval
   (or runs at the first event after a multiple that passed quietly). With nothing changed no pass
   runs, so a cycle's time-only triggers (e.g. minimum-runtime protection expiring) wait for the
   next event.
2. A pass hands the scheduler the pending jobs in arrival order, the running jobs and the maintained
   `ClusterState`; the scheduler returns a `model.Plan`. Evictions are applied first (the job's
   resources are released), then bindings (charged; a job that was evicted and re-bound in the same
   plan is a *move*; with `move_cost="free"` (the default) it keeps its progress and its original
   start, with `move_cost="restart"` it loses its progress: it runs its full duration again from the
   move, as a job without checkpoints would; their count is reported). An evicted job not re-bound
   goes back to the queue with its
   *remaining* duration (work-conserving, as if checkpointed), keeping its original arrival time.
3. Tasks that do not fit wait; nothing fails. A run ends when no event is left (every task either
   finished or waits with nothing running that could free room) or at `horizon_seconds`.

Metrics (see `ReplayResult`): GPU allocation is allocated milli-GPU integrated over the *arrival
window* [first arrival, last arrival] divided by capacity × window length — the span during which
the offered load is applied. Waiting time is arrival → first start; a task never started counts with
a censored wait of (end of run − arrival), so starving a task never improves a percentile.
Completion time is arrival → finish for finished tasks. Fully idle nodes are nodes on which no
task holds anything (no GPU share, no CPU, no memory): the nodes a factory could power down. Their
count is integrated over the measurement window like the allocation (`idle_node_hours`).

`packing_bound` is the stream's upper bound on allocation (what no placement can beat once the
cluster is saturated, given the relaxation its docstring states); it is a property of the stream,
the same for every scheduler.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.fairshare import compute_fair_shares
from leitstand.scheduler.model import (
    GPU_MILLI,
    Binding,
    EvictionKind,
    Job,
    JobId,
    Node,
    Plan,
    Queue,
    QueueName,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Topology,
)
from leitstand.scheduler.placement import GangPlacement, GangRequest, apply_placement, place_gang, replica_placements
from leitstand.scheduler.policies import PolicyContext, TaskShape
from leitstand.scheduler.state import ClusterState

MOVE_COSTS = ("free", "restart")
"""What a move costs the moved task (`replay(move_cost=...)`): nothing, or all its progress."""

FOLLOW_UP_PASSES = 2
"""Extra passes at the same instant after a pass that sent evicted jobs back to the queue (a cycle
may evict in one pass and re-place in the next); bounded so a scheduler that keeps evicting cannot
stall the clock."""


class SimulationError(RuntimeError):
    """A plan the simulator cannot apply (binding an unknown job, evicting one that is not running)."""


@dataclass(frozen=True, slots=True)
class Task:
    """One job of a stream: when it arrives and how long it runs once started (seconds)."""

    job: Job
    arrival_seconds: float
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class Workload:
    """A cluster, its queues and a task stream sorted by arrival (ties keep trace order)."""

    name: str
    nodes: tuple[Node, ...]
    queues: tuple[Queue, ...]
    tasks: tuple[Task, ...]
    topology: Topology = field(default_factory=Topology)
    shapes: tuple[TaskShape, ...] = ()
    """Request shapes of the source trace with their counts (FGD's typical tasks); () = none."""
    params: dict[str, float | int | str] = field(default_factory=dict)
    """How the stream was built (load, seed, scale factor, ...), echoed into results."""


class Scheduler(Protocol):
    """The scheduler under test. `schedule` must not modify `state` (work on a copy)."""

    name: str

    def schedule(
        self,
        now: float,
        pending: Sequence[Job],
        running: Mapping[JobId, RunningJob],
        state: ClusterState,
        *,
        released: bool,
    ) -> Plan:
        """One pass at virtual time `now` (seconds). `pending` is in arrival order.

        `released` is True when resources were freed since this scheduler's previous pass; when it
        is False nothing that failed to fit before can fit now (a hint, free to ignore).
        """
        ...


# -- the baselines --------------------------------------------------------------------------------


def _shape(job: Job) -> tuple[object, ...]:
    """Everything `GangRequest.for_job` reads: jobs with equal shapes share one request (and its mask)."""
    return (
        job.replicas,
        job.gpus,
        job.gpu_milli,
        job.cpu_milli,
        job.memory_mib,
        job.gpu_models,
        job.node_pool,
        job.jurisdictions,
        job.allowed_nodes,
        job.required_level,
        job.preferred_level,
    )


def could_fit(state: ClusterState, request: GangRequest) -> bool:
    """A cheap necessary condition for `place_gang` to succeed (vectorised; no policy involved).

    Counts, per allowed node, how many replicas fit on it alone; the gang can only fit if those
    counts add up to `replicas`. Topology requirements are left to `place_gang`.
    """
    mask = request.node_mask & (state.cpu_free_milli >= request.cpu_milli)
    mask &= state.memory_free_mib >= request.memory_mib
    if request.gpus > 0:
        fitting = (state.gpu_free_milli >= request.gpu_milli).sum(axis=1)
        mask &= fitting >= request.gpus
    if request.replicas <= 1:
        return bool(mask.any())
    idx = np.flatnonzero(mask)
    if request.gpus > 0:
        per_node = (state.gpu_free_milli[idx] >= request.gpu_milli).sum(axis=1) // request.gpus
    else:
        per_node = np.full(idx.size, request.replicas)
    return bool(int(per_node.sum()) >= request.replicas)


def _could_fit_sorted(state: ClusterState, kth: NDArray[np.int32], request: GangRequest) -> bool:
    """`could_fit` on a per-node descending sort of free GPU milli (cheaper: one column compare)."""
    if request.replicas > 1:
        return could_fit(state, request)
    mask = request.node_mask & (state.cpu_free_milli >= request.cpu_milli)
    mask &= state.memory_free_mib >= request.memory_mib
    if request.gpus > 0:
        if request.gpus > kth.shape[1]:
            return False
        mask &= kth[:, request.gpus - 1] >= request.gpu_milli
    return bool(mask.any())


class GreedyScheduler:
    """Baseline: FIFO first-fit backfill with one placement policy, nothing ever moves.

    Every pass walks the pending jobs in arrival order and places each one that fits now (a job
    that does not fit does not block the ones behind it: backfill without reservations). No
    preemption, no consolidation, no fair share.

    Implementation (the decisions are exactly those of the plain walk): pending jobs are kept in one
    FIFO per request shape and a pass merges the FIFO heads by arrival. Capacity only shrinks inside
    a pass, so once the head of a shape fails, every later job of that shape would fail too and the
    shape is skipped for the rest of the pass; when nothing was released since the previous pass,
    only shapes that had no waiting job then are tried.
    """

    def __init__(
        self,
        policy: str,
        *,
        name: str | None = None,
        context_factory: Callable[[ClusterState], PolicyContext] | None = None,
    ) -> None:
        self.policy = policy
        self.name = name or policy
        self._context_factory = context_factory
        self._context: PolicyContext | None = None
        self._fifo: dict[tuple[object, ...], deque[tuple[int, Job]]] = {}
        self._known = 0
        """How many of the simulator's pending jobs this scheduler has taken in (after its bindings)."""
        self._seq = 0
        self._requests: dict[tuple[object, ...], GangRequest] = {}
        """Per shape; a request's node mask depends only on static node labels."""

    def schedule(
        self,
        now: float,
        pending: Sequence[Job],
        running: Mapping[JobId, RunningJob],
        state: ClusterState,
        *,
        released: bool,
    ) -> Plan:
        if self._context is None:
            factory = self._context_factory
            self._context = factory(state) if factory else PolicyContext.build(state, self.policy)
        if len(pending) < self._known:
            raise SimulationError("GreedyScheduler: pending jobs vanished (it expects no evictions)")
        fresh: set[tuple[object, ...]] = set()
        for job in pending[self._known :]:
            shape = _shape(job)
            fifo = self._fifo.setdefault(shape, deque())
            if not fifo:
                fresh.add(shape)
            fifo.append((self._seq, job))
            self._seq += 1
        self._known = len(pending)
        candidates = [s for s, f in self._fifo.items() if f] if released else list(fresh)
        heads = [(self._fifo[s][0][0], i, s) for i, s in enumerate(candidates)]
        heapq.heapify(heads)

        work = state.copy()
        # kth[n, k]: the (k+1)-th largest free milli on node n; a replica of g GPUs × m milli fits
        # the GPUs of n iff kth[n, g-1] >= m. Kept current for the nodes each placement touches.
        kth = -np.sort(-work.gpu_free_milli, axis=1)
        bindings: list[Binding] = []
        while heads:
            _, i, shape = heapq.heappop(heads)
            fifo = self._fifo[shape]
            job = fifo[0][1]
            request = self._requests.get(shape)
            if request is None:
                request = self._requests[shape] = GangRequest.for_job(work, job)
            placement: GangPlacement | None = None
            if _could_fit_sorted(work, kth, request):
                result = place_gang(work, request, self._context)
                placement = result if isinstance(result, GangPlacement) else None
            if placement is None:
                continue  # this shape is done for this pass
            apply_placement(work, request, placement)
            touched = np.unique(placement.nodes)
            kth[touched] = -np.sort(-work.gpu_free_milli[touched], axis=1)
            bindings.append(Binding(job_id=job.id, placements=replica_placements(work, placement)))
            fifo.popleft()
            if fifo:
                heapq.heappush(heads, (fifo[0][0], i, shape))
        self._known -= len(bindings)
        return Plan(bindings=tuple(bindings))


# -- ours -----------------------------------------------------------------------------------------


def cycle_config(**knobs: Any) -> SchedulerConfig:
    """A `SchedulerConfig` from the knobs this version of the model knows; unknown ones are dropped.

    Lets the simulator ask for `consolidation=True` whether or not the cycle supports it yet.
    """
    known = {f.name for f in fields(SchedulerConfig)}
    return SchedulerConfig(**{k: v for k, v in knobs.items() if k in known})


class CycleScheduler:
    """Ours: one `cycle.run_cycle` per pass on a snapshot of the simulator's state."""

    def __init__(
        self,
        nodes: Sequence[Node],
        queues: Sequence[Queue],
        config: SchedulerConfig,
        *,
        topology: Topology | None = None,
        name: str = "leitstand",
        context_factory: Callable[[ClusterState], PolicyContext] | None = None,
    ) -> None:
        from leitstand.scheduler.cycle import run_cycle  # the cycle lands in parallel; fail late

        self._run_cycle = run_cycle
        self.name = name
        self.config = config
        self._nodes = tuple(nodes)
        self._queues = tuple(queues)
        self._topology = topology or Topology()
        self._context_factory = context_factory
        """Builds the placement policy (e.g. with the trace's typical shapes, as an operator's
        `scheduler.typical_shapes` would) once per state; None: the cycle's own defaults."""
        self._context: tuple[ClusterState, PolicyContext] | None = None

    def schedule(
        self,
        now: float,
        pending: Sequence[Job],
        running: Mapping[JobId, RunningJob],
        state: ClusterState,
        *,
        released: bool,
    ) -> Plan:
        snapshot = Snapshot(
            nodes=self._nodes,
            queues=self._queues,
            pending=tuple(pending),
            running=tuple(running.values()),
            topology=self._topology,
            now=now,
        )
        context = None
        if self._context_factory is not None:
            if self._context is None or self._context[0] is not state:
                self._context = (state, self._context_factory(state))
            context = self._context[1]
        plan: Plan = self._run_cycle(snapshot, self.config, state=state, policy_context=context)
        return plan


# -- results --------------------------------------------------------------------------------------


def percentile(values: Sequence[float] | NDArray[np.float64], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation); NaN for no values."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else math.nan


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How one queue fared over the arrival window (GPU amounts in GPUs, time-averaged)."""

    mean_allocated_gpus: float
    mean_fair_share_gpus: float
    mean_abs_deviation_gpus: float
    """Time-average of |allocated − fair share|."""
    mean_shortfall_gpus: float
    """Time-average of max(0, fair share − allocated): GPUs the queue was owed and did not get."""
    jobs: int
    wait_mean_seconds: float
    wait_p99_seconds: float


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Everything one replay measured. Times in seconds, allocation in % of cluster GPU capacity."""

    scheduler: str
    workload: str
    tasks: int
    started: int
    finished: int
    never_placed: int
    """Tasks still waiting when the run ended (never started)."""
    waiting_at_window_end: int
    """Tasks that had arrived but not started at the last arrival."""
    allocation_pct: float
    """Time-averaged allocated GPU-milli / capacity over the measurement window, in %:
    [first arrival + warmup, last arrival]."""
    allocation_pct_window: float
    """The same over the whole arrival window [first arrival, last arrival] (includes the ramp-up)."""
    allocation_pct_run: float
    """The same over [first arrival, end of run]."""
    idle_node_hours: float
    """Node-hours over the measurement window during which a node held nothing at all (no task's
    GPU share, CPU or memory): the hours a factory could have powered those nodes down."""
    idle_node_pct: float
    """The same as a share of all node-hours of the measurement window, in %."""
    idle_gpu_pct: float
    """GPU capacity on fully idle nodes, time-averaged over the measurement window, in % of all GPUs."""
    wait_mean_seconds: float
    wait_p50_seconds: float
    wait_p99_seconds: float
    completion_mean_seconds: float
    completion_p50_seconds: float
    completion_p99_seconds: float
    window_seconds: float
    """Length of the measurement window (after the warm-up)."""
    warmup_seconds: float
    measured_tasks: int
    """Tasks arriving in the measurement window: the population of every task-level metric."""
    end_seconds: float
    moves: int
    evictions: int
    """Evictions that sent a job back to the queue (reclaim/preempt; moves not counted)."""
    lost_gpu_hours: float
    """GPU-hours of progress that moved tasks lost (`move_cost="restart"`; 0 with free moves), over
    the whole run: work the cluster ran twice, counted in the allocation all the same."""
    passes: int
    wall_seconds: float
    scheduler_seconds: float
    """Wall time inside `Scheduler.schedule` (the rest is the simulator)."""
    queues: dict[str, QueueStats] = field(default_factory=dict)
    allocation_timeline: tuple[tuple[float, float], ...] = ()
    """(virtual time − first arrival, allocated % of capacity) after every change."""
    waits_seconds: tuple[float, ...] = ()
    """Per task, in stream order (censored for tasks never started)."""

    def summary(self) -> dict[str, Any]:
        """The scalar metrics (no timelines) as a JSON-ready dict."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("allocation_timeline", "waits_seconds"):
                continue
            value = getattr(self, f.name)
            if f.name == "queues":
                value = {q: {g.name: getattr(s, g.name) for g in fields(s)} for q, s in value.items()}
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class PackingBound:
    """The stream's upper bound on GPU allocation (%), weighted two ways (see `packing_bound`)."""

    gpu_time_pct: float
    """Tasks weighted by their GPU-time inside the window (as if each started on arrival): the mix a
    saturated cluster runs when every task is served in the end."""
    tasks_pct: float
    """Each task arriving in the window counted once (the mix of the trace's rows)."""


def _bound_pct(units: NDArray[np.float64], milli: NDArray[np.int64]) -> float:
    """100 × used / fewest GPUs, for GPU units (count-weighted) of per-GPU size `milli`."""
    big = milli > GPU_MILLI // 2
    used = float((units * milli).sum())
    whole = float(units[big].sum()) * GPU_MILLI  # one GPU of its own per unit over half a GPU
    leftover_size = GPU_MILLI - milli[big]
    leftover_volume = units[big] * leftover_size
    small_size = milli[~big]
    small_volume = units[~big] * small_size
    # Fluid fill of the leftovers: a small unit fits a leftover at least its size. Eligibility is
    # nested (smaller units fit everywhere larger ones do), so serving sizes from the largest down,
    # each taking what its eligible leftovers still hold, is a maximum flow.
    sizes = np.unique(small_size[small_size > 0])[::-1]
    absorbed = 0.0
    for size in sizes:
        room = float(leftover_volume[leftover_size >= size].sum()) - absorbed
        absorbed += max(0.0, min(float(small_volume[small_size == size].sum()), room))
    need = whole + float(small_volume.sum()) - absorbed
    return 100.0 * used / need if need > 0 else math.nan


def packing_bound(workload: Workload, *, start: float, end: float) -> PackingBound:
    """Upper bound on time-averaged GPU allocation over [start, end] (virtual seconds) of a cluster
    kept saturated by `workload`, placed by any scheduler that serves the stream's mix.

    Relaxation (every step can only raise the bound): CPU, memory and node boundaries are ignored;
    each GPU a task asks for more than half of is a GPU of its own (no two such shares fit one GPU),
    and its leftover (less than half a GPU) can only take shares no larger than itself; all other
    shares pack perfectly (as a fluid, in size and in time). The bound is used / fewest GPUs those
    shares need, for the mix of the stream. A scheduler that starves the awkward shares (runs another
    mix than it is offered) could beat it; one that leaves the cluster unsaturated stays below it.
    """
    tasks = workload.tasks
    arrival = np.array([t.arrival_seconds for t in tasks], dtype=np.float64)
    duration = np.array([t.duration_seconds for t in tasks], dtype=np.float64)
    units = np.array([t.job.replicas * t.job.gpus for t in tasks], dtype=np.float64)
    milli = np.array([t.job.gpu_milli if t.job.gpus > 0 else 0 for t in tasks], dtype=np.int64)
    inside = np.clip(np.minimum(arrival + duration, end) - np.maximum(arrival, start), 0.0, None)
    arrived = ((arrival >= start) & (arrival <= end)).astype(np.float64)
    return PackingBound(
        gpu_time_pct=_bound_pct(units * inside, milli),
        tasks_pct=_bound_pct(units * arrived, milli),
    )


# -- the simulator --------------------------------------------------------------------------------


@dataclass(slots=True)
class _QueueAccumulator:
    allocated_milli: float = 0.0
    share_milli: float = 0.0
    alloc_integral: float = 0.0
    share_integral: float = 0.0
    abs_dev_integral: float = 0.0
    shortfall_integral: float = 0.0


def replay(
    workload: Workload,
    scheduler: Scheduler,
    *,
    interval_seconds: float = 0.0,
    horizon_seconds: float | None = None,
    warmup_seconds: float = 0.0,
    keep_timeline: bool = True,
    move_cost: str = "free",
) -> ReplayResult:
    """Run `workload` through `scheduler` on a virtual clock (rules in the module docstring).

    `interval_seconds`: 0 = a pass after every changing event batch; > 0 = at most one pass per
    multiple of it (only when something changed).
    `horizon_seconds`: stop the run at this virtual time (None = run until no event is left).
    `warmup_seconds`: the measurement window starts this long after the first arrival (the cluster
    starts empty; the ramp-up is the same for every scheduler and says nothing about any of them).
    Allocation, waits, completions, counts and queue statistics cover the measurement window and
    the tasks arriving in it; the simulation itself always starts at the first arrival.
    `move_cost`: what a move (evicted and re-bound in one plan) costs the moved task: "free" (it
    keeps its progress and start) or "restart" (its remaining time resets to its full duration and
    it starts anew at the move, so minimum-runtime protection applies to it again).
    """
    if move_cost not in MOVE_COSTS:
        raise ValueError(f"move_cost must be one of {', '.join(MOVE_COSTS)}, got {move_cost!r}")
    wall_start = time.perf_counter()
    tasks = workload.tasks
    if not tasks:
        raise ValueError(f"workload {workload.name!r} has no tasks")
    by_id: dict[JobId, int] = {}
    for i, task in enumerate(tasks):
        if task.job.id in by_id:
            raise ValueError(f"duplicate job id {task.job.id!r} in workload {workload.name!r}")
        by_id[task.job.id] = i
    arrivals = [t.arrival_seconds for t in tasks]
    if any(b < a for a, b in itertools.pairwise(arrivals)):
        raise ValueError("tasks must be sorted by arrival_seconds")

    state = ClusterState.from_nodes(workload.nodes, workload.topology)
    capacity = float(state.gpu_capacity_milli)
    node_gpus = state.gpu_count.astype(np.int64)
    replicas_on = np.zeros(node_gpus.size, dtype=np.int64)  # replicas of running tasks per node; 0 = idle
    t_first, t_last = arrivals[0], arrivals[-1]
    t_measure = t_first + warmup_seconds
    if warmup_seconds < 0 or (warmup_seconds > 0 and t_measure >= t_last):
        raise ValueError(f"warm-up {warmup_seconds} s must be ≥ 0 and end before the last arrival")
    end_limit = math.inf if horizon_seconds is None else horizon_seconds

    pending: dict[JobId, Job] = {}
    pending_dirty = False
    remaining = [t.duration_seconds for t in tasks]
    running: dict[JobId, RunningJob] = {}
    end_at: dict[JobId, float] = {}
    departures: list[tuple[float, int, JobId]] = []
    first_start = np.full(len(tasks), np.nan)
    finish = np.full(len(tasks), np.nan)
    seq = 0

    leaves = {q.name for q in workload.queues} - {q.parent for q in workload.queues if q.parent}
    track_queues = len(leaves) > 1
    acc = {q: _QueueAccumulator() for q in sorted(leaves)}
    allocated = 0.0
    idle_nodes = float(node_gpus.size)
    idle_gpus = float(node_gpus.sum())
    idle_node_integral = idle_gpu_integral = 0.0
    alloc_window_integral = 0.0
    alloc_arrival_integral = 0.0
    alloc_run_integral = 0.0
    timeline: list[tuple[float, float]] = [(0.0, 0.0)]
    moves = evictions = passes = 0
    lost_milli_seconds = 0.0
    scheduler_seconds = 0.0
    waiting_at_window_end = -1

    next_arrival = 0
    now = t_first
    changed = False
    released = False
    next_pass = t_first if interval_seconds > 0 else math.inf

    def job_milli(job: Job) -> float:
        return float(job.gpu_milli_total)

    def advance(to: float) -> None:
        nonlocal alloc_window_integral, alloc_run_integral, alloc_arrival_integral
        nonlocal idle_node_integral, idle_gpu_integral
        dt = to - now
        if dt <= 0:
            return
        alloc_run_integral += allocated * dt
        alloc_arrival_integral += allocated * max(0.0, min(to, t_last) - max(now, t_first))
        lo, hi = max(now, t_measure), min(to, t_last)
        w = hi - lo
        if w > 0:
            alloc_window_integral += allocated * w
            idle_node_integral += idle_nodes * w
            idle_gpu_integral += idle_gpus * w
            if track_queues:
                for a in acc.values():
                    a.alloc_integral += a.allocated_milli * w
                    a.share_integral += a.share_milli * w
                    a.abs_dev_integral += abs(a.allocated_milli - a.share_milli) * w
                    a.shortfall_integral += max(0.0, a.share_milli - a.allocated_milli) * w

    def refresh_shares() -> None:
        demand: dict[QueueName, int] = dict.fromkeys(acc, 0)
        for a_name, a in acc.items():
            demand[a_name] = round(a.allocated_milli)
        for job in pending.values():
            demand[job.queue] += job.gpu_milli_total
        shares = compute_fair_shares(workload.queues, demand, capacity)
        for a_name, a in acc.items():
            a.share_milli = shares.share_milli[a_name]

    def occupy(placements: RunningJob, step: int) -> None:
        nonlocal idle_nodes, idle_gpus
        for replica in placements.placements:
            node = state.node_index[replica.node]
            before = replicas_on[node]
            replicas_on[node] = before + step
            if before == 0 or before + step == 0:  # the node stops or starts being fully idle
                idle_nodes -= step
                idle_gpus -= step * float(node_gpus[node])

    def start(job: Job, placements: RunningJob, run_seconds: float) -> None:
        nonlocal allocated, seq
        state.allocate_job(placements)
        occupy(placements, 1)
        running[job.id] = placements
        end = now + run_seconds
        end_at[job.id] = end
        heapq.heappush(departures, (end, seq, job.id))
        seq += 1
        allocated += job_milli(job)
        if track_queues:
            acc[job.queue].allocated_milli += job_milli(job)

    def stop(job_id: JobId) -> RunningJob:
        nonlocal allocated
        rj = running.pop(job_id)
        state.release_job(rj)
        occupy(rj, -1)
        end_at.pop(job_id)
        allocated -= job_milli(rj.job)
        if track_queues:
            acc[rj.job.queue].allocated_milli -= job_milli(rj.job)
        return rj

    while True:
        t_arr = arrivals[next_arrival] if next_arrival < len(tasks) else math.inf
        while departures and end_at.get(departures[0][2]) != departures[0][0]:
            heapq.heappop(departures)  # stale: the job was evicted or moved
        t_dep = departures[0][0] if departures else math.inf
        t_pass = max(next_pass, now) if (pending and changed and interval_seconds > 0) else math.inf
        t = min(t_arr, t_dep, t_pass)
        if t == math.inf or t > end_limit:
            break
        advance(t)
        now = t

        while departures and departures[0][0] == now:
            _, _, job_id = heapq.heappop(departures)
            if end_at.get(job_id) != now:
                continue
            stop(job_id)
            finish[by_id[job_id]] = now
            changed = released = True
        while next_arrival < len(tasks) and arrivals[next_arrival] == now:
            job = tasks[next_arrival].job
            pending[job.id] = job
            next_arrival += 1
            changed = True

        run_pass = bool(pending) and changed and (interval_seconds <= 0 or now >= next_pass)
        if run_pass and interval_seconds > 0:
            next_pass = (math.floor(now / interval_seconds) + 1) * interval_seconds
        passes_left = 1 + FOLLOW_UP_PASSES if run_pass else 0
        while passes_left > 0 and pending:
            passes_left -= 1
            if pending_dirty:
                pending = dict(sorted(pending.items(), key=lambda kv: by_id[kv[0]]))
                pending_dirty = False
            t0 = time.perf_counter()
            plan = scheduler.schedule(now, tuple(pending.values()), running, state, released=released)
            scheduler_seconds += time.perf_counter() - t0
            passes += 1
            changed = released = False

            evicted: dict[JobId, tuple[RunningJob, float]] = {}
            for ev in plan.evictions:
                if ev.job_id not in running:
                    raise SimulationError(f"plan evicts {ev.job_id!r}, which is not running")
                left = end_at[ev.job_id] - now
                evicted[ev.job_id] = (stop(ev.job_id), left)
                if ev.kind is not EvictionKind.CONSOLIDATE:
                    evictions += 1
            for binding in plan.bindings:
                if binding.job_id in evicted:
                    old, left = evicted.pop(binding.job_id)
                    if move_cost == "restart":
                        full = tasks[by_id[binding.job_id]].duration_seconds
                        lost_milli_seconds += (full - left) * job_milli(old.job)
                        left = full
                        start(old.job, RunningJob(old.job, binding.placements, now), left)
                    else:
                        start(old.job, RunningJob(old.job, binding.placements, old.started_at), left)
                    moves += 1
                elif binding.job_id in pending:
                    job = pending.pop(binding.job_id)
                    i = by_id[job.id]
                    if np.isnan(first_start[i]):
                        first_start[i] = now
                    start(job, RunningJob(job, binding.placements, now), remaining[i])
                else:
                    raise SimulationError(f"plan binds {binding.job_id!r}, which is not pending")
            for job_id, (old, left) in evicted.items():
                remaining[by_id[job_id]] = left
                pending[job_id] = old.job
                pending_dirty = True
                changed = released = True
            if not evicted:
                break
        if next_arrival >= len(tasks) and waiting_at_window_end < 0:
            waiting_at_window_end = len(pending)
        if track_queues:
            refresh_shares()
        if keep_timeline and (not timeline or timeline[-1][1] != allocated):
            timeline.append((now - t_first, 100.0 * allocated / capacity))

    end = now
    if waiting_at_window_end < 0:
        waiting_at_window_end = len(pending)
    all_arrivals = np.asarray(arrivals, dtype=np.float64)
    measured = all_arrivals >= t_measure
    arrival_arr = all_arrivals[measured]
    started_mask = ~np.isnan(first_start[measured])
    waits = np.where(started_mask, first_start[measured] - arrival_arr, end - arrival_arr)
    waits = np.maximum(waits, 0.0)
    finish_m = finish[measured]
    done_mask = ~np.isnan(finish_m)
    completions = finish_m[done_mask] - arrival_arr[done_mask]
    window = t_last - t_measure
    run_span = end - t_first

    queue_stats: dict[str, QueueStats] = {}
    if track_queues and window > 0:
        queue_of = np.array([t.job.queue for t in tasks])[measured]
        for q_name, a in acc.items():
            mask = queue_of == q_name
            queue_stats[q_name] = QueueStats(
                mean_allocated_gpus=a.alloc_integral / window / 1000.0,
                mean_fair_share_gpus=a.share_integral / window / 1000.0,
                mean_abs_deviation_gpus=a.abs_dev_integral / window / 1000.0,
                mean_shortfall_gpus=a.shortfall_integral / window / 1000.0,
                jobs=int(mask.sum()),
                wait_mean_seconds=float(waits[mask].mean()) if mask.any() else math.nan,
                wait_p99_seconds=percentile(waits[mask], 99),
            )

    return ReplayResult(
        scheduler=scheduler.name,
        workload=workload.name,
        tasks=len(tasks),
        started=int(started_mask.sum()),
        finished=int(done_mask.sum()),
        never_placed=int((~started_mask).sum()),
        waiting_at_window_end=waiting_at_window_end,
        allocation_pct=100.0 * alloc_window_integral / (capacity * window) if window > 0 else math.nan,
        allocation_pct_window=(
            100.0 * alloc_arrival_integral / (capacity * (t_last - t_first)) if t_last > t_first else math.nan
        ),
        allocation_pct_run=100.0 * alloc_run_integral / (capacity * run_span) if run_span > 0 else math.nan,
        idle_node_hours=idle_node_integral / 3600.0,
        idle_node_pct=100.0 * idle_node_integral / (node_gpus.size * window) if window > 0 else math.nan,
        idle_gpu_pct=100.0 * idle_gpu_integral / (float(node_gpus.sum()) * window) if window > 0 else math.nan,
        wait_mean_seconds=float(waits.mean()),
        wait_p50_seconds=percentile(waits, 50),
        wait_p99_seconds=percentile(waits, 99),
        completion_mean_seconds=float(completions.mean()) if completions.size else math.nan,
        completion_p50_seconds=percentile(completions, 50),
        completion_p99_seconds=percentile(completions, 99),
        window_seconds=window,
        warmup_seconds=warmup_seconds,
        measured_tasks=int(measured.sum()),
        end_seconds=run_span,
        moves=moves,
        evictions=evictions,
        lost_gpu_hours=lost_milli_seconds / GPU_MILLI / 3600.0,
        passes=passes,
        wall_seconds=time.perf_counter() - wall_start,
        scheduler_seconds=scheduler_seconds,
        queues=queue_stats,
        allocation_timeline=tuple(timeline),
        waits_seconds=tuple(float(w) for w in waits),
    )
