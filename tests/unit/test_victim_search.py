"""The victim search's budgets and shortcuts: what a tenant sees when the budget runs out, and
proofs that the shortcuts (hopeless-domain memo, un-evicting during pruning) change no decision."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from builders import make_cluster, make_job, make_node, make_queue, make_running, make_snapshot
from numpy.typing import NDArray

from leitstand.scheduler.actions import context
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import EvictionKind, Job, JobId, QueueName, RunningJob, SchedulerConfig, Snapshot
from leitstand.scheduler.placement import GangRequest
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.running import VictimSlots
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import QueueAccounting, Statement
from leitstand.scheduler.victims import VictimChoice, VictimPool, choose_victims, move_cost, victim_cost


def _borrowed_cluster(waiting: int) -> tuple[Snapshot, list[str]]:
    """team-b borrows 4 nodes; team-a (quota 32) has `waiting` one-node jobs that must reclaim."""
    queues = [make_queue("team-a", quota_gpus=32), make_queue("team-b", quota_gpus=0)]
    nodes = [make_node(f"n{i}", 8) for i in range(4)]
    running = [make_running(make_job(f"b{i}", "team-b", 8), [(f"n{i}", range(8))]) for i in range(4)]
    pending = [make_job(f"a{i}", "team-a", 8, created_at=float(i)) for i in range(waiting)]
    return make_snapshot(nodes, queues, pending, running, now=1000), [j.id for j in pending]


def test_jobs_the_search_budget_cuts_off_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "VICTIM_SEARCHES_PER_ACTION", 1)
    snap, ids = _borrowed_cluster(3)
    stats: dict[str, int] = {}
    plan = run_cycle(snap, SchedulerConfig(consolidation=False), stats=stats)
    assert [b.job_id for b in plan.bindings] == [ids[0]]  # the one search the budget allows
    reasons = {p.job_id: p for p in plan.pending}
    for job_id in ids[1:]:
        reason = reasons[JobId(job_id)]
        assert reason.code == context.Code.SEARCH_BUDGET
        assert "budget of 1 victim searches" in reason.message
        assert "searched again next cycle" in reason.message
        assert "Insufficient" in reason.message  # what it waits for is kept
    assert stats["reclaim_searches"] == 1 and stats["reclaim_budget_cut"] == 2


def test_with_budget_enough_the_same_jobs_reclaim() -> None:
    snap, ids = _borrowed_cluster(3)
    plan = run_cycle(snap, SchedulerConfig(consolidation=False))
    assert sorted(b.job_id for b in plan.bindings) == sorted(ids)
    assert all(e.kind is EvictionKind.RECLAIM for e in plan.evictions)
    assert not any(p.code == context.Code.SEARCH_BUDGET for p in plan.pending)


def test_budget_reason_is_an_ordinary_reason_code() -> None:
    # Not a policy block: the next actions (and the next cycle) may still help the job.
    assert context.Code.SEARCH_BUDGET == "SearchBudgetExhausted"
    assert context.Code.SEARCH_BUDGET not in context.POLICY_BLOCKS


def _rack_state() -> tuple[Statement, ClusterState, list[RunningJob]]:
    nodes, topology = make_cluster(4, 8, racks=2)  # r0: n0, n1; r1: n2, n3
    state = ClusterState.from_nodes(nodes, topology)
    running = [
        make_running(make_job("small-r0", "b", 4, priority=10), [("n0", range(4))]),
        make_running(make_job("big-r0", "b", 8, priority=90, preemptible=True), [("n1", range(8))]),
        make_running(make_job("r1-a", "b", 8, priority=30), [("n2", range(8))]),
        make_running(make_job("r1-b", "b", 8, priority=30), [("n3", range(8))]),
    ]
    for held in running:
        state.allocate_job(held)
    tree = build_queue_tree([make_queue("a"), make_queue("b")])
    return Statement(state=state, accounting=QueueAccounting.empty(tree)), state, running


def test_hopeless_domain_is_skipped_for_the_same_shape_until_a_move_touches_it() -> None:
    nodes, topology = make_cluster(4, 8, racks=2)  # r0: n0, n1; r1: n2, n3
    state = ClusterState.from_nodes(nodes, topology)
    cpu = int(state.cpu_capacity_milli[0])
    small = make_running(make_job("small-r0", "b", 4, priority=10), [("n0", range(4))])
    # Not a candidate: holds half of n1's GPUs and nearly all its CPU.
    blocker = make_running(make_job("blocker", "b", 4, priority=125, cpu_milli=cpu - 1000), [("n1", range(4))])
    r1 = [make_running(make_job(f"r1-{k}", "b", 8, priority=30), [(f"n{k}", range(8))]) for k in (2, 3)]
    for held in [small, blocker, *r1]:
        state.allocate_job(held)
    tree = build_queue_tree([make_queue("a"), make_queue("b")])
    stmt = Statement(state=state, accounting=QueueAccounting.empty(tree))
    policy = PolicyContext.build(state)
    pool = VictimPool(stmt, [small, *r1])
    # Two replicas of 4 GPUs, each needing more than half a node's CPU: rack r0 passes the count of
    # GPU slots (n0: 8 once small-r0 is gone, n1: 4) but holds one replica at most.
    job = make_job("gang", "a", 4, replicas=2, required="rack", cpu_milli=cpu // 2 + 1000)
    request = GangRequest.for_job(state, job)
    only_small = pool.of_queue(QueueName("b")) & (pool.priority < 20)

    def search(eligible: NDArray[np.bool_], tally: dict[str, int]) -> VictimChoice | None:
        # With an admissibility filter (reclaim and preempt have one) the memo is what skips the rack;
        # without one the CPU bound leaves it out before any search (checked at the end).
        return choose_victims(
            stmt, request, pool, policy, max_victims=8, for_job=JobId("g"), eligible=eligible, tally=tally,
            admissible=lambda victim, taken: True,
        )

    unfiltered: dict[str, int] = {}
    assert choose_victims(
        stmt, request, pool, policy, max_victims=8, for_job=JobId("g"), eligible=only_small, tally=unfiltered
    ) is None
    assert unfiltered.get("domains", 0) == 0, "CPU left for one replica only: rack r0 is not searched"
    tally: dict[str, int] = {}
    assert search(only_small, tally) is None
    assert tally["domains"] == 1 and not tally.get("domains_skipped")
    tally = {}
    assert search(only_small, tally) is None
    assert tally.get("domains", 0) == 0 and tally["domains_skipped"] == 1, "same shape, same candidates: skipped"
    pool.changed([state.node_index["n1"]])  # a committed move in rack r0 invalidates the memo
    tally = {}
    assert search(only_small, tally) is None
    assert tally["domains"] == 1 and not tally.get("domains_skipped")
    # More candidates than the failed search had (rack r1's): not covered by the memo, and r1 works.
    found = search(pool.of_queue(QueueName("b")), {})
    assert found is not None
    assert sorted(v.job.id for v in found.victims) == ["r1-2", "r1-3"]


def test_pruning_leaves_exactly_the_state_the_caller_replays() -> None:
    stmt, state, running = _rack_state()
    policy = PolicyContext.build(state)
    pool = VictimPool(stmt, running)
    request = GangRequest.for_job(state, make_job("gang", "a", 8, replicas=2, required="rack"))
    free = state.gpu_free_milli.copy()
    choice = choose_victims(stmt, request, pool, policy, max_victims=8, for_job=JobId("g"))
    assert choice is not None
    assert np.array_equal(state.gpu_free_milli, free), "the search rolls everything back"
    assert sorted(v.job.id for v in choice.victims) == ["r1-a", "r1-b"]
    # Replaying exactly the chosen evictions makes the returned placement valid.
    for victim in choice.victims:
        stmt.evict(victim, EvictionKind.RECLAIM, JobId("g"), "test")
    stmt.bind(make_job("gang", "a", 8, replicas=2, required="rack"), choice.request, choice.placement)


def test_restore_is_undone_by_rollback() -> None:
    stmt, state, running = _rack_state()
    held = running[2]
    free = state.gpu_free_milli.copy()
    mark = stmt.checkpoint()
    stmt.evict(held, EvictionKind.PREEMPT, JobId("x"), "what-if")
    inner = stmt.checkpoint()
    stmt.restore(held)
    assert np.array_equal(state.gpu_free_milli, free)
    assert stmt.nodes_since(inner) == {state.node_index["n2"]}
    stmt.rollback(inner)
    assert state.gpu_free_milli[state.node_index["n2"]].tolist() == [1000] * 8
    stmt.rollback(mark)
    assert np.array_equal(state.gpu_free_milli, free)
    assert stmt.bindings() == () and stmt.evictions() == ()


def test_pool_order_is_the_cost_order_for_both_keys() -> None:
    stmt, _, _ = _rack_state()
    rng = np.random.default_rng(5)
    candidates = [
        make_running(
            make_job(f"j{i:03d}", "b", int(rng.choice([1, 2, 4])), priority=int(rng.choice([10, 50]))),
            [("n0", [0])],
            started_at=float(rng.choice([0.0, 5.0, 7.5])),
        )
        for i in range(60)
    ]
    for key in (victim_cost, move_cost):
        pool = VictimPool(stmt, candidates, key=key)
        assert [v.job.id for v in pool.ordered] == [v.job.id for v in sorted(candidates, key=key)]


def _pool_view(pool: VictimPool) -> tuple[object, ...]:
    """What decisions read from a pool (queue codes compared by the queue they name)."""
    codes = {code: queue for queue, code in pool.queue_index.items()}
    return (
        [id(v) for v in pool.ordered],
        pool.rank,
        pool.row_node.tolist(),
        pool.row_job.tolist(),
        pool.row_count.tolist(),
        pool.row_start.tolist(),
        pool.row_gpus.tolist(),
        pool.priority.tolist(),
        [codes[c] for c in pool.queue_code.tolist()],
    )


def test_a_pool_kept_between_cycles_equals_a_fresh_pool_as_jobs_end_start_and_move() -> None:
    """`VictimPool(kept=...)` takes the last pool's arrays for the same job objects and merges in the
    rest: over 30 "cycles" where jobs end, start, and move (a new object for the same id), every pool
    is the fresh pool of the same candidates, for both cost keys. Ids of several lengths (the merge
    compares ids stored at different widths) and many equal costs (ties broken by id)."""
    stmt, _, _ = _rack_state()
    rng = np.random.default_rng(17)
    serial = 0

    def started(job_id: str) -> RunningJob:
        replicas = int(rng.choice([1, 2, 3]))
        nodes = [f"n{int(n)}" for n in rng.choice(4, size=replicas, replace=False)]
        return make_running(
            make_job(job_id, str(rng.choice(["a", "b", "c"])), int(rng.choice([1, 2, 4])),
                     replicas=replicas, priority=int(rng.choice([10, 50]))),
            [(node, [int(rng.integers(0, 8))]) for node in nodes],
            started_at=float(rng.choice([0.0, 5.0, 7.5])),
        )

    def name(serial: int) -> str:
        return f"job-{serial}-of-a-longer-name" if serial % 7 == 0 else f"j{serial}"

    running: dict[str, RunningJob] = {}
    for _ in range(40):
        serial += 1
        running[name(serial)] = started(name(serial))
    for key in (victim_cost, move_cost):
        kept: dict[object, object] = {}
        for cycle in range(30):
            ids = list(running)
            ended = rng.choice(ids, size=min(len(ids), int(rng.integers(0, 6))), replace=False)
            for job_id in ended.tolist():
                del running[job_id]
            moved = rng.choice(list(running), size=min(len(running), int(rng.integers(0, 3))), replace=False)
            for job_id in moved.tolist():
                running[job_id] = started(job_id)  # the same id, a new object
            for _ in range(int(rng.integers(0, 6))):
                serial += 1
                running[name(serial)] = started(name(serial))  # started
            if cycle == 12:
                running = {job_id: started(job_id) for job_id in running}  # all new: built afresh
            candidates = list(running.values())
            rng.shuffle(candidates)
            pool = VictimPool(stmt, candidates, key=key, kept=kept)
            assert _pool_view(pool) == _pool_view(VictimPool(stmt, candidates, key=key))
            assert [pool.entry(v) for v in pool.ordered] == list(range(len(candidates)))
            assert [v.job.id for v in pool.ordered] == [v.job.id for v in sorted(candidates, key=key)]
        assert kept  # the last pool's columns are there for the next cycle


def test_a_pool_kept_by_slot_equals_a_fresh_pool() -> None:
    """Candidates named by their `VictimSlots` slot: over 30 "cycles" where jobs end (a hole), start
    (a new slot), move (a new object at a new slot) and some candidates come without a slot (-1), the
    pool kept by slot is the fresh pool of the same candidates. Halfway the slots are built afresh
    with the same jobs at other slots: the last pool's slot numbers must not be trusted then (fails
    if they are), and the pool after that is kept by slot again."""
    stmt, _, _ = _rack_state()
    rng = np.random.default_rng(5)
    serial = 0

    def started(job_id: str) -> RunningJob:
        return make_running(
            make_job(job_id, str(rng.choice(["a", "b"])), int(rng.choice([1, 2])), priority=int(rng.choice([10, 50]))),
            [(f"n{int(rng.integers(0, 4))}", [int(rng.integers(0, 8))])],
            started_at=float(rng.choice([0.0, 5.0])),
        )

    slots = VictimSlots()
    for _ in range(40):
        serial += 1
        slots.add(started(f"j{serial}"))
    for key in (victim_cost, move_cost):
        kept: dict[object, object] = {}
        for cycle in range(30):
            live = [held for held in slots.jobs if held is not None]
            for i in rng.choice(len(live), size=min(len(live), int(rng.integers(0, 5))), replace=False).tolist():
                slots.drop(live[i])
            for held in [h for h in slots.jobs if h is not None and rng.random() < 0.05]:
                slots.drop(held)
                slots.add(started(held.job.id))  # moved: the same id, a new object
            for _ in range(int(rng.integers(0, 5))):
                serial += 1
                slots.add(started(f"j{serial}"))
            if cycle == 15:  # built afresh: the same jobs, other slots (a job's old slot now names another)
                live = [held for held in slots.jobs if held is not None]
                rng.shuffle(live)
                slots = VictimSlots.of(live)
            at = np.array([i for i, held in enumerate(slots.jobs) if held is not None and rng.random() < 0.8],
                          dtype=np.int64)
            candidates = [slots.jobs[i] for i in at.tolist()]
            serial += 1
            extra = [started(f"x{serial}")] if cycle % 3 != 1 else []  # no slot (often two cycles in a row)
            given = [held for held in candidates if held is not None] + extra
            slot = np.concatenate((at, np.full(len(extra), -1, dtype=np.int64)))
            pool = VictimPool(stmt, given, key=key, kept=kept, slots=(slots, slot))
            assert _pool_view(pool) == _pool_view(VictimPool(stmt, given, key=key))
            assert [pool.entry(v) for v in pool.ordered] == list(range(len(given)))


def test_a_kept_pool_keeps_long_ids_whole_for_later_merges() -> None:
    """Equal costs are ordered by id. A kept pool whose ids are short takes in a job with a longer id;
    the next cycle merges a job whose id sorts between that long id and its first two characters: it
    must land before the long one, as in a fresh pool (fails if the kept keys cut ids to the width of
    the shorter ones)."""
    stmt, _, _ = _rack_state()

    def held(job_id: str) -> RunningJob:
        return make_running(make_job(job_id, "a", 1), [("n0", [0])], started_at=5.0)

    a1, a3, long, between = held("a1"), held("a3"), held("a2zzzz"), held("a2b")
    for key in (victim_cost, move_cost):
        kept: dict[object, object] = {}
        for candidates in ([a1, a3], [a1, a3, long], [a1, a3, long, between]):
            pool = VictimPool(stmt, candidates, key=key, kept=kept)
            assert [v.job.id for v in pool.ordered] == [v.job.id for v in sorted(candidates, key=key)]
        assert [v.job.id for v in pool.ordered] == ["a1", "a2b", "a2zzzz", "a3"]


def test_a_copied_cache_is_not_trusted_for_the_objects_it_names() -> None:
    """A kept pool names its jobs by `id()`; a copied (or unpickled) cache holds the ids of the
    objects it was copied from, next to copies of them. Its pool must still be built from the
    candidates themselves, as a fresh pool is (fails if the ids are trusted without checking that
    each names the very object)."""
    stmt, _, _ = _rack_state()
    candidates = [
        make_running(make_job(f"j{i}", "a", 1 + i % 2), [("n0", [i % 8])], started_at=float(i % 3))
        for i in range(12)
    ]
    for key in (victim_cost, move_cost):
        kept: dict[object, object] = {}
        VictimPool(stmt, candidates, key=key, kept=kept)
        copied = copy.deepcopy(kept)
        pool = VictimPool(stmt, candidates, key=key, kept=copied)
        assert _pool_view(pool) == _pool_view(VictimPool(stmt, candidates, key=key))


def test_pool_rows_follow_the_cost_order_for_gangs_of_several_replicas() -> None:
    """The pool gathers its columns in the given order and permutes them once: each row (replica) must
    still name the node and devices of the job at its place in the cost order."""
    stmt, state, _ = _rack_state()
    rng = np.random.default_rng(11)
    candidates = []
    for i in range(40):
        replicas = int(rng.choice([1, 2, 3]))
        nodes = [f"n{int(n)}" for n in rng.choice(4, size=replicas, replace=False)]
        candidates.append(make_running(
            make_job(f"g{i:02d}", str(rng.choice(["a", "b", "c"])), int(rng.choice([1, 2])),
                     replicas=replicas, priority=int(rng.choice([10, 50]))),
            [(node, [0]) for node in nodes],
            started_at=float(rng.choice([0.0, 5.0])),
        ))
    for key in (victim_cost, move_cost):
        pool = VictimPool(stmt, candidates, key=key)
        expected_nodes = [state.node_index[p.node] for v in pool.ordered for p in v.placements]
        expected_jobs = [i for i, v in enumerate(pool.ordered) for _ in v.placements]
        assert pool.row_node.tolist() == expected_nodes
        assert pool.row_job.tolist() == expected_jobs
        assert pool.row_gpus.tolist() == [max(pool.ordered[j].job.gpus, 1) for j in expected_jobs]
        assert [pool.rank[v.job.id] for v in pool.ordered] == list(range(len(candidates)))
        assert pool.priority.tolist() == [v.job.priority for v in pool.ordered]
        for queue in ("a", "b", "c"):
            assert pool.of_queue(QueueName(queue)).tolist() == [v.job.queue == queue for v in pool.ordered]


def _shared_gpu_cluster(seed: int) -> tuple[Statement, ClusterState, list[RunningJob], list[RunningJob]]:
    """Six 4-GPU nodes whose GPUs are split into random slices; (statement, state, movable, all)."""
    rng = np.random.default_rng(seed)
    nodes, topology = make_cluster(6, 4, racks=3)
    state = ClusterState.from_nodes(nodes, topology)
    splits = [[], [1.0], [0.5], [0.5, 0.5], [0.25, 0.5], [0.25, 0.25, 0.25], [0.75]]
    running: list[RunningJob] = []
    for n in range(6):
        for g in range(4):
            for k, part in enumerate(splits[int(rng.integers(len(splits)))]):
                cpu = int(rng.choice([0, 16_000, 48_000]))  # a node has 224 cores: CPU binds sometimes
                if cpu > state.cpu_free_milli[n]:
                    cpu = 0
                job = make_job(f"n{n}g{g}s{k}", "b", gpu=part, priority=int(rng.choice([10, 50])), cpu_milli=cpu)
                running.append(make_running(job, [(f"n{n}", [g])], started_at=float(rng.integers(5))))
                state.allocate_job(running[-1])
    tree = build_queue_tree([make_queue("a"), make_queue("b")])
    movable = [held for held in running if rng.random() < 0.6]
    return Statement(state=state, accounting=QueueAccounting.empty(tree)), state, movable, running


@pytest.mark.parametrize("seed", range(12))
def test_leaving_out_domains_the_first_candidates_cannot_clear_changes_no_choice(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search with no admissibility filter evicts a domain's candidates cheapest first and stops at
    `max_victims`: domains where even those cannot free room for the gang (counted GPU by GPU) are
    left out before any what-if eviction, and so are those where the CPU or memory then free holds
    too few replicas. Same choice as searching them, on random shared GPUs with CPU-heavy jobs."""
    from leitstand.scheduler import victims

    stmt, state, movable, _ = _shared_gpu_cluster(seed)
    policy = PolicyContext.build(state)
    shapes = [
        make_job("w1", "a", 1),
        make_job("w2", "a", 2),
        make_job("w4", "a", 4),
        make_job("half", "a", gpu=0.5),
        make_job("quarters", "a", replicas=3, gpu=0.25),
        make_job("pair", "a", 2, replicas=2, required="rack"),
        make_job("cpu-heavy", "a", 1, cpu_milli=120_000),
        make_job("cpu-heavy-pair", "a", 1, replicas=2, cpu_milli=100_000, memory_mib=1024 * 1024),
    ]
    unpruned = victims._candidate_domains

    def search(job_shape: Job, cap_used: bool, max_victims: int) -> tuple[object, int]:
        if not cap_used:
            monkeypatch.setattr(victims, "_candidate_domains", lambda *a: unpruned(*a[:5]))
        try:
            pool = VictimPool(stmt, movable, key=move_cost)
            tally: dict[str, int] = {}
            choice = choose_victims(
                stmt, GangRequest.for_job(state, job_shape), pool, policy,
                max_victims=max_victims, for_job=JobId("w"), tally=tally,
            )
        finally:
            monkeypatch.setattr(victims, "_candidate_domains", unpruned)
        summary = None if choice is None else (
            sorted(v.job.id for v in choice.victims), choice.placement.nodes.tolist(), choice.placement.gpus.tolist()
        )
        return summary, tally.get("domains", 0)

    pruned_some = 0
    for job in shapes:
        for max_victims in (1, 2, 4):
            fast, searched = search(job, True, max_victims)
            slow, searched_all = search(job, False, max_victims)
            assert fast == slow, (job.id, max_victims)
            assert searched <= searched_all
            pruned_some += searched < searched_all
    assert pruned_some, "the shortcut never left a domain out: the test would not notice it broke"


