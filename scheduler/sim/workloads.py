"""Task streams for the replay simulator, built from the shared traces.

What it holds: `openb_workload` (Alibaba GPU-sharing trace: tasks with their recorded durations,
arrivals re-timed to an offered load) and `philly_workload` (Microsoft Philly jobs of one sampled
window, virtual clusters as queues, on the revised Philly machine list), plus `offered_load`, the one
definition of load both use.

Who calls it: `leitstand simulate replay` and tests. It reads CSV files and returns
`replay.Workload` values; it does not simulate, print or plot. Node and resource columns of the
openb files come from `leitstand.scheduler.sim.openb` (the FGD protocol's rules, one loader for
both simulators); only the columns that loader drops (times, QoS) are read here.

Offered load (seconds, milli-GPU): for a stream with arrivals a_i in a window [0, T], GPU request
g_i (milli) and duration d_i, the load is Σ g_i · min(d_i, T − a_i) / (T · capacity): the GPU-time
the stream asks for *inside the arrival window* per unit of window time, if every task started on
arrival. Counting only the part inside the window matters on these traces: in openb 34 tasks last
over 10^6 s and hold 60% of the raw GPU-seconds while asking for 34 GPUs, so a load computed on
whole durations would leave the cluster mostly idle during the window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.model import GPU_MILLI, Job, JobId, Node, NodeName, Queue, QueueName
from leitstand.scheduler.policies import TaskShape
from leitstand.scheduler.sim.openb import TraceFormatError, load_nodes, load_pods, read_rows
from leitstand.scheduler.sim.replay import Task, Workload

DEFAULT_QUEUE = QueueName("default")


def offered_load(
    arrivals_seconds: NDArray[np.float64],
    durations_seconds: NDArray[np.float64],
    gpu_milli: NDArray[np.float64],
    capacity_milli: float,
) -> float:
    """Offered load of a stream over its arrival window (definition in the module docstring)."""
    start = float(arrivals_seconds.min())
    window = float(arrivals_seconds.max()) - start
    if window <= 0 or capacity_milli <= 0:
        return float("nan")
    inside = np.minimum(durations_seconds, window - (arrivals_seconds - start))
    return float((gpu_milli * inside).sum() / (window * capacity_milli))


def _scale_for_load(
    positions: NDArray[np.float64],
    durations_seconds: NDArray[np.float64],
    gpu_milli: NDArray[np.float64],
    capacity_milli: float,
    load: float,
) -> float:
    """Window length T (seconds) so that arrivals T·positions (positions in [0, 1]) offer `load`.

    The offered load falls monotonically as T grows (each term is min(d_i / T, 1 − p_i)), so a
    bisection on log T finds it.
    """
    if load <= 0:
        raise ValueError(f"load must be > 0, got {load}")
    lo, hi = 1e-3, 1e12
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        if offered_load(mid * positions, durations_seconds, gpu_milli, capacity_milli) > load:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return float((lo * hi) ** 0.5)


# -- Alibaba openb ----------------------------------------------------------------------------------


def openb_workload(
    pods_path: str | Path,
    nodes_path: str | Path,
    *,
    load: float = 1.0,
    window_seconds: float = 1800.0,
    seed: int = 42,
) -> Workload:
    """The openb pod list as a stream on the openb node list, at offered `load` (1.0 = capacity).

    - Order: the trace's arrival order (creation_time, then name), cycled: after the last task the
      trace starts again (ids get a `#k` suffix on the k-th repetition). Cycling is unavoidable: the
      whole default trace asks for 98% of the cluster's GPUs *at once*, so no re-timing of its
      8,152 tasks alone can keep 80–120% of the cluster busy for longer than one task lifetime.
    - Duration: deletion_time − creation_time, at least 1 s (median 540 s on the default trace).
    - Arrivals: a Poisson process (seeded) over [0, `window_seconds`), its rate chosen so that the
      offered load (module docstring) equals `load`. As recorded, arrivals spread over 149 days and
      at most ~66 GPUs are ever requested at once.
    - QoS `BE` → preemptible (movable by consolidation); LS, Burstable, Guaranteed → not
      preemptible. Every task has priority 50 and sits in one queue, `default`, whose quota is the
      whole cluster (so no reclaim or priority preemption can happen: only moves).
    - Resources and GPU-model constraints (`gpu_spec`) as `openb.load_pods` reads them; the
      typical-task shapes (for FGD and leitstand) come from the original list, as in the FGD protocol.
    """
    nodes = tuple(load_nodes(nodes_path))
    pods = load_pods(pods_path)
    index = {name: i for i, name in enumerate(pods.names)}
    times: list[tuple[float, str, float, str]] = []
    for row in read_rows(pods_path, ("name", "creation_time"), what="an openb pod list with times (replay)"):
        created = row.number("creation_time")
        deleted = row.number("deletion_time", default=created)
        times.append((created, row.text("name"), max(deleted - created, 1.0), row.text("qos")))
    times.sort()
    n_trace = len(times)
    order = np.array([index[name] for _, name, _, _ in times], dtype=np.int64)
    trace_durations = np.array([d for _, _, d, _ in times], dtype=np.float64)
    trace_milli = (pods.gpu_milli * pods.num_gpu)[order].astype(np.float64)
    capacity = float(sum(node.gpus for node in nodes) * GPU_MILLI)
    if capacity <= 0 or not trace_milli.any():
        where = nodes_path if capacity <= 0 else pods_path
        raise ValueError(f"{where}: no GPU {'node' if capacity <= 0 else 'task'}; the replay measures GPU allocation")
    if load <= 0 or not 0 < window_seconds <= 86_400:
        raise ValueError(f"load ({load}) must be > 0 and the window ({window_seconds} s) in (0, 86,400] s")

    rng = np.random.default_rng(seed)
    # Unit-rate Poisson arrival epochs; at rate r the k-th task arrives at epoch_k / r.
    need = int(100 * window_seconds) + 100_000  # ≥ 100 arrivals/s: 3 × what 120% needs at 1,800 s
    epochs = np.cumsum(rng.exponential(1.0, size=need))
    epochs -= epochs[0]

    def stream(rate: float) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        count = int(np.searchsorted(epochs, rate * window_seconds))
        if count >= epochs.size:
            raise ValueError(f"load {load} needs more than {epochs.size} arrivals; lower it or the window")
        k = np.arange(count)
        return epochs[:count] / rate, k % n_trace

    def load_at(rate: float) -> float:
        arrivals, which = stream(rate)
        inside = np.minimum(trace_durations[which], window_seconds - arrivals)
        return float((trace_milli[which] * inside).sum() / (window_seconds * capacity))

    lo, hi = 1e-3, float(epochs[-1]) / window_seconds * 0.99
    if load_at(hi) < load:
        raise ValueError(f"load {load} is out of reach in a {window_seconds} s window")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if load_at(mid) < load else (lo, mid)
        if hi - lo < 1e-6 * hi:
            break
    rate = hi
    arrivals, which = stream(rate)

    tasks: list[Task] = []
    for k, (arrival, w) in enumerate(zip(arrivals, which, strict=True)):
        i = int(order[w])
        num = int(pods.num_gpu[i])
        spec = pods.gpu_spec[i]
        rep = k // n_trace
        job = Job(
            id=JobId(pods.names[i] if rep == 0 else f"{pods.names[i]}#{rep}"),
            queue=DEFAULT_QUEUE,
            gpus=num,
            gpu_milli=int(pods.gpu_milli[i]) if num > 0 else 0,
            cpu_milli=int(pods.cpu_milli[i]),
            memory_mib=int(pods.memory_mib[i]),
            gpu_models=frozenset(m for m in spec.split("|") if m) if num > 0 else frozenset(),
            priority=50,
            preemptible=times[int(w)][3] == "BE",
            created_at=float(arrival),
        )
        tasks.append(Task(job=job, arrival_seconds=float(arrival), duration_seconds=float(trace_durations[w])))

    shape_counts: dict[tuple[int, int, int, str], int] = defaultdict(int)
    for i in range(n_trace):
        shape_counts[(int(pods.cpu_milli[i]), int(pods.gpu_milli[i]), int(pods.num_gpu[i]), pods.gpu_spec[i])] += 1
    shapes = tuple(
        TaskShape(
            cpu_milli=cpu,
            gpu_milli=milli,
            gpus=num,
            count=count,
            gpu_models=frozenset(m for m in spec.split("|") if m),
        )
        for (cpu, milli, num, spec), count in shape_counts.items()
    )
    queues = (Queue(name=DEFAULT_QUEUE, quota_milli=int(capacity)),)
    return Workload(
        name=f"openb-{Path(pods_path).stem.removeprefix('openb_pod_list_')}@{load:g}",
        nodes=nodes,
        queues=queues,
        tasks=tuple(tasks),
        shapes=shapes,
        params={
            "load": load,
            "seed": seed,
            "window_seconds": window_seconds,
            "arrivals_per_second": rate,
            "tasks": len(tasks),
            "trace_repetitions": (len(tasks) + n_trace - 1) // n_trace,
            "offered_load": load_at(rate),
        },
    )


# -- Microsoft Philly -------------------------------------------------------------------------------


def _gang(num_gpus: int, max_node_gpus: int) -> tuple[int, int]:
    """(replicas, GPUs per replica) for a Philly job: one replica up to a node's size, else the
    largest power of two ≤ the node size that divides the count (12 → 3 × 4, 24 → 3 × 8)."""
    if num_gpus <= max_node_gpus:
        return 1, num_gpus
    per = max_node_gpus
    while per > 1 and num_gpus % per:
        per //= 2
    return num_gpus // per, per


def load_philly_nodes(machines_path: str | Path, *, cpu_milli_per_gpu: int = 8000) -> tuple[Node, ...]:
    """Machines of `revised_machine_list.csv` (`index,machineId,number of GPUs`) with ≥ 1 GPU.

    The trace has no CPU or memory figures; nodes get `cpu_milli_per_gpu` per GPU and 1 TiB, and
    Philly jobs ask for none, so only GPUs bind.
    """
    nodes: list[Node] = []
    for row in read_rows(machines_path, ("machineId", "number of GPUs"), what="the Philly machine list"):
        gpus = row.integer("number of GPUs", default=0)
        if gpus <= 0:
            continue
        nodes.append(
            Node(
                name=NodeName(row.required("machineId")),
                gpus=gpus,
                cpu_milli=gpus * cpu_milli_per_gpu,
                memory_mib=1024 * 1024,
                gpu_model="philly",
            )
        )
    if not nodes:
        raise TraceFormatError(f"{machines_path}: no machine with a GPU; the Philly machine list has a row per machine")
    return tuple(nodes)


def philly_workload(
    jobs_path: str | Path,
    machines_path: str | Path,
    *,
    start: str = "2017-10-02",
    days: float = 2.0,
    load: float | None = 1.0,
    quota: str = "demand",
) -> Workload:
    """Philly jobs submitted in [start, start + days), virtual clusters as queues.

    - Gangs: a job of n ≤ 8 GPUs is one replica of n GPUs; larger jobs are replicas of 8 (or 4, 2)
      GPUs. Durations as recorded; every job is preemptible (training, Run:ai priority 50) and, once
      evicted, resumes with its remaining duration.
    - Arrivals: the recorded submit times, shifted to start at 0 (the real, bursty arrival process).
    - Cluster: when `load` is given, the smallest prefix of the revised machine list (largest
      machines first, then list order) whose GPU capacity brings the offered load (module
      docstring) down to `load`, but never smaller than the largest job; `load=None` keeps all
      3,205 GPUs (the recorded window then offers only about 0.2 of them, too little to queue).
    - Queues: one leaf per virtual cluster; `quota="demand"`: quotas split the cluster in proportion
      to each VC's GPU-seconds in the window; `quota="equal"`: equal parts. Over-quota weight 1,
      no limit.
    """
    all_nodes = load_philly_nodes(machines_path)
    max_node = max(node.gpus for node in all_nodes)
    try:
        t0 = datetime.fromisoformat(start)
    except ValueError:
        raise ValueError(f"start {start!r} is not a date; write it as YYYY-MM-DD") from None
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    t1 = t0 + timedelta(days=days)
    rows: list[tuple[float, float, int, str]] = []
    columns = ("timestamp", "duration", "num_gpus", "cluster")
    for row in read_rows(jobs_path, columns, what="the Philly job table (adaptdl_philly_jobs.csv)"):
        try:
            ts = datetime.fromisoformat(row.required("timestamp"))
        except ValueError:
            raise TraceFormatError(
                f"{row.where('timestamp')}: {row.text('timestamp')!r} is not a time; write YYYY-MM-DD HH:MM:SS"
            ) from None
        if t0 <= ts < t1:
            secs = (ts - t0).total_seconds()
            gpus = row.integer("num_gpus", minimum=1)
            rows.append((secs, max(row.number("duration"), 1.0), gpus, row.required("cluster")))
    if not rows:
        raise ValueError(f"no Philly jobs submitted in [{start}, +{days:g} days) in {jobs_path}; pick another start")
    rows.sort(key=lambda r: r[0])
    submit = np.array([r[0] for r in rows], dtype=np.float64)
    arrivals = submit - submit[0]
    durations = np.array([r[1] for r in rows], dtype=np.float64)
    milli = np.array([r[2] * GPU_MILLI for r in rows], dtype=np.float64)
    nodes = all_nodes
    if load is not None:
        wanted = offered_load(arrivals, durations, milli, 1.0) / load  # milli-GPU of capacity
        wanted = max(wanted, float(milli.max()))
        ranked = sorted(all_nodes, key=lambda node: -node.gpus)
        total, keep = 0.0, []
        for node in ranked:
            if total >= wanted:
                break
            keep.append(node)
            total += node.gpus * GPU_MILLI
        nodes = tuple(keep)
    capacity = float(sum(node.gpus for node in nodes) * GPU_MILLI)

    demand: dict[str, float] = defaultdict(float)
    for (_, d, n, vc), _a in zip(rows, arrivals, strict=True):
        demand[vc] += n * d
    quotas = _quotas(sorted(demand), demand, int(capacity), quota)
    queues = tuple(Queue(name=QueueName(vc), quota_milli=q) for vc, q in quotas.items())

    tasks: list[Task] = []
    for k, (_, d, n, vc) in enumerate(rows):
        replicas, per = _gang(n, max_node)
        job = Job(
            id=JobId(f"philly-{k:06d}"),
            queue=QueueName(vc),
            replicas=replicas,
            gpus=per,
            priority=50,
            preemptible=True,
            created_at=float(arrivals[k]),
        )
        tasks.append(Task(job=job, arrival_seconds=float(arrivals[k]), duration_seconds=d))
    return Workload(
        name=f"philly-{start}+{days:g}d@{load if load is not None else 'all'}",
        nodes=nodes,
        queues=queues,
        tasks=tuple(tasks),
        params={
            "load": load if load is not None else "recorded",
            "gpus": int(capacity // GPU_MILLI),
            "start": start,
            "days": days,
            "quota": quota,
            "jobs": len(tasks),
            "window_seconds": float(arrivals[-1] - arrivals[0]),
            "offered_load": offered_load(arrivals, durations, milli, capacity),
        },
    )


def _quotas(names: Sequence[str], demand: dict[str, float], capacity_milli: int, mode: str) -> dict[str, int]:
    """Integer milli-GPU quotas summing to at most `capacity_milli` (floor of each exact part)."""
    if mode == "equal":
        weights = dict.fromkeys(names, 1.0)
    elif mode == "demand":
        weights = {n: demand[n] for n in names}
    else:
        raise ValueError(f"unknown quota mode {mode!r}; choose demand or equal")
    total = sum(weights.values()) or 1.0
    return {n: int(capacity_milli * weights[n] / total) for n in names}
