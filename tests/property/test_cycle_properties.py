"""Invariants of one scheduling cycle, on generated clusters, queue trees and workloads (hypothesis).

Each example builds a small cluster (racks of nodes, one node pool possibly reserved to a queue),
a queue tree with quotas and limits, running jobs that respect those limits, and pending gangs; runs
`run_cycle`; applies the plan (evictions first, then bindings, in order) to a fresh `ClusterState`,
which raises on any over-commit; and checks what the plan must never do:

- no GPU above 1000 milli, no CPU or memory above capacity (the state's own checks);
- gangs all-or-nothing, required topology respected, reservations respected;
- node eligibility respected: every replica (also of a job moved by consolidation) on one of the
  job's `allowed_nodes` and in one of its `jurisdictions`;
- a job pending with NeverFits could not be placed on the empty cluster either;
- no queue above its limit at any level (unless it already was before the cycle);
- non-preemptible jobs only within quota (same proviso);
- every eviction names a preemptor that is bound in the same plan, and that preemptor's
  placement is valid in the post-eviction state;
- non-preemptible jobs and jobs younger than the minimum runtime are never evicted;
- every pending job is either bound or carries a reason; fair shares never exceed capacity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import hypothesis.strategies as st
from builders import make_job, make_node, make_queue
from hypothesis import HealthCheck, event, given, settings

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import (
    GPU_MILLI,
    EvictionKind,
    Job,
    Node,
    NodeName,
    Plan,
    Queue,
    QueueName,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Topology,
)
from leitstand.scheduler.placement import NEVER_FITS, GangPlacement, GangRequest, place_gang, replica_placements
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState

TOPOLOGY = Topology(levels=("rack",))
NOW = 10_000.0
MIN_RUNTIME = 60.0


@dataclass(frozen=True)
class World:
    snapshot: Snapshot
    config: SchedulerConfig


def _queue_tree(draw: st.DrawFn) -> tuple[Queue, ...]:
    """One department with 1–2 projects and 1–2 top-level projects; maybe one reserved to pool "res"."""
    queues: list[Queue] = []
    dept_quota = draw(st.sampled_from([0.0, 8.0, 16.0]))
    dept_limit = draw(st.sampled_from([None, dept_quota, dept_quota + 8.0]))
    queues.append(make_queue("dept", quota_gpus=dept_quota, limit_gpus=dept_limit))
    leaves = ["p1", "p2"][: draw(st.integers(1, 2))]
    tops = ["t1", "t2"][: draw(st.integers(1, 2))]
    reserved = draw(st.sampled_from([None, *tops]))
    for name in (*leaves, *tops):
        quota = draw(st.sampled_from([0.0, 2.0, 4.0, 8.0]))
        limit = draw(st.sampled_from([None, None, quota + 4.0, quota + 12.0]))
        queues.append(
            make_queue(
                name,
                "dept" if name in leaves else None,
                quota_gpus=quota,
                limit_gpus=limit,
                weight=draw(st.sampled_from([0.0, 1.0, 2.0])),
                priority=draw(st.sampled_from([100, 100, 50])),
                pool="res" if name == reserved else None,
            )
        )
    return tuple(queues)


def _eligibility(draw: st.DrawFn, names: list[str]) -> list[frozenset[NodeName] | None]:
    """The world's distinct `allowed_nodes` sets; jobs with equal constraints share one object, as
    the operator builds them. None (every node) is the most common."""
    subsets = [
        frozenset(NodeName(n) for n in draw(st.sets(st.sampled_from(names), min_size=size)))
        for size in (0, len(names) // 2)
    ]
    return [None] * 10 + subsets


def _job(
    draw: st.DrawFn,
    job_id: str,
    queue: str,
    created_at: float,
    allowed: list[frozenset[NodeName] | None] | None = None,
) -> Job:
    replicas = draw(st.integers(1, 3))
    fraction = draw(st.sampled_from([None, None, None, 0.5, 0.25]))
    gpus = 1 if fraction is not None else draw(st.sampled_from([1, 2, 4]))
    job: Job = make_job(
        job_id,
        queue,
        gpus,
        replicas,
        gpu=fraction,
        priority=draw(st.sampled_from([40, 50, 75, 125])),
        preemptible=draw(st.sampled_from([None, None, True, False])),
        required=draw(st.sampled_from([None, None, "rack", "node"])) if replicas > 1 else None,
        cpu_milli=draw(st.sampled_from([0, 8_000])),
        created_at=created_at,
        jurisdictions=draw(st.sampled_from([()] * 8 + [("de",), ("de", "fr")])),
    )
    if allowed is not None:
        job = dataclasses.replace(job, allowed_nodes=draw(st.sampled_from(allowed)))
    return job


@st.composite
def worlds(draw: st.DrawFn, borrowers: bool = False) -> World:
    """A random world; with `borrowers`, one leaf queue is idle and others fill the cluster (reclaim)."""
    n_nodes = draw(st.integers(2, 6))
    nodes: list[Node] = []
    for i in range(n_nodes):
        nodes.append(
            make_node(
                f"n{i}",
                draw(st.sampled_from([4, 8])),
                cpu_milli=32_000,
                pool="res" if i == n_nodes - 1 and draw(st.booleans()) else "default",
                jurisdiction=draw(st.sampled_from(["", "de", "fr"])),
                topology=(f"r{i // 2}",),
            )
        )
    allowed = _eligibility(draw, [n.name for n in nodes])
    queues = _queue_tree(draw)
    tree = build_queue_tree(queues)
    leaves = list(tree.leaves)
    idle = [draw(st.sampled_from(leaves))] if borrowers else leaves
    busy = [q for q in leaves if q not in idle] if borrowers else leaves
    reserved = {q.name: q.node_pool for q in queues}

    # Running jobs: placed one by one on a scratch state with the real placement, within limits.
    state = ClusterState.from_nodes(nodes, TOPOLOGY)
    policy = PolicyContext.build(state)
    used: dict[QueueName, int] = dict.fromkeys(tree.order, 0)
    running: list[RunningJob] = []
    for k in range(draw(st.integers(0, 16) if not borrowers else st.integers(8, 20))):
        queue = draw(st.sampled_from(busy))
        job = _job(draw, f"run-{k}", queue, created_at=float(k), allowed=allowed)
        path = tree.path(queue)
        if any((lim := tree.queues[q].limit_milli) is not None and used[q] + job.gpu_milli_total > lim for q in path):
            continue
        own = reserved[queue]
        excluded = tuple(p for p in {"res"} if p != own and "res" in reserved.values())
        if own is not None:
            job = dataclasses.replace(job, node_pool=own)
        request = GangRequest.for_job(state, job, excluded_pools=excluded)
        result = place_gang(state, request, policy)
        if not isinstance(result, GangPlacement):
            continue
        started_at = draw(st.sampled_from([0.0, 0.0, NOW - 10]))
        held = RunningJob(job, replica_placements(state, result), started_at=started_at)
        state.allocate_job(held)
        for q in path:
            used[q] += job.gpu_milli_total
        running.append(held)
    pending = [
        _job(draw, f"p-{k}", draw(st.sampled_from(idle)), 100.0 + k, allowed=allowed)
        for k in range(draw(st.integers(1, 8)))
    ]
    config = SchedulerConfig(
        min_runtime_seconds=MIN_RUNTIME,
        consolidation=draw(st.booleans()),
        max_consolidation_moves=draw(st.integers(1, 3)),
    )
    snapshot = Snapshot(
        nodes=tuple(nodes),
        queues=queues,
        pending=tuple(pending),
        running=tuple(running),
        topology=TOPOLOGY,
        now=NOW,
    )
    return World(snapshot, config)


def _allocated(tree_queues: tuple[Queue, ...], jobs: list[Job]) -> tuple[dict[QueueName, int], dict[QueueName, int]]:
    tree = build_queue_tree(tree_queues)
    total = dict.fromkeys(tree.order, 0)
    nonpreemptible = dict.fromkeys(tree.order, 0)
    for job in jobs:
        for q in tree.path(job.queue):
            total[q] += job.gpu_milli_total
            if not job.is_preemptible:
                nonpreemptible[q] += job.gpu_milli_total
    return total, nonpreemptible


def check_plan(world: World, plan: Plan) -> None:
    snap = world.snapshot
    nodes = {n.name: n for n in snap.nodes}
    pending = {j.id: j for j in snap.pending}
    running = {r.job.id: r for r in snap.running}
    moved = {e.job_id for e in plan.evictions if e.kind is EvictionKind.CONSOLIDATE}
    bound = {b.job_id: b for b in plan.bindings}

    # Apply the plan: evictions first, then bindings in order. ClusterState raises on any over-commit
    # (GPU above 1000 milli, CPU or memory above capacity), so this alone checks the capacity invariants.
    state = ClusterState.from_nodes(snap.nodes, snap.topology)
    for held in snap.running:
        state.allocate_job(held)
    evicted = {e.job_id for e in plan.evictions}
    assert len(evicted) == len(plan.evictions), "a job is evicted twice"
    for e in plan.evictions:
        assert e.job_id in running, f"evicted {e.job_id}, which is not running"
        state.release_job(running[e.job_id])
    for b in plan.bindings:
        job = pending[b.job_id] if b.job_id in pending else running[b.job_id].job
        assert b.job_id in pending or b.job_id in moved, f"bound {b.job_id}: neither pending nor moved"
        # Gangs: every replica placed, each with exactly its GPUs.
        assert len(b.placements) == job.replicas
        for p in b.placements:
            assert len(p.gpu_indices) == job.gpus
        state.allocate_job(RunningJob(job, b.placements))
        # Required topology.
        if job.required_level is not None:
            if job.required_level == "node":
                assert len({p.node for p in b.placements}) == 1
            else:
                level = snap.topology.level_index(job.required_level)
                assert len({nodes[p.node].topology[level] for p in b.placements}) == 1
        # Node eligibility: allowed nodes and data residency.
        for p in b.placements:
            if job.allowed_nodes is not None:
                assert p.node in job.allowed_nodes, f"{b.job_id} on {p.node}, outside its allowed nodes"
            if job.jurisdictions:
                assert nodes[p.node].jurisdiction in job.jurisdictions, f"{b.job_id} on {p.node}: wrong jurisdiction"
        # Reservations: a reserved pool serves only its queue.
        owner = {q.node_pool: q.name for q in snap.queues if q.node_pool is not None}
        for p in b.placements:
            pool = nodes[p.node].node_pool
            if pool in owner:
                assert owner[pool] == job.queue, f"{b.job_id} of {job.queue} runs in {pool}, reserved to {owner[pool]}"
            own = next(q.node_pool for q in snap.queues if q.name == job.queue)
            if own is not None:
                assert pool == own
    assert (state.gpu_free_milli >= 0).all() and (state.gpu_free_milli <= GPU_MILLI).all()

    # Evictions: a preemptor bound in the same plan; never non-preemptible or young jobs.
    for e in plan.evictions:
        victim = running[e.job_id]
        assert e.for_job in bound and e.for_job in pending, f"{e.job_id} evicted for {e.for_job}, which is not bound"
        assert victim.job.is_preemptible, f"non-preemptible {e.job_id} evicted"
        assert snap.now - victim.started_at >= world.config.min_runtime_seconds, f"young {e.job_id} evicted"
        if e.kind is EvictionKind.CONSOLIDATE:
            assert e.job_id in bound, f"moved {e.job_id} was not re-placed"
        else:
            assert e.job_id not in bound

    # Queues: limits and non-preemptible in-quota at every level (unless already broken before).
    before_jobs = [r.job for r in snap.running]
    after_jobs = [r.job for r in snap.running if r.job.id not in evicted or r.job.id in moved]
    after_jobs += [pending[j] for j in bound if j in pending]
    before, np_before = _allocated(snap.queues, before_jobs)
    after, np_after = _allocated(snap.queues, after_jobs)
    for q in snap.queues:
        if q.limit_milli is not None:
            assert after[q.name] <= max(q.limit_milli, before[q.name]), f"{q.name} above its limit"
        assert np_after[q.name] <= max(q.quota_milli, np_before[q.name]), f"{q.name}: non-preemptible over quota"

    # Every pending job is bound or has a reason; shares fit the capacity.
    reasons = {r.job_id: r for r in plan.pending}
    for job_id in pending:
        assert (job_id in bound) != (job_id in reasons), f"{job_id}: bound and pending, or neither"
    for r in plan.pending:
        assert r.code and r.message
    # NeverFits: not even the empty cluster holds the job (with the cycle's reservations applied).
    never = [pending[r.job_id] for r in plan.pending if r.code == NEVER_FITS]
    if never:
        empty = ClusterState.from_nodes(snap.nodes, snap.topology)
        policy = PolicyContext.build(empty)
        reserved = {q.name: q.node_pool for q in snap.queues}
        all_reserved = {p for p in reserved.values() if p is not None}
        for job in never:
            own = reserved[job.queue]
            if own is not None:
                job = dataclasses.replace(job, node_pool=own)
            excluded = tuple(sorted(p for p in all_reserved if p != own))
            result = place_gang(empty, GangRequest.for_job(empty, job, excluded_pools=excluded), policy)
            assert not isinstance(result, GangPlacement), f"{job.id}: NeverFits, but fits the empty cluster"
    capacity = sum(n.gpus for n in snap.nodes if n.schedulable) * GPU_MILLI
    tops = [q.name for q in snap.queues if q.parent is None]
    assert sum(plan.fair_share_milli[q] for q in tops) <= capacity + 1e-6


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_cycle_invariants(world: World) -> None:
    plan = run_cycle(world.snapshot, world.config)
    check_plan(world, plan)
    for kind in sorted({e.kind.value for e in plan.evictions}):
        event(f"eviction: {kind}")
    event(f"bound: {min(len(plan.bindings), 3)}")
    for code in sorted({r.code for r in plan.pending}):
        event(f"pending: {code}")
    if any(j.allowed_nodes is not None for j in world.snapshot.pending if j.id in {b.job_id for b in plan.bindings}):
        event("bound with allowed_nodes")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(borrowers=True))
def test_cycle_invariants_when_an_idle_queue_wakes_up(world: World) -> None:
    """Same invariants, in the situation reclaim exists for: others borrowed, an idle queue asks."""
    plan = run_cycle(world.snapshot, world.config)
    check_plan(world, plan)
    for kind in sorted({e.kind.value for e in plan.evictions}):
        event(f"eviction: {kind}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_cycle_with_maintained_state_matches_fresh_state(world: World) -> None:
    """Passing an incrementally maintained state gives the same plan and leaves that state untouched."""
    state = ClusterState.from_nodes(world.snapshot.nodes, world.snapshot.topology)
    for held in world.snapshot.running:
        state.allocate_job(held)
    free_before = state.gpu_free_milli.copy()
    with_state = run_cycle(world.snapshot, world.config, state=state)
    fresh = run_cycle(world.snapshot, world.config)
    assert (state.gpu_free_milli == free_before).all()
    assert with_state.bindings == fresh.bindings
    assert with_state.evictions == fresh.evictions
    assert with_state.pending == fresh.pending
