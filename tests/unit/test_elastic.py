"""Elastic gangs (`Job.min_replicas`) in the scheduling core: what the scenario files cannot say.

The scenarios in tests/scenarios/elastic-*.yaml show the rules on small clusters (admitted at the
minimum, growth, shrink by reclaim and by preemption, never below the minimum, rigid unchanged);
here: validation, the statement's partial evictions and their rollback, limits and quotas charged
for the replicas a job starts or grows with, growth inside the required domain, and the plan's
shape (bindings, grows, shrinks).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from builders import make_job, make_node, make_queue, make_snapshot

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import (
    EvictionKind,
    Job,
    JobId,
    NodeName,
    Plan,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    SchedulerConfig,
    Topology,
)
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import QueueAccounting, Statement

NOW = 10_000.0


def elastic(job: Job, low: int) -> Job:
    return replace(job, min_replicas=low)


def held(job: Job, *nodes: str, gpus_each: int | None = None, started_at: float = 0.0) -> RunningJob:
    """`job` running with one replica per entry of `nodes`, GPUs numbered in order per node."""
    per = job.gpus if gpus_each is None else gpus_each
    used: dict[str, int] = {}
    placements = []
    for node in nodes:
        first = used.get(node, 0)
        placements.append(ReplicaPlacement(NodeName(node), tuple(range(first, first + per))))
        used[node] = first + per
    return RunningJob(job, tuple(placements), started_at)


def nodes(count: int, gpus: int = 8, racks: int = 1) -> list:  # type: ignore[type-arg]
    per_rack = count // racks
    return [make_node(f"n{i}", gpus, topology=(f"r{i // per_rack}",)) for i in range(count)]


RACKS = Topology(levels=("rack",))


def cycle(plan_nodes: list, queues: list, pending=(), running=(), **config: object) -> Plan:  # type: ignore[no-untyped-def,type-arg]
    snap = make_snapshot(plan_nodes, queues, pending=pending, running=running, topology=RACKS, now=NOW)
    return run_cycle(snap, SchedulerConfig(**config))  # type: ignore[arg-type]


# --- the model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("low", [0, 5, -1])
def test_min_replicas_outside_one_to_replicas_is_rejected_naming_the_field(low: int) -> None:
    with pytest.raises(ValueError, match=r"job j: min_replicas must be an integer from 1 to replicas \(4\)"):
        Job(id=JobId("j"), queue=QueueName("a"), replicas=4, min_replicas=low)


def test_a_rigid_job_is_charged_its_whole_gang_whatever_it_holds() -> None:
    """Unchanged for jobs without a minimum: the operator may report a rigid gang with missing pods,
    and it is charged (and treated) as the whole gang, as before."""
    job = make_job("r", gpus=4, replicas=3)
    assert held(job, "n0").gpu_milli_total == 12_000
    assert held(elastic(job, 1), "n0").gpu_milli_total == 4_000


# --- the statement: parts of a job ------------------------------------------------------------------


def test_evicting_part_of_an_elastic_job_keeps_the_rest_and_rolls_back_exactly() -> None:
    job = elastic(make_job("e", gpus=4, replicas=4), 1)
    running = held(job, "n0", "n0", "n1")
    state = ClusterState.from_nodes(nodes(2), RACKS)
    state.allocate_job(running)
    tree = build_queue_tree([make_queue("a")])
    acc = QueueAccounting.empty(tree)
    stmt = Statement(state=state, accounting=acc)
    acc.add(job, 1, running.gpu_milli_total)
    stmt.running[job.id] = running
    free_before = state.gpu_free_milli.copy()

    mark = stmt.checkpoint()
    part = RunningJob(job, (running.placements[2],), 0.0)
    stmt.evict(part, EvictionKind.RECLAIM, JobId("x"), "test")
    assert stmt.running[job.id].placements == running.placements[:2]
    assert acc.allocated_milli[QueueName("a")] == 8_000
    assert stmt.evictions() == ()
    (shrink,) = stmt.shrinks()
    assert shrink.job_id == "e" and shrink.placements == (running.placements[2],)

    stmt.restore(part)
    assert len(stmt.running[job.id].placements) == 3
    stmt.rollback(mark)
    assert stmt.running[job.id] is running
    assert acc.allocated_milli[QueueName("a")] == 12_000
    assert np.array_equal(state.gpu_free_milli, free_before)


# --- admission at the minimum ------------------------------------------------------------------------


def test_admitted_with_as_many_replicas_as_the_queue_limit_allows() -> None:
    """Limits are charged for the replicas it starts with: 8 GPUs of headroom → 2 of 4 replicas."""
    job = elastic(make_job("e", gpus=4, replicas=4), 1)
    plan = cycle(nodes(4), [make_queue("a", limit_gpus=8)], pending=[job])
    (binding,) = plan.bindings
    assert len(binding.placements) == 2
    assert plan.pending == ()


def test_a_non_preemptible_elastic_job_starts_with_the_replicas_its_quota_covers() -> None:
    job = elastic(make_job("e", gpus=4, replicas=4, priority=150), 1)
    plan = cycle(nodes(4), [make_queue("a", quota_gpus=12)], pending=[job])
    (binding,) = plan.bindings
    assert len(binding.placements) == 3


def test_below_its_minimum_it_waits_with_the_reason_of_its_minimum() -> None:
    job = elastic(make_job("e", gpus=4, replicas=4), 3)
    plan = cycle(nodes(4), [make_queue("a", limit_gpus=8)], pending=[job])
    assert plan.bindings == ()
    (reason,) = plan.pending
    assert reason.code == "QueueAtLimit"


def test_a_required_domain_holds_the_replicas_it_starts_with() -> None:
    """Two racks of two nodes; rack r0 has 12 free GPUs, r1 8: a rack-bound elastic gang of 4 × 4
    (minimum 2) starts with 3 replicas, all in r0."""
    cluster = nodes(4, racks=2)
    busy = held(make_job("busy", gpus=4, replicas=1), "n0")
    other = held(make_job("other", gpus=8, replicas=1), "n2")
    job = elastic(make_job("e", gpus=4, replicas=4, required="rack"), 2)
    plan = cycle(cluster, [make_queue("a")], pending=[job], running=[busy, other])
    (binding,) = plan.bindings
    assert len(binding.placements) == 3
    assert {p.node for p in binding.placements} <= {"n0", "n1"}


# --- growth -----------------------------------------------------------------------------------------


def test_growth_is_listed_apart_from_bindings_and_respects_the_limit() -> None:
    job = elastic(make_job("e", gpus=4, replicas=4), 1)
    running = held(job, "n0")
    plan = cycle(nodes(4), [make_queue("a", limit_gpus=12)], running=[running])
    assert plan.bindings == ()
    (growth,) = plan.grows
    assert growth.job_id == "e"
    assert len(growth.placements) == 2  # 4 held + 8 more = the limit of 12
    taken = {(p.node, g) for p in running.placements for g in p.gpu_indices}
    assert not taken & {(p.node, g) for p in growth.placements for g in p.gpu_indices}


def test_growth_stays_in_the_domain_of_the_required_level() -> None:
    """Rack-bound gang with one replica in r0: it grows only inside r0, though r1 is empty."""
    cluster = nodes(4, racks=2)
    job = elastic(make_job("e", gpus=8, replicas=4, required="rack"), 1)
    blocker = held(make_job("blocker", gpus=8), "n1")
    plan = cycle(cluster, [make_queue("a")], running=[held(job, "n0"), blocker])
    assert plan.grows == ()
    plan = cycle(cluster, [make_queue("a")], running=[held(job, "n0")])
    (growth,) = plan.grows
    assert [p.node for p in growth.placements] == ["n1"]


def test_growth_never_evicts_and_yields_to_pending_jobs() -> None:
    """A full cluster: the elastic job below full size does not grow, and nobody is evicted for it."""
    job = elastic(make_job("e", gpus=8, replicas=4), 1)
    others = [held(make_job(f"o{i}", gpus=8, priority=10), f"n{i}") for i in (1, 2, 3)]
    plan = cycle(nodes(4), [make_queue("a")], running=[held(job, "n0", started_at=5_000.0), *others])
    assert plan.grows == () and plan.evictions == () and plan.shrinks == ()


# --- shrink before evict -----------------------------------------------------------------------------


def test_shrink_reason_says_how_many_replicas_stop_and_how_many_keep_running() -> None:
    job = elastic(make_job("low", gpus=4, replicas=4, priority=40), 2)
    running = held(job, "n0", "n0", "n1", "n1")
    high = make_job("high", gpus=8, priority=75, preemptible=True)
    plan = cycle(nodes(2), [make_queue("a", quota_gpus=16)], pending=[high], running=[running])
    (shrink,) = plan.shrinks
    assert shrink.kind is EvictionKind.PREEMPT and shrink.for_job == "high"
    assert len(shrink.placements) == 2 and len({p.node for p in shrink.placements}) == 1
    assert "preempted by job high" in shrink.reason
    assert "shrunk from 4 to 2 replicas (its minimum is 2, full size 4)" in shrink.reason
    assert plan.evictions == () and plan.grows == ()


def test_one_elastic_job_can_be_shrunk_for_two_waiting_jobs_in_one_cycle() -> None:
    job = elastic(make_job("low", gpus=8, replicas=4, priority=40), 1)
    running = held(job, "n0", "n1", "n2", "n3")
    waiting = [make_job(f"h{i}", gpus=8, priority=75, preemptible=True, created_at=i) for i in range(2)]
    plan = cycle(nodes(4), [make_queue("a", quota_gpus=32)], pending=waiting, running=[running])
    assert {b.job_id for b in plan.bindings} == {"h0", "h1"}
    assert sorted(s.for_job for s in plan.shrinks) == ["h0", "h1"]
    assert sum(len(s.placements) for s in plan.shrinks) == 2
    assert plan.evictions == ()


def test_a_job_too_young_to_be_a_victim_is_not_shrunk_either() -> None:
    job = elastic(make_job("low", gpus=4, replicas=4, priority=40), 2)
    running = held(job, "n0", "n0", "n1", "n1", started_at=NOW - 10)
    high = make_job("high", gpus=8, priority=75, preemptible=True)
    plan = cycle(nodes(2), [make_queue("a", quota_gpus=16)], pending=[high], running=[running])
    assert plan.shrinks == () and plan.evictions == () and plan.bindings == ()


def test_shrinking_keeps_in_quota_work_when_reclaiming() -> None:
    """team-b's elastic job holds 24 GPUs with a quota of 16: reclaim takes at most 8 of them (one
    replica), never its in-quota GPUs, so team-a's 16-GPU job cannot start by shrinking it; the only
    other way, evicting it whole, would take in-quota work too, so nothing happens."""
    job = elastic(make_job("b", queue="b", gpus=8, replicas=3), 1)
    wanted = make_job("a-big", queue="a", gpus=8, replicas=2)
    queues = [make_queue("a", quota_gpus=16), make_queue("b", quota_gpus=16)]
    plan = cycle(nodes(3), queues, pending=[wanted], running=[held(job, "n0", "n1", "n2")])
    assert plan.shrinks == () and plan.evictions == () and plan.bindings == ()
    one = make_job("a-one", queue="a", gpus=8)
    plan = cycle(nodes(3), queues, pending=[one], running=[held(job, "n0", "n1", "n2")])
    (shrink,) = plan.shrinks
    assert shrink.kind is EvictionKind.RECLAIM and len(shrink.placements) == 1


def test_consolidation_moves_an_elastic_job_at_the_size_it_runs_with() -> None:
    """An elastic job (full size 4, minimum 1) runs 2 one-GPU replicas, on n0 and n1; n1 and n2 are
    otherwise taken by non-preemptible work, all but two GPUs of n2. An 8-GPU job
    needs n0: the elastic job is moved with its 2 replicas (there is room for 3, not for 4)."""
    job = elastic(make_job("e", gpus=1, replicas=4), 1)
    running = RunningJob(job, (ReplicaPlacement(NodeName("n0"), (0,)), ReplicaPlacement(NodeName("n1"), (0,))), 0.0)
    fill1 = RunningJob(
        make_job("fill1", gpus=7, priority=150), (ReplicaPlacement(NodeName("n1"), tuple(range(1, 8))),), 0.0
    )
    fill2 = RunningJob(make_job("fill2", gpus=6, priority=150), (ReplicaPlacement(NodeName("n2"), tuple(range(6))),))
    big = make_job("big", gpus=8)
    plan = cycle(nodes(3), [make_queue("a", quota_gpus=24)], pending=[big], running=[running, fill1, fill2])
    assert [(e.job_id, e.kind) for e in plan.evictions] == [("e", EvictionKind.CONSOLIDATE)]
    bound = {b.job_id: b for b in plan.bindings}
    assert [p.node for p in bound["big"].placements] == ["n0"]
    assert len(bound["e"].placements) == 2
    assert plan.grows == ()


def test_growth_goes_first_to_the_queue_furthest_below_its_fair_share() -> None:
    """One free node, two elastic jobs below full size: team b (8 of its 16-GPU fair share) grows,
    team a (at its fair share of 16) does not — the order allocate uses."""
    ea = elastic(make_job("ea", queue="a", gpus=8, replicas=4, created_at=0.0), 1)
    eb = elastic(make_job("eb", queue="b", gpus=8, replicas=4, created_at=1.0), 1)
    queues = [make_queue("a", quota_gpus=16), make_queue("b", quota_gpus=16)]
    plan = cycle(nodes(4), queues, running=[held(ea, "n0", "n1"), held(eb, "n2")])
    assert [(g.job_id, [p.node for p in g.placements]) for g in plan.grows] == [("eb", ["n3"])]


def test_replicas_a_running_elastic_job_lacks_count_toward_its_models_demand() -> None:
    """Per-model fair share (queues set quotas per GPU model): a B200 job running 1 of its 2 replicas
    still wants the other 8 B200 GPUs, so its queue's B200 demand is 16, not the 8 it holds. Team b
    wants 4; of the 16 B200 GPUs team a's fair share is the other 12."""
    from leitstand.scheduler.model import ModelQuota

    def with_b200(queue, milli: int):  # type: ignore[no-untyped-def]
        return replace(queue, model_quotas=(ModelQuota("B200", milli),))

    e = elastic(make_job("e", queue="a", gpus=8, replicas=2, models=["B200"]), 1)
    queues = [with_b200(make_queue("a", quota_gpus=4), 4000), with_b200(make_queue("b", quota_gpus=4), 4000)]
    cluster = [make_node("b0", 8, model="B200", topology=("r0",)), make_node("b1", 8, model="B200", topology=("r0",))]
    wants = make_job("w", queue="b", gpus=4, models=["B200"])
    plan = cycle(cluster, queues, pending=[wants], running=[held(e, "b0")])
    assert plan.model_fair_share_milli["B200"] == {QueueName("a"): 12000, QueueName("b"): 4000}
    assert plan.fair_share_milli[QueueName("a")] == 12000  # the totals counted it already


