"""The FGD paper's workload-inflation experiment (ATC'23), run as the authors' simulator runs it.

One run = pod file × policy × seed (`run_inflation`): build the arrival stream from the name-sorted
task list with Go's `math/rand` (one `Int()`, `Shuffle`, then append re-sampled tasks — or remove
tasks — until the GPU request is 1.3 × cluster capacity; 10 `Float64()` draws; `Perm(N)` for the node
tie-break order), then submit tasks one at a time: each is placed or fails at once and never leaves. Every task is
placed by the scheduler's own placement kernel (`placement_kernels.place_gang_kernel`, as a 1-replica
gang with no topology level, node mask = the task's GPU model set), called from one compiled stream
loop (`inflation_kernels.run_stream_kernel`); this module prepares its arrays as `placement.place_gang`
does (masks, score-cache rows per request shape, Random's `rand_base(seed, nonce=task index)`).
Arrived and used GPU milli are recorded after every task and merged into "allocation % at arrived
k %" (k = 0..130) exactly as the authors' merge script does. The rules and why each matters:
`docs/policies.md` ("Results: the paper protocol").

Called by the CLI (`leitstand simulate inflation`) and tests; returns plain data, draws nothing.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import Node
from leitstand.scheduler.policies import PolicyContext, TaskShape, TypicalTasks, typical_tasks_from_shapes
from leitstand.scheduler.sim.gorand import GoRand
from leitstand.scheduler.sim.openb import PodTable
from leitstand.scheduler.state import ClusterState

TUNE_RATIO = 1.3
"""Arrivals are inflated to this multiple of the cluster's GPU capacity."""
INFORMER_DRAWS = 10
"""`rand.Float64()` draws by the scheduler's informers between stream building and node naming."""
MAX_ARRIVED_PCT = 130
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Stream:
    """The arrival order: indices into the name-sorted `PodTable`, and the per-node tie ranks."""

    order: NDArray[np.int64]
    node_rank: NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class RunResult:
    policy: PolicyCode
    seed: int
    arrived_milli: NDArray[np.int64]
    used_milli: NDArray[np.int64]
    placed_node: NDArray[np.int64]
    allocation_pct_by_arrived: list[float]
    """Index k = allocation % of cluster GPU milli when k % of capacity has arrived (0..130)."""
    seconds: float

    @property
    def unallocated_pct_at_100(self) -> float:
        return round(100.0 - self.allocation_pct_by_arrived[100], 2)


@dataclass(frozen=True, slots=True)
class PolicySummary:
    policy: PolicyCode
    per_seed: list[float]
    """Unallocated GPU % at 100 % arrived, per seed (seed order as given)."""
    unallocated_pct_at_100: float
    """Median of `per_seed`."""
    allocation_pct_by_arrived: list[float]
    """Median over seeds of each column."""
    seconds: float
    runs: list[RunResult] = field(default_factory=list, repr=False)


def build_stream(pods: PodTable, n_nodes: int, gpu_capacity_milli: int, seed: int) -> Stream:
    """The authors' seeded "tune" of the name-sorted task list to 1.3 × capacity, and the node order."""
    rng = GoRand(seed)
    rng.int_()  # an argument of a debug log line in the authors' code, evaluated even when not logged
    order = list(range(len(pods)))

    def swap(i: int, j: int) -> None:
        order[i], order[j] = order[j], order[i]

    rng.shuffle(len(order), swap)
    request = [int(v) for v in pods.gpu_request_milli]
    per_gpu = [int(v) for v in pods.gpu_milli]
    target = TUNE_RATIO * float(gpu_capacity_milli)
    total = sum(request)
    if float(total) < target:
        n = len(pods)
        while True:
            candidate = rng.intn(n)
            # The authors' test adds the candidate's per-GPU milli, while the total grows by milli × count.
            if float(total + per_gpu[candidate]) > target:
                break
            order.append(candidate)
            total += request[candidate]
    else:
        while float(total) > target:
            idx = rng.intn(len(order))
            total -= request[order[idx]]
            del order[idx]
    for _ in range(INFORMER_DRAWS):
        rng.float64()
    perm = rng.perm(n_nodes)
    return Stream(order=np.array(order, dtype=np.int64), node_rank=np.array(perm, dtype=np.int64))


def _spec_models(spec: str) -> frozenset[str]:
    return frozenset(m.strip() for m in spec.split("|") if m.strip())


