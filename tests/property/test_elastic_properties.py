"""Invariants of elastic gangs (`Job.min_replicas`) over one cycle, on generated worlds (hypothesis).

Each example: a few racks of 8-GPU nodes, two or three queues (quotas, maybe a limit), running jobs
(rigid or elastic, an elastic one at any size from its minimum to full, placed with the real
placement), pending jobs (rigid or elastic). One `run_cycle`; then the plan is applied to a fresh
`ClusterState` — replicas that stop first (evictions, shrinks), then replicas that start (bindings,
growths) — which raises on any over-commit. Checked:

- no GPU booked twice (above 1000 milli), by any mix of bindings, growths and shrinks;
- no elastic job below its minimum or above full size after the plan; rigid jobs all or nothing;
- a shrink removes only replicas the job holds, is made for a job bound in the same plan, and
  never touches a job that is also evicted, grown or too young to be a victim;
- growth only for running elastic jobs below full size.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import hypothesis.strategies as st
from builders import make_job, make_node, make_queue
from hypothesis import HealthCheck, given, settings

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import (
    Job,
    JobId,
    Plan,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Topology,
)
from leitstand.scheduler.placement import GangPlacement, GangRequest, place_gang, replica_placements
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState

TOPOLOGY = Topology(levels=("rack",))
NOW = 10_000.0
MIN_RUNTIME = 60.0


def _job(draw: st.DrawFn, job_id: str, queue: str, created_at: float) -> Job:
    replicas = draw(st.integers(1, 4))
    job = make_job(
        job_id,
        queue,
        draw(st.sampled_from([1, 2, 4, 8])),
        replicas,
        priority=draw(st.sampled_from([40, 50, 75, 125])),
        preemptible=draw(st.sampled_from([None, None, True])),
        required=draw(st.sampled_from([None, None, "rack"])) if replicas > 1 else None,
        created_at=created_at,
    )
    if draw(st.booleans()):
        job = dataclasses.replace(job, min_replicas=draw(st.integers(1, replicas)))
    return job


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Snapshot, SchedulerConfig]:
    n_nodes = draw(st.integers(2, 6))
    nodes = [make_node(f"n{i}", 8, topology=(f"r{i // 2}",)) for i in range(n_nodes)]
    names = ["a", "b", "c"][: draw(st.integers(2, 3))]
    queues = tuple(
        make_queue(
            q,
            quota_gpus=draw(st.sampled_from([0.0, 4.0, 8.0, 16.0])),
            limit_gpus=draw(st.sampled_from([None, None, 16.0, 24.0])),
        )
        for q in names
    )
    state = ClusterState.from_nodes(nodes, TOPOLOGY)
    policy = PolicyContext.build(state)
    running: list[RunningJob] = []
    for k in range(draw(st.integers(0, 12))):
        job = _job(draw, f"run-{k}", draw(st.sampled_from(names)), float(k))
        size = job.replicas if job.min_replicas is None else draw(st.integers(job.min_replicas, job.replicas))
        request = dataclasses.replace(GangRequest.for_job(state, job), replicas=size)
        result = place_gang(state, request, policy)
        if not isinstance(result, GangPlacement):
            continue
        held = RunningJob(job, replica_placements(state, result), draw(st.sampled_from([0.0, 0.0, NOW - 10])))
        state.allocate_job(held)
        running.append(held)
    pending = tuple(
        _job(draw, f"p-{k}", draw(st.sampled_from(names)), 100.0 + k) for k in range(draw(st.integers(0, 6)))
    )
    config = SchedulerConfig(min_runtime_seconds=MIN_RUNTIME, consolidation=draw(st.booleans()))
    snapshot = Snapshot(
        nodes=tuple(nodes), queues=queues, pending=pending, running=tuple(running), topology=TOPOLOGY, now=NOW
    )
    return snapshot, config


def _apply(snapshot: Snapshot, plan: Plan) -> dict[JobId, int]:
    """Apply the plan on a fresh state (raises StateError on any over-commit); replicas per job after it."""
    state = ClusterState.from_nodes(snapshot.nodes, snapshot.topology)
    held = {r.job.id: r for r in snapshot.running}
    jobs = {**{j.id: j for j in snapshot.pending}, **{r.job.id: r.job for r in snapshot.running}}
    for r in snapshot.running:
        state.allocate_job(r)
    size = {r.job.id: len(r.placements) for r in snapshot.running}
    for e in plan.evictions:
        state.release_job(held[e.job_id])
        size[e.job_id] = 0
    for s in plan.shrinks:
        left = Counter(held[s.job_id].placements)
        left.subtract(s.placements)
        assert min(left.values()) >= 0, f"{s.job_id}: shrink removes replicas it does not hold: {s.placements}"
        state.release_job(RunningJob(jobs[s.job_id], s.placements))
        size[s.job_id] -= len(s.placements)
    for b in plan.bindings:
        state.allocate_job(RunningJob(jobs[b.job_id], b.placements))
        size[b.job_id] = len(b.placements)
    for g in plan.grows:
        state.allocate_job(RunningJob(jobs[g.job_id], g.placements))
        size[g.job_id] += len(g.placements)
    return size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_elastic_plans_never_double_book_or_go_below_the_minimum(world: tuple[Snapshot, SchedulerConfig]) -> None:
    snapshot, config = world
    plan = run_cycle(snapshot, config)
    size = _apply(snapshot, plan)
    jobs = {**{j.id: j for j in snapshot.pending}, **{r.job.id: r.job for r in snapshot.running}}
    for job_id, count in size.items():
        job = jobs[job_id]
        if count == 0:
            continue  # evicted whole (or moved and re-bound: then its binding set the count)
        low = job.replicas if job.min_replicas is None else job.min_replicas
        assert low <= count <= job.replicas, f"{job_id}: {count} replicas, allowed {low}..{job.replicas}"

    running = {r.job.id: r for r in snapshot.running}
    bound = {b.job_id for b in plan.bindings}
    evicted = {e.job_id for e in plan.evictions}
    grown = {g.job_id for g in plan.grows}
    for s in plan.shrinks:
        held = running[s.job_id]
        assert held.job.min_replicas is not None
        assert s.for_job in bound, f"{s.job_id} shrunk for {s.for_job}, which is not bound"
        assert s.job_id not in evicted | grown
        assert NOW - held.started_at >= MIN_RUNTIME, f"{s.job_id} shrunk before its minimum runtime"
    for g in plan.grows:
        held = running[g.job_id]
        assert held.job.min_replicas is not None and len(held.placements) < held.job.replicas
        assert g.job_id not in evicted