def test_whole_jobs_beside_spare_replicas_come_nearest_first_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The combined shrink-and-evict search builds a pool per search, so it takes at most MAX_BESIDE
    whole jobs: those on the spare replica's node first, then its rack, then (a gang with no required
    level also looks anywhere) the rest, each group in cost order."""
    from leitstand.scheduler.actions import context as context_module
    from leitstand.scheduler.actions.context import CycleContext
    from leitstand.scheduler.fairshare import build_queue_tree
    from leitstand.scheduler.placement import GangRequest
    from leitstand.scheduler.policies import PolicyContext
    from leitstand.scheduler.victims import VictimPool

    cluster = nodes(4, racks=2)  # r0: n0, n1; r1: n2, n3
    state = ClusterState.from_nodes(cluster, RACKS)
    e = elastic(make_job("e", queue="a", gpus=4, replicas=2), 1)

    def on(job: Job, node: str, first: int) -> RunningJob:
        return RunningJob(job, (ReplicaPlacement(NodeName(node), tuple(range(first, first + 4))),), 0.0)

    others = [  # e holds GPUs 0-3 of n0 and of n2
        on(make_job("far", queue="a", gpus=4, priority=10), "n2", 4),
        on(make_job("rack", queue="a", gpus=4, priority=20), "n1", 0),
        on(make_job("same", queue="a", gpus=4, priority=30), "n0", 4),
        on(make_job("rack2", queue="a", gpus=4, priority=5), "n1", 4),
    ]
    running = [held(e, "n0", "n2"), *others]
    for h in running:
        state.allocate_job(h)
    tree = build_queue_tree([make_queue("a")])
    stmt = Statement(state=state, accounting=QueueAccounting.empty(tree))
    for h in running:
        stmt.running[h.job.id] = h
    snap = make_snapshot(cluster, [make_queue("a")], topology=RACKS, now=NOW)
    ctx = CycleContext(snapshot=snap, config=SchedulerConfig(), tree=tree, shares=None,  # type: ignore[arg-type]
                       policy=PolicyContext.build(state), stmt=stmt, pending_by_queue={}, reserved_pools={},
                       all_reserved=frozenset())
    pool = VictimPool(stmt, others)
    piece = RunningJob(e, (running[0].placements[0],), 0.0)  # the spare replica on n0
    gang = GangRequest.for_job(state, make_job("g", queue="a", gpus=4, replicas=3))
    names = [v.job.id for v in ctx._whole_beside(pool, pool.alive, [piece], gang)]
    assert names == ["same", "rack2", "rack", "far"]
    in_rack = GangRequest.for_job(state, make_job("g", queue="a", gpus=4, replicas=3, required="rack"))
    assert [v.job.id for v in ctx._whole_beside(pool, pool.alive, [piece], in_rack)] == ["same", "rack2", "rack"]
    monkeypatch.setattr(context_module, "MAX_BESIDE", 2)
    assert [v.job.id for v in ctx._whole_beside(pool, pool.alive, [piece], gang)] == ["same", "rack2"]