def test_a_gpu_shared_with_a_job_that_may_not_move_is_never_freed() -> None:
    """Counting GPU by GPU: evicting the only candidate of a node does not make a whole GPU when a job
    that may not move holds the rest of that GPU, so the node is not searched at all."""
    nodes, topology = make_cluster(1, 1)
    state = ClusterState.from_nodes(nodes, topology)
    movable = make_running(make_job("movable", "b", gpu=0.5), [("n0", [0])])
    stays = make_running(make_job("stays", "b", gpu=0.5), [("n0", [0])])
    for held in (movable, stays):
        state.allocate_job(held)
    tree = build_queue_tree([make_queue("a"), make_queue("b")])
    stmt = Statement(state=state, accounting=QueueAccounting.empty(tree))
    pool = VictimPool(stmt, [movable], key=move_cost)
    tally: dict[str, int] = {}
    request = GangRequest.for_job(state, make_job("w", "a", 1))
    choice = choose_victims(
        stmt, request, pool, PolicyContext.build(state), max_victims=4, for_job=JobId("w"), tally=tally
    )
    assert choice is None and tally.get("domains", 0) == 0
    half = GangRequest.for_job(state, make_job("h", "a", gpu=0.5))
    found = choose_victims(stmt, half, pool, PolicyContext.build(state), max_victims=4, for_job=JobId("h"))
    assert found is not None and [v.job.id for v in found.victims] == ["movable"]
