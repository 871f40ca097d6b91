"""Starvation of big gangs in an LLM-cluster mix, with and without reservations (`leitstand simulate acme`).

What it does: synthesises a workload calibrated from the Acme tables (Shanghai AI Lab's Kalos
cluster, NSDI '24; the tables in `<traces>/acme/`, reconstructed from the figures the trace authors
published, since the job tables themselves are not available): pretraining gangs of 512 or 1,024
GPUs (in Kalos' proportion of jobs of those sizes) among thousands of 1-GPU evaluation jobs, each
type's durations sampled from its Kalos duration CDF. Arrivals are synthesised (the tables have
none): gangs uniformly over the first two thirds of the horizon, evaluations as a Poisson stream
offering `eval_load` of the cluster's GPUs. Then it drives `cycle.run_cycle` in simulated time, once
per `period` seconds in which something arrived or ended, on the same stream twice: without
reservations and with `reserve_after_seconds` set, and reports the gangs' waits and the cluster's
allocation side by side.

The setting is the one where starvation happens: one queue, every job at the same priority (so
neither reclaim nor preemption moves evaluations for a gang), evaluations preemptible (Run:ai's
rule for priority < 100), gangs non-preemptible and required inside one spine. Evicted jobs go back to the queue and
start over (their progress is lost and counted).

Pure: no clock, no I/O but reading the two tables (`load_tables`); the CLI lives in
`leitstand.operator.simulate_acme`.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.model import (
    Job,
    JobId,
    Node,
    NodeName,
    Queue,
    QueueName,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Topology,
    reasons_by_job,
)
from leitstand.scheduler.sim.openb import TraceFormatError
from leitstand.scheduler.state import ClusterState

__all__ = [
    "AcmeResult",
    "AcmeTables",
    "AcmeWorkload",
    "load_tables",
    "make_workload",
    "simulate",
]

HISTOGRAM = "gpu_num_histogram.csv"
DURATIONS = "job_type_duration_queue_cdf.csv"
QUEUE = QueueName("llm")
GANG_SIZES = (512, 1024)


@dataclass(frozen=True, slots=True)
class Cdf:
    """A duration CDF: upper bounds in seconds and the percent of jobs at or below each."""

    le_seconds: tuple[float, ...]
    percent: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        """Inverse-CDF samples, log-linear between the table's points (it is on a log2 axis)."""
        pct = np.asarray(self.percent, dtype=np.float64)
        logs = np.log2(np.asarray(self.le_seconds, dtype=np.float64))
        u = rng.uniform(0.0, pct[-1], size=n)
        # Flat stretches (equal percents) are skipped by np.interp's use of the first matching point.
        keep = np.concatenate(([True], np.diff(pct) > 0))
        return np.asarray(np.exp2(np.interp(u, pct[keep], logs[keep])), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class AcmeTables:
    cluster: str
    gang_weights: dict[int, float]
    """Jobs per gang size of `GANG_SIZES` in the histogram (the 512–513 and 1,024 rows)."""
    eval_duration: Cdf
    pretrain_duration: Cdf


def load_tables(acme_dir: Path, cluster: str = "Kalos") -> AcmeTables:
    """Read the two tables of `acme_dir` for `cluster`. `TraceFormatError` names file, line, column."""
    hist_path, cdf_path = acme_dir / HISTOGRAM, acme_dir / DURATIONS
    weights: dict[int, float] = {}
    for line, row in _rows(hist_path, ("cluster", "gpu_num_min", "gpu_num_max", "jobs")):
        if row["cluster"] != cluster:
            continue
        lo = _number(hist_path, line, "gpu_num_min", row)
        hi = _number(hist_path, line, "gpu_num_max", row)
        for size in GANG_SIZES:
            if lo <= size <= hi:
                weights[size] = weights.get(size, 0.0) + _number(hist_path, line, "jobs", row)
    if not weights:
        raise TraceFormatError(f"{hist_path}: no rows of cluster {cluster!r} cover gang sizes {GANG_SIZES}")
    points: dict[str, list[tuple[float, float]]] = {"Eval": [], "Pretrain": []}
    for line, row in _rows(cdf_path, ("cluster", "type", "metric", "le_seconds", "cdf_percent")):
        if row["cluster"] != cluster or row["metric"] != "duration" or row["type"] not in points:
            continue
        le = _number(cdf_path, line, "le_seconds", row)
        pct = _number(cdf_path, line, "cdf_percent", row)
        if le <= 0 or not 0 <= pct <= 100:
            raise TraceFormatError(
                f"{cdf_path}:{line}: le_seconds must be > 0 and cdf_percent within 0..100; fix the row"
            )
        points[row["type"]].append((le, pct))
    cdfs = {}
    for kind, pts in points.items():
        pts.sort()
        if len(pts) < 2 or pts[-1][1] <= 0:
            raise TraceFormatError(f"{cdf_path}: too few duration rows for {cluster} {kind}; restore the table")
        if any(b[1] < a[1] for a, b in itertools.pairwise(pts)):
            raise TraceFormatError(f"{cdf_path}: the {cluster} {kind} duration CDF decreases; fix the table")
        cdfs[kind] = Cdf(tuple(p[0] for p in pts), tuple(p[1] for p in pts))
    return AcmeTables(cluster, weights, cdfs["Eval"], cdfs["Pretrain"])


def _rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise TraceFormatError(f"{path}:1: missing column(s) {', '.join(missing)}; restore the header")
            return [(i, row) for i, row in enumerate(reader, start=2)]
    except OSError as err:
        raise TraceFormatError(f"{path}: cannot read ({err.strerror}); check the traces directory") from None


def _number(path: Path, line: int, column: str, row: dict[str, str]) -> float:
    raw = row.get(column)
    try:
        value = float(raw or "")
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: column {column}: {raw!r} is not a number; fix the value") from None
    if not math.isfinite(value):
        raise TraceFormatError(f"{path}:{line}: column {column}: {raw!r} is not finite; fix the value")
    return value


# -- workload ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    job: Job
    duration: float


@dataclass(frozen=True, slots=True)
class AcmeWorkload:
    nodes: tuple[Node, ...]
    topology: Topology
    arrivals: tuple[Arrival, ...]
    """Sorted by arrival time (`job.created_at`)."""
    horizon: float
    """Arrivals end here; the run goes on until `end`."""
    end: float


def make_workload(
    tables: AcmeTables,
    *,
    nodes: int = 256,
    spine_nodes: int = 128,
    rack_nodes: int = 16,
    hours: float = 48.0,
    gangs: int = 12,
    eval_load: float = 0.7,
    max_gang_hours: float = 12.0,
    seed: int = 1,
) -> AcmeWorkload:
    """The cluster (8-GPU nodes in racks in spines) and the synthesised stream (module docstring).

    Gang durations are sampled from the Pretrain CDF and capped at `max_gang_hours` (the CDF's tail
    reaches 12 days; uncapped, one gang would outlast the horizon), evaluations from the Eval CDF.
    """
    for name, value, low in (("nodes", nodes, 1), ("spine_nodes", spine_nodes, 1), ("rack_nodes", rack_nodes, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    if not (hours > 0 and gangs >= 0 and 0 <= eval_load < 10 and max_gang_hours > 0):
        raise ValueError("hours and max_gang_hours must be > 0, gangs >= 0, eval_load within 0..10")
    rng = np.random.default_rng(seed)
    node_list = tuple(
        Node(
            name=NodeName(f"s{i // spine_nodes}-r{i // rack_nodes}-n{i}"),
            gpus=8,
            cpu_milli=224_000,
            memory_mib=2_048 * 1024,
            gpu_model="A100",
            topology=(f"s{i // spine_nodes}", f"r{i // rack_nodes}"),
        )
        for i in range(nodes)
    )
    capacity = 8 * nodes
    horizon = hours * 3600.0
    arrivals: list[Arrival] = []
    sizes = [s for s in GANG_SIZES if s <= min(capacity, 8 * spine_nodes) and tables.gang_weights.get(s, 0) > 0]
    if gangs and not sizes:
        raise ValueError(f"no gang size of {GANG_SIZES} fits one spine of {8 * spine_nodes} GPUs; raise spine_nodes")
    if gangs:
        w = np.asarray([tables.gang_weights[s] for s in sizes], dtype=np.float64)
        size_pick = rng.choice(len(sizes), size=gangs, p=w / w.sum())
        starts = np.sort(rng.uniform(0.0, horizon * 2 / 3, size=gangs))
        durations = np.minimum(tables.pretrain_duration.sample(rng, gangs), max_gang_hours * 3600.0)
        for k in range(gangs):
            size = sizes[int(size_pick[k])]
            job = Job(
                id=JobId(f"pretrain-{k:03d}"),
                queue=QUEUE,
                replicas=size // 8,
                gpus=8,
                preemptible=False,  # pretraining is not backfill: it is never evicted for another gang
                required_level="spine",
                created_at=float(starts[k]),
            )
            arrivals.append(Arrival(job, float(durations[k])))
    mean_eval = float(tables.eval_duration.sample(np.random.default_rng(seed + 1), 20_000).mean())
    rate = eval_load * capacity / mean_eval  # 1-GPU jobs per second
    count = int(rng.poisson(rate * horizon))
    times = np.sort(rng.uniform(0.0, horizon, size=count))
    durations = tables.eval_duration.sample(rng, count)
    for k in range(count):
        job = Job(id=JobId(f"eval-{k:06d}"), queue=QUEUE, gpus=1, created_at=float(times[k]))
        arrivals.append(Arrival(job, float(durations[k])))
    arrivals.sort(key=lambda a: (a.job.created_at, a.job.id))
    return AcmeWorkload(node_list, Topology(("spine", "rack")), tuple(arrivals), horizon, horizon * 1.5)


# -- simulation -------------------------------------------------------------------------------------


@dataclass(slots=True)
class AcmeResult:
    label: str
    gang_waits: list[float] = field(default_factory=list)
    """Seconds from arrival to start, per gang that started."""
    gangs_never: int = 0
    gangs_never_waited: list[float] = field(default_factory=list)
    """For gangs still waiting at the end: how long they had waited then."""
    eval_waits: list[float] = field(default_factory=list)
    allocated_gpu_seconds: float = 0.0
    capacity_gpu_seconds: float = 0.0
    evictions: int = 0
    lost_gpu_seconds: float = 0.0
    """Work of evicted jobs lost (they start over)."""
    cycles: int = 0
    reserved_cycles: int = 0
    """Cycles whose plan had a gang waiting with `Reserved`."""
    started: set[JobId] = field(default_factory=set, repr=False)
    """Jobs whose first start is recorded (a restart after an eviction is not a new wait)."""

    @property
    def allocation(self) -> float:
        return self.allocated_gpu_seconds / self.capacity_gpu_seconds if self.capacity_gpu_seconds else 0.0

    def gang_wait(self, q: float) -> float:
        """Percentile `q` of all gangs' waits, counting a gang never started by what it had waited."""
        waits = self.gang_waits + self.gangs_never_waited
        return float(np.percentile(waits, q)) if waits else 0.0

    def as_dict(self) -> dict[str, object]:
        evals = np.asarray(self.eval_waits) if self.eval_waits else np.zeros(1)
        return {
            "label": self.label,
            "gangs": len(self.gang_waits) + self.gangs_never,
            "gangs_started": len(self.gang_waits),
            "gangs_never_started": self.gangs_never,
            "gang_wait_p50_hours": self.gang_wait(50) / 3600,
            "gang_wait_max_hours": self.gang_wait(100) / 3600,
            "eval_wait_p50_seconds": float(np.percentile(evals, 50)),
            "eval_wait_p99_seconds": float(np.percentile(evals, 99)),
            "allocation": self.allocation,  # over the arrival window
            "evictions": self.evictions,
            "lost_gpu_hours": self.lost_gpu_seconds / 3600,
            "cycles": self.cycles,
            "reserved_cycles": self.reserved_cycles,
        }


def simulate(
    workload: AcmeWorkload,
    config: SchedulerConfig,
    *,
    label: str,
    period: float = 60.0,
) -> AcmeResult:
    """Drive `run_cycle` over the workload in simulated time (module docstring)."""
    from leitstand.scheduler.cycle import run_cycle

    if period <= 0:
        raise ValueError(f"period must be > 0 seconds, got {period}")
    result = AcmeResult(label)
    queues = (Queue(name=QUEUE, quota_milli=8_000 * len(workload.nodes)),)
    state = ClusterState.from_nodes(workload.nodes, workload.topology)
    durations = {a.job.id: a.duration for a in workload.arrivals}
    is_gang = {a.job.id: a.job.replicas > 1 for a in workload.arrivals}
    pending: dict[JobId, Job] = {}
    running: dict[JobId, RunningJob] = {}
    ends: list[tuple[float, str]] = []  # (end time, job id); stale entries skipped via `end_of`
    end_of: dict[JobId, float] = {}
    capacity = 8 * len(workload.nodes)
    allocated = 0  # GPUs
    arrivals = workload.arrivals
    nxt = 0
    now = 0.0
    last = 0.0
    while now <= workload.end:
        # Account the interval since the last step at the allocation it had (while jobs arrive).
        span = max(min(now, workload.horizon) - last, 0.0)
        result.allocated_gpu_seconds += allocated * span
        result.capacity_gpu_seconds += capacity * span
        last = min(now, workload.horizon)
        changed = False
        while ends and ends[0][0] <= now:
            t, jid = heapq.heappop(ends)
            job_id = JobId(jid)
            if end_of.get(job_id) != t:
                continue
            held = running.pop(job_id)
            del end_of[job_id]
            state.release_job(held)
            allocated -= held.job.replicas * held.job.gpus
            changed = True
        while nxt < len(arrivals) and arrivals[nxt].job.created_at <= now:
            job = arrivals[nxt].job
            pending[job.id] = job
            nxt += 1
            changed = True
        if changed and pending:
            snapshot = Snapshot(
                nodes=workload.nodes,
                queues=queues,
                pending=tuple(pending.values()),
                running=tuple(running.values()),
                topology=workload.topology,
                now=now,
            )
            plan = run_cycle(snapshot, config, state=state)
            result.cycles += 1
            if any(why.code == "Reserved" for _, why in reasons_by_job(plan.pending)):
                result.reserved_cycles += 1
            for ev in plan.evictions:
                held = running.pop(ev.job_id)
                state.release_job(held)
                allocated -= held.job.replicas * held.job.gpus
                result.evictions += 1
                result.lost_gpu_seconds += (now - held.started_at) * held.job.replicas * held.job.gpus
                del end_of[ev.job_id]
                pending[held.job.id] = held.job  # back to the queue; it keeps its arrival time
            for binding in plan.bindings:
                job = pending.pop(binding.job_id)
                held = RunningJob(job=job, placements=binding.placements, started_at=now)
                state.allocate_job(held)
                running[job.id] = held
                allocated += job.replicas * job.gpus
                end = now + durations[job.id]
                end_of[job.id] = end
                heapq.heappush(ends, (end, job.id))
                if job.id not in result.started:
                    result.started.add(job.id)
                    (result.gang_waits if is_gang[job.id] else result.eval_waits).append(now - job.created_at)
        # Next step: the next arrival or end, on the scheduler's period grid.
        upcoming = [arrivals[nxt].job.created_at] if nxt < len(arrivals) else []
        if ends:
            upcoming.append(ends[0][0])
        if not upcoming:
            break
        step = max(min(upcoming), now + 1e-9)
        now = math.ceil(step / period) * period
    for job in pending.values():
        if is_gang[job.id]:
            result.gangs_never += 1
            result.gangs_never_waited.append(min(now, workload.end) - job.created_at)
    return result


def compare(
    workload: AcmeWorkload, *, reserve_after_seconds: float, period: float = 60.0, base: SchedulerConfig | None = None
) -> tuple[AcmeResult, AcmeResult]:
    """The same stream without and with reservations."""
    config = base or SchedulerConfig()
    off = simulate(workload, replace(config, reserve_after_seconds=None), label="without reservations", period=period)
    on = simulate(
        workload,
        replace(config, reserve_after_seconds=reserve_after_seconds),
        label=f"with reservations (after {reserve_after_seconds:g} s)",
        period=period,
    )
    return off, on