def typical_tasks(pods: PodTable, model_codes: dict[str, int]) -> TypicalTasks:
    """Typical tasks of the original (not inflated) task list: shape = (CPU, milli, GPUs, spec)."""
    counts: Counter[tuple[int, int, int, str]] = Counter()
    for i in range(len(pods)):
        counts[(int(pods.cpu_milli[i]), int(pods.gpu_milli[i]), int(pods.num_gpu[i]), pods.gpu_spec[i])] += 1
    shapes = sorted(counts.items(), key=lambda kv: (kv[1], kv[0][0], kv[0][1], kv[0][2], kv[0][3]), reverse=True)
    table = [
        TaskShape(cpu_milli=cpu, gpu_milli=milli, gpus=num, count=c, gpu_models=_spec_models(spec))
        for (cpu, milli, num, spec), c in shapes
    ]
    return typical_tasks_from_shapes(table, model_codes)


def merge_allocation_curve(
    arrived_milli: NDArray[np.int64], used_milli: NDArray[np.int64], total_gpus: int
) -> list[float]:
    """The authors' merge: per event arrived % = round(arrived/gpus/10), allocation % =
    round(used/gpus/10, 2); column k = mean allocation % of events at k (else at k±1), rounded half-even."""
    arrived_pct = np.array([round(float(a) / total_gpus / 10) for a in arrived_milli], dtype=np.int64)
    alloc_pct = np.array([round(float(u) / total_gpus / 10, 2) for u in used_milli], dtype=np.float64)
    curve: list[float] = []
    for k in range(MAX_ARRIVED_PCT + 1):
        sel = alloc_pct[arrived_pct == k]
        if sel.size == 0:
            sel = alloc_pct[(arrived_pct >= k - 1) & (arrived_pct <= k + 1)]
        curve.append(float(np.round(np.mean(sel), 2)) if sel.size else float("nan"))
    return curve


@dataclass(frozen=True, slots=True)
class Workload:
    """A loaded experiment input: cluster, name-sorted tasks and their typical-task table, and each
    task as the placement kernel sees it (a 1-replica gang request)."""

    nodes: tuple[Node, ...]
    pods: PodTable
    state: ClusterState
    typical: TypicalTasks
    task_gpus: NDArray[np.int64]
    """GPUs per task as the request carries them: 0 for a CPU-only task (no GPU count or no milli)."""
    task_milli: NDArray[np.int64]
    """Milli per GPU as the request carries it (0 when `task_gpus` is 0, as `place_gang` passes it)."""
    task_mask: NDArray[np.int64]
    """Row of `node_masks` per task."""
    node_masks: NDArray[np.bool_]
    """[M, N]: `ClusterState.node_mask(gpu_models=...)` per distinct GPU model set of a GPU task; a
    CPU-only task may use any node (the protocol's filter ignores the model for it)."""
    task_cache: NDArray[np.int64]
    """Score-cache row per task: one per request shape (GPUs, milli, CPU, memory), the key
    `placement._score_cache` uses; the model set is not part of it (it only masks nodes)."""
    n_cache_rows: int

    @classmethod
    def build(cls, nodes: Sequence[Node], pods: PodTable) -> Workload:
        state = ClusterState.from_nodes(nodes)
        n_tasks = len(pods)
        task_gpus = np.zeros(n_tasks, dtype=np.int64)
        task_milli = np.zeros(n_tasks, dtype=np.int64)
        task_mask = np.empty(n_tasks, dtype=np.int64)
        task_cache = np.empty(n_tasks, dtype=np.int64)
        mask_ids: dict[frozenset[str], int] = {}
        masks: list[NDArray[np.bool_]] = []
        cache_ids: dict[tuple[int, int, int, int], int] = {}
        for i in range(n_tasks):
            gpus, milli = int(pods.num_gpu[i]), int(pods.gpu_milli[i])
            if gpus > 0 and milli > 0:
                task_gpus[i], task_milli[i] = gpus, milli
                models = _spec_models(pods.gpu_spec[i])
            else:
                models = frozenset()
            if models not in mask_ids:
                mask_ids[models] = len(masks)
                masks.append(state.node_mask(gpu_models=models))
            task_mask[i] = mask_ids[models]
            key = (int(task_gpus[i]), int(task_milli[i]), int(pods.cpu_milli[i]), int(pods.memory_mib[i]))
            task_cache[i] = cache_ids.setdefault(key, len(cache_ids))
        return cls(
            nodes=tuple(nodes),
            pods=pods,
            state=state,
            typical=typical_tasks(pods, state.model_codes),
            task_gpus=task_gpus,
            task_milli=task_milli,
            task_mask=task_mask,
            node_masks=np.ascontiguousarray(np.stack(masks) if masks else np.ones((1, state.n_nodes), np.bool_)),
            task_cache=task_cache,
            n_cache_rows=len(cache_ids),
        )


