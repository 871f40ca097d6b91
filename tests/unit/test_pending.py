"""The pending jobs' sort kept between cycles (`pending.open_pending`) equals a fresh sort.

A simulator keeps its `ClusterState` between cycles, starts the jobs a plan binds on it (the state
logs that) and lists its pending jobs as they came; the next cycle takes the jobs that started out
of the last sort and sorts the new ones in. Whatever a caller does — jobs arriving at the end or
between old ones, a job deleted without starting, a job listed again at its old place, a changed job
under an old id, an id listed twice, jobs of unknown or inner queues, a queue created, elastic jobs
— the sort must be what sorting the snapshot afresh gives.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from builders import make_job, make_queue
from hypothesis import given, settings
from hypothesis import strategies as st

from leitstand.scheduler import pending as pending_module
from leitstand.scheduler.fairshare import QueueTree, build_queue_tree
from leitstand.scheduler.model import Job, Node, NodeName, ReplicaPlacement, RunningJob
from leitstand.scheduler.pending import CACHE_KEY, PendingSort, open_pending
from leitstand.scheduler.running import open_running
from leitstand.scheduler.state import ClusterState

NODES = 400
QUEUES = [make_queue("root"), make_queue("a", "root"), make_queue("b", "root"), make_queue("c")]
"""Leaves a, b and c; root is an inner queue."""


def _state() -> ClusterState:
    return ClusterState.from_nodes([Node(NodeName(f"n{k}"), 2, 64_000, 256_000) for k in range(NODES)])


def _job(n: int, rng: random.Random, now: float, *, queue: str | None = None) -> Job:
    size = rng.choice([0.25, 0.5, 1, 2])
    gpu = {"gpu": size} if size < 1 else {"gpus": int(size)}
    return make_job(
        f"j{n}",
        queue or rng.choice(["a", "a", "b", "c", "root", "nowhere"]),
        priority=rng.choice([10, 50, 150]),
        created_at=now - rng.choice([0.0, 0.0, 30.0]),  # some older than jobs listed before them
        **gpu,
    )


def _elastic(job: Job) -> Job:
    return replace(job, replicas=2, min_replicas=1)


def _same(kept: PendingSort, fresh: PendingSort) -> None:
    assert kept.by_queue == fresh.by_queue  # the same leaves with the same jobs in the same order
    for queue, jobs in kept.by_queue.items():
        assert all(a is b for a, b in zip(jobs, fresh.by_queue[queue], strict=True))  # the very objects
    assert kept.refused == fresh.refused
    assert kept.demand == fresh.demand
    assert kept.elastic == fresh.elastic
    assert list(kept.jobs) == list(fresh.jobs)


def _cycle_reads(pending: list[Job], tree: QueueTree, state: ClusterState, running: list[RunningJob]) -> PendingSort:
    """What a cycle reads: the running jobs opened first (which takes the state's log), then the sort."""
    log = open_running(tuple(running), state).log
    return open_pending(tuple(pending), tree, state, log)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 25))