def run_inflation(workload: Workload, policy: PolicyCode, seed: int) -> RunResult:
    """One run of the protocol (workload × policy × seed), every task placed by `place_gang_kernel`."""
    from leitstand.scheduler.placement_reference import mix64
    from leitstand.scheduler.sim.inflation_kernels import run_stream_kernel

    started = time.perf_counter()
    state = workload.state.copy()
    total_gpus = int(state.gpu_count.sum())
    stream = build_stream(workload.pods, state.n_nodes, state.gpu_capacity_milli, seed)
    ctx = PolicyContext.build(state, policy, typical=workload.typical, node_rank=stream.node_rank, seed=seed)
    pods = workload.pods
    order = stream.order
    k = order.shape[0]
    arrived = np.zeros(k, dtype=np.int64)
    used = np.zeros(k, dtype=np.int64)
    placed = np.zeros(k, dtype=np.int64)
    # as placement.place_gang: a cache row per request shape (stamps 0 never match a node version),
    # no cache for Random, and Random's base = rand_base(seed, nonce) with the task index as nonce
    use_cache = ctx.code != PolicyCode.RANDOM
    rows = workload.n_cache_rows if use_cache else 1
    cache_score = np.zeros((rows, state.n_nodes), dtype=np.int64)
    cache_stamp = np.zeros((rows, state.n_nodes), dtype=np.int64)
    task_cache = workload.task_cache[order] if use_cache else np.zeros(k, dtype=np.int64)
    bad = run_stream_kernel(
        int(ctx.code),
        *state.kernel_arrays(),
        state.node_version,
        np.ascontiguousarray(ctx.node_rank, dtype=np.int64),
        np.ascontiguousarray(pods.cpu_milli[order]),
        np.ascontiguousarray(pods.memory_mib[order]),
        np.ascontiguousarray(workload.task_gpus[order]),
        np.ascontiguousarray(workload.task_milli[order]),
        np.ascontiguousarray(workload.task_mask[order]),
        np.ascontiguousarray(task_cache),
        workload.node_masks,
        cache_score,
        cache_stamp,
        use_cache,
        ctx.typ_cpu,
        ctx.typ_milli,
        ctx.typ_num,
        ctx.typ_model_ok,
        ctx.typ_weight,
        np.uint64(mix64(ctx.seed & _MASK64)),
        arrived,
        used,
        placed,
    )
    # the kernel stamped changed nodes from a local counter: take process-unique stamps again, so a
    # score cache shared with other copies of the state can never match a stale score
    state.refresh_aggregates()
    if bad >= 0:
        raise RuntimeError(f"policy {ctx.code.display_name} chose GPUs that do not fit task {int(bad)} (a bug)")
    curve = merge_allocation_curve(arrived, used, total_gpus)
    return RunResult(
        policy=ctx.code,
        seed=seed,
        arrived_milli=arrived,
        used_milli=used,
        placed_node=placed,
        allocation_pct_by_arrived=curve,
        seconds=time.perf_counter() - started,
    )


def run_policy(workload: Workload, policy: PolicyCode, seeds: Sequence[int]) -> PolicySummary:
    """All seeds of one policy; medians as the paper reports them."""
    started = time.perf_counter()
    runs = [run_inflation(workload, policy, seed) for seed in seeds]
    per_seed = [r.unallocated_pct_at_100 for r in runs]
    curve = [
        round(float(statistics.median(r.allocation_pct_by_arrived[k] for r in runs)), 3)
        for k in range(MAX_ARRIVED_PCT + 1)
    ]
    return PolicySummary(
        policy=policy,
        per_seed=per_seed,
        unallocated_pct_at_100=round(float(statistics.median(per_seed)), 3),
        allocation_pct_by_arrived=curve,
        seconds=time.perf_counter() - started,
        runs=runs,
    )