def test_the_kept_sort_equals_a_fresh_sort_whatever_the_caller_does(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    state = _state()
    queues = list(QUEUES)
    tree = build_queue_tree(queues)
    made = 0
    pending: list[Job] = []  # the caller's pending jobs, in the order its snapshots list them
    running: list[RunningJob] = []

    placed: list[Job] = []

    def start(job: Job) -> None:  # each on a node of its own (fewer than NODES start in a test)
        where = ReplicaPlacement(NodeName(f"n{len(placed)}"), tuple(range(job.gpus)))
        placed.append(job)
        held = RunningJob(job, (where,), 0.0)
        state.allocate_job(held)
        running.append(held)

    for _ in range(rng.randint(0, 30)):
        pending.append(_job(made, rng, 0.0))
        made += 1
    bound: list[Job] = []
    for step in range(steps):
        now = 60.0 * (step + 1)
        for job in bound:  # what the last cycle bound: mostly started, or gone and not started yet, or left
            if job in pending and rng.random() < 0.9:
                pending.remove(job)
                if rng.random() < 0.6:
                    start(job)  # (else in flight: the operator's pods show up later)
        startable = [job for job in pending if job.queue in ("a", "b", "c")]
        for job in rng.sample(startable, min(len(startable), rng.randint(0, 2))):  # started by the caller alone
            pending.remove(job)
            start(job)
        for _ in range(rng.randint(0, 4)):  # new jobs at the end
            pending.append(_job(made, rng, now))
            made += 1
        if rng.random() < 0.1 and pending:  # a new job listed between old ones
            pending.insert(rng.randrange(len(pending)), _job(made, rng, now))
            made += 1
        if rng.random() < 0.1 and pending:  # deleted while pending (the state knows nothing)
            pending.pop(rng.randrange(len(pending)))
        if rng.random() < 0.1 and running:  # evicted, listed again at its old place
            held = running.pop(rng.randrange(len(running)))
            state.release_job(held)
            pending.insert(rng.randrange(len(pending) + 1), held.job)
        if rng.random() < 0.1 and running:  # evicted, listed again at the end
            held = running.pop(rng.randrange(len(running)))
            state.release_job(held)
            pending.append(held.job)
        if rng.random() < 0.1 and pending:  # changed under its id: a new object
            at = rng.randrange(len(pending))
            pending[at] = replace(pending[at], priority=pending[at].priority + 1)
        if rng.random() < 0.05:  # an elastic job arrives
            pending.append(_elastic(_job(made, rng, now)))
            made += 1
        if rng.random() < 0.05 and "nowhere" not in {q.name for q in queues}:  # the unknown queue is created
            queues.append(make_queue("nowhere"))
            tree = build_queue_tree(queues)
        if rng.random() < 0.05 and pending:  # the state was told of a start the snapshot still lists
            start(pending[rng.randrange(len(pending))])
        snapshot = list(pending)
        if rng.random() < 0.05 and pending:  # an id listed twice
            snapshot.append(pending[0])
        sort = _cycle_reads(snapshot, tree, state, running)
        _same(sort, open_pending(tuple(snapshot), tree))
        startable = [job for job in pending if job.queue in ("a", "b", "c")]
        bound = rng.sample(startable, min(len(startable), rng.randint(0, 3)))
        sort.bound = frozenset(job.id for job in bound)  # as `run_cycle` records its plan's bindings


def _caller(rng: random.Random, n: int = 40) -> tuple[ClusterState, list[Job], QueueTree, PendingSort]:
    state = _state()
    pending = [_job(k, rng, 0.0, queue=rng.choice(["a", "b", "root", "nowhere"])) for k in range(n)]
    tree = build_queue_tree(QUEUES)
    first = _cycle_reads(pending, tree, state, [])
    return state, pending, tree, first


def test_a_sort_is_updated_in_place_by_the_starts_and_the_jobs_after_those_that_stayed() -> None:
    rng = random.Random(1)
    state, pending, tree, first = _caller(rng)
    assert state.cycle_cache[CACHE_KEY] is first
    held = RunningJob(next(job for job in pending if job.queue == "a"), (ReplicaPlacement(NodeName("n0"), (0,)),), 0.0)
    state.allocate_job(held)
    pending.remove(held.job)
    pending += [_job(100 + k, rng, 10.0) for k in range(5)]
    second = _cycle_reads(pending, tree, state, [held])
    assert second is first  # updated, not sorted afresh
    _same(second, open_pending(tuple(pending), tree))
    assert held.job not in second.by_queue["a"]


@pytest.mark.parametrize(
    "case",
    [
        "listed-again-at-its-place",
        "deleted-untold",
        "last-deleted-untold",
        "changed",
        "started-but-listed",
        "tree-changed",
        "twice",
    ],
)
def test_what_the_log_cannot_account_for_is_sorted_afresh(case: str) -> None:
    rng = random.Random(2)
    state, pending, tree, first = _caller(rng)
    running: list[RunningJob] = []
    if case == "listed-again-at-its-place":  # started, evicted, and queued again where it was
        held = RunningJob(pending[5], (ReplicaPlacement(NodeName("n0"), ()),), 0.0)
        state.allocate_job(held)
        state.release_job(held)
    elif case == "deleted-untold":
        del pending[5]
    elif case == "last-deleted-untold":  # (the jobs listed are those kept, but not all of them)
        del pending[-1]
    elif case == "changed":
        pending[5] = replace(pending[5], priority=999)
    elif case == "started-but-listed":
        running = [RunningJob(pending[5], (ReplicaPlacement(NodeName("n0"), ()),), 0.0)]
        state.allocate_job(running[0])
    elif case == "tree-changed":  # jobs of the unknown queue now have one
        tree = build_queue_tree([*QUEUES, make_queue("nowhere")])
    else:
        pending.append(pending[5])
    again = _cycle_reads(pending, tree, state, running)
    assert again is not first
    _same(again, open_pending(tuple(pending), tree))
    assert (CACHE_KEY in state.cycle_cache) == (case != "twice")  # a sort with an id twice is not kept


def test_jobs_of_unknown_and_inner_queues_wait_with_a_reason_that_says_what_to_do() -> None:
    tree = build_queue_tree(QUEUES)
    rng = random.Random(3)
    sort = open_pending((_job(1, rng, 0.0, queue="nowhere"), _job(2, rng, 0.0, queue="root")), tree)
    assert not sort.by_queue
    assert sort.refused[_job(1, rng, 0.0).id].message == "queue nowhere does not exist; create it or resubmit"
    inner = sort.refused[_job(2, rng, 0.0).id].message
    assert inner == "queue root has child queues and holds no jobs; submit to one of its leaf queues"


def _one_priority(k: int, rng: random.Random) -> Job:
    return replace(_job(k, rng, 2.0 * k, queue="a"), priority=50, created_at=2.0 * k)  # nothing to preempt


def test_a_replay_sorts_its_backlog_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay lists its pending jobs as they arrived and removes those it starts: with nothing
    evicted back to the queue, every cycle after the first updates the kept sort."""
    from builders import make_node

    from leitstand.scheduler.sim.replay import CycleScheduler, Task, Workload, cycle_config, replay

    fresh = 0
    real = pending_module._fresh

    def counted(*args: object) -> PendingSort:
        nonlocal fresh
        fresh += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pending_module, "_fresh", counted)
    rng = random.Random(5)
    workload = Workload(
        name="backlog",
        nodes=tuple(make_node(f"n{i}", 8) for i in range(4)),
        queues=(make_queue("a", quota_gpus=32),),
        tasks=tuple(Task(_one_priority(k, rng), 2.0 * k, rng.uniform(20.0, 200.0)) for k in range(300)),
    )
    scheduler = CycleScheduler(workload.nodes, workload.queues, cycle_config(policy="leitstand"))
    result = replay(workload, scheduler, interval_seconds=5.0, keep_timeline=False)
    assert result.passes > 50 and result.evictions == 0 and result.finished == 300
    assert max(result.waits_seconds) > 60.0  # a backlog formed
    assert fresh == 1
