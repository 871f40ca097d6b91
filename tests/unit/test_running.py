"""The running jobs' sums kept between cycles (`running.open_running`) equal a fresh build.

A simulator keeps its `ClusterState` between cycles and starts and ends jobs on it; the state logs
that, and the next cycle updates last cycle's sums by the log. Whatever a caller does — jobs ending
anywhere and starting at the end, a snapshot in another order, an id listed twice, a job the state
was never told about, elastic jobs — the result must be what summing the snapshot afresh gives, in
the same order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leitstand.scheduler import running as running_module
from leitstand.scheduler.model import Job, JobId, Node, NodeName, QueueName, ReplicaPlacement, RunningJob
from leitstand.scheduler.running import CACHE_KEY, RunningSums, VictimSlots, open_running
from leitstand.scheduler.state import ClusterState

QUEUES = [QueueName(f"q{i}") for i in range(3)]
NODES = 400


def _state() -> ClusterState:
    return ClusterState.from_nodes([Node(NodeName(f"n{k}"), 2, 64_000, 256_000) for k in range(NODES)])


def _running(n: int, rng: random.Random, *, elastic: bool = False, started: float | None = None) -> RunningJob:
    job = Job(
        id=JobId(f"j{n}"),
        queue=rng.choice(QUEUES),
        gpus=rng.choice([0, 1, 2]),
        gpu_milli=rng.choice([250, 500, 1000]),
        priority=rng.choice([10, 50, 150]),
        replicas=2 if elastic else 1,
        min_replicas=1 if elastic else None,
    )
    where = ReplicaPlacement(NodeName(f"n{n % NODES}"), tuple(range(job.gpus)))
    return RunningJob(job, (where,), float(n) if started is None else started)


def _same(kept: RunningSums, fresh: RunningSums) -> None:
    assert list(kept.by_id.items()) == list(fresh.by_id.items())  # same order, same objects
    assert all(a is b for a, b in zip(kept.by_id.values(), fresh.by_id.values(), strict=True))
    for preemptible in (True, False):  # a queue whose jobs all ended may stay listed with 0
        assert {q: m for q, m in kept.charged[preemptible].items() if m} == {
            q: m for q, m in fresh.charged[preemptible].items() if m
        }
    assert kept.preemptible_priorities == fresh.preemptible_priorities
    assert kept.growth == fresh.growth and kept.elastic == fresh.elastic
    _same_slots(kept.slots, fresh.slots)


def _same_slots(kept: VictimSlots, fresh: VictimSlots) -> None:
    """The same preemptible jobs, each (the very object) at its slot with its start time; holes and
    the unused tail never of victim age."""
    live = {i: held for i, held in enumerate(kept.jobs) if held is not None}
    assert sorted(held.job.id for held in live.values()) == sorted(held.job.id for held in fresh.jobs if held)
    fresh_by_id = {held.job.id: held for held in fresh.jobs if held is not None}
    for i, held in live.items():
        assert held is fresh_by_id[held.job.id] and kept.slot[held.job.id] == i
        assert kept.started[i] == held.started_at
    assert len(kept.slot) == len(live)
    dead = [i for i in range(kept.started.shape[0]) if i not in live]
    assert np.isinf(kept.started[dead]).all()
    assert not kept.aged(1e12, 0.0)[[i for i in dead if i < len(kept.jobs)]].any()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 25))
def test_kept_sums_equal_a_fresh_build_whatever_the_caller_does(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    state = _state()
    made = 0
    jobs: list[RunningJob] = []  # the caller's running jobs, in the order its snapshots list them

    def start(held: RunningJob, at: int | None = None) -> None:
        state.allocate_job(held)
        jobs.insert(len(jobs) if at is None else at, held)

    for _ in range(rng.randint(0, 30)):
        start(_running(made, rng))
        made += 1
    for _ in range(steps):
        for _ in range(rng.randint(0, 3)):  # some end anywhere, some start at the end
            if jobs:
                state.release_job(jobs.pop(rng.randrange(len(jobs))))
        for _ in range(rng.randint(0, 3)):
            start(_running(made, rng))
            made += 1
        if rng.random() < 0.1 and jobs:  # a new job listed between old ones
            start(_running(made, rng), rng.randrange(len(jobs)))
            made += 1
        if rng.random() < 0.1 and len(jobs) > 1:  # the snapshot lists jobs in another order
            i, j = rng.sample(range(len(jobs)), 2)
            jobs[i], jobs[j] = jobs[j], jobs[i]
        if rng.random() < 0.1 and jobs:  # moved: ended, and started again as a new object
            moved = jobs.pop(rng.randrange(len(jobs)))
            state.release_job(moved)
            start(RunningJob(moved.job, moved.placements, moved.started_at + 1))
        if rng.random() < 0.05:  # an elastic job runs
            start(_running(made, rng, elastic=True))
            made += 1
        snapshot = list(jobs)
        if rng.random() < 0.05 and jobs:  # the snapshot lists an id twice (the state knows one)
            snapshot.append(RunningJob(jobs[0].job, jobs[0].placements, 99.0))
        if rng.random() < 0.05 and jobs:  # the caller ended a job without telling the state
            jobs.pop(rng.randrange(len(jobs)))
            snapshot = list(jobs)
        _same(open_running(tuple(snapshot), state), open_running(tuple(snapshot)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_kept_victim_slots_follow_the_log_and_start_over_when_crowded(seed: int) -> None:
    """The slots kept with the sums (built once, then updated by the log) hold the snapshot's
    preemptible jobs as a fresh build does; a slot is never given to another job; when holes
    outnumber live jobs (and `_COMPACT_AT`, lowered here so that it happens within the run) the
    slots are built afresh (a new object, so pools kept by slot start over)."""
    rng = random.Random(seed)
    state = _state()
    jobs = [_running(n, rng) for n in range(40)]
    for held in jobs:
        state.allocate_job(held)
    made = len(jobs)
    slots = open_running(tuple(jobs), state).slots
    owner: dict[int, JobId] = {}  # every slot ever used → the job it was given to
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(running_module, "_COMPACT_AT", 4)
        for _ in range(15):
            for _ in range(rng.randint(0, 12)):
                if jobs:
                    state.release_job(jobs.pop(rng.randrange(len(jobs))))
            for _ in range(rng.randint(0, 4)):
                jobs.append(_running(made, rng))
                state.allocate_job(jobs[-1])
                made += 1
            sums = open_running(tuple(jobs), state)
            _same(sums, open_running(tuple(jobs)))
            if sums.slots is not slots:
                assert slots.holes > running_module._COMPACT_AT and sums.slots.holes == 0
                slots, owner = sums.slots, {}
            for i, held in enumerate(slots.jobs):
                if held is not None:
                    assert owner.setdefault(i, held.job.id) == held.job.id


def test_crowded_slots_are_built_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(running_module, "_COMPACT_AT", 4)
    rng = random.Random(3)
    state = _state()
    jobs = [_running(n, rng) for n in range(30)]
    for held in jobs:
        state.allocate_job(held)
    first = open_running(tuple(jobs), state).slots
    preemptible = [held for held in jobs if held.job.is_preemptible]
    for held in preemptible[: len(preemptible) // 2 + 1]:  # more holes than live jobs
        state.release_job(held)
        jobs.remove(held)
    sums = open_running(tuple(jobs), state)
    assert sums.slots is not first and sums.slots.holes == 0
    _same(sums, open_running(tuple(jobs)))


def test_only_the_callers_state_logs_starts_and_ends() -> None:
    rng = random.Random(1)
    state = _state()
    jobs = [_running(n, rng) for n in range(50)]
    for held in jobs:
        state.allocate_job(held)
    assert state.running_log is None  # nothing is logged before a cycle read the state
    first = open_running(tuple(jobs), state)
    assert state.running_log == [] and state.cycle_cache[CACHE_KEY] is first
    ended = jobs.pop(7)
    state.release_job(ended)
    jobs.append(_running(50, rng))
    state.allocate_job(jobs[-1])
    work = state.copy()
    work.release_job(jobs[0])  # a cycle's what-if on its copy: not the caller's job ending
    assert work.running_log is None
    assert state.running_log == [(False, ended), (True, jobs[-1])]
    second = open_running(tuple(jobs), state)
    assert second is first  # updated in place, not built afresh
    _same(second, open_running(tuple(jobs)))


def test_the_last_preemptible_job_of_a_priority_ending_leaves_no_count() -> None:
    state = _state()
    low = RunningJob(Job(id=JobId("low"), queue=QUEUES[0], priority=10), (ReplicaPlacement(NodeName("n0"), (0,)),))
    high = RunningJob(Job(id=JobId("high"), queue=QUEUES[0], priority=50), (ReplicaPlacement(NodeName("n1"), (0,)),))
    for held in (low, high):
        state.allocate_job(held)
    assert open_running((low, high), state).preemptible_priorities == {QUEUES[0]: {10: 1, 50: 1}}
    state.release_job(low)
    assert open_running((high,), state).preemptible_priorities == {QUEUES[0]: {50: 1}}
    state.release_job(high)
    assert open_running((), state).preemptible_priorities == {}  # preempt reads the lowest priority left


@pytest.mark.parametrize("case", ["reordered", "untold", "elastic", "started-twice", "unlisted-then-ended"])
def test_what_the_log_cannot_account_for_is_built_afresh(case: str) -> None:
    rng = random.Random(2)
    state = _state()
    jobs = [_running(n, rng) for n in range(20)]
    for held in jobs:
        state.allocate_job(held)
    first = open_running(tuple(jobs), state)
    if case == "reordered":
        jobs[3], jobs[4] = jobs[4], jobs[3]
    elif case == "untold":
        del jobs[5]  # ended, but the state was not told
    elif case == "started-twice":  # a second object of a running id, the first never released
        elsewhere = ReplicaPlacement(NodeName("n300"), jobs[5].placements[0].gpu_indices)
        jobs[5] = RunningJob(jobs[5].job, (elsewhere,), 42.0)
        state.allocate_job(jobs[5])
    elif case == "unlisted-then-ended":  # the state was told of a start the snapshot did not list
        extra = _running(98, rng)
        state.allocate_job(extra)
        _same(open_running(tuple(jobs), state), open_running(tuple(jobs)))
        state.release_job(extra)
    else:
        jobs.append(_running(99, rng, elastic=True))
        state.allocate_job(jobs[-1])
    again = open_running(tuple(jobs), state)
    assert again is not first
    _same(again, open_running(tuple(jobs)))
    assert (CACHE_KEY in state.cycle_cache) == (case != "elastic")  # sums with elastic jobs are not kept


def _kept_state_cycles(seed: int, min_runtime: float, check: Callable[..., None] | None = None) -> None:
    """12 cycles on a kept state; a caller applies each plan to it (binds start, evictions end, moves
    do both and keep their start, some jobs finish), with reclaim, preemption, consolidation and
    migration at work (the consolidation retry off: it is a memory of earlier cycles by design).
    `check(snapshot, config, plan)` after each cycle."""
    from builders import make_cluster, make_job, make_queue, make_snapshot

    from leitstand.scheduler.cycle import run_cycle
    from leitstand.scheduler.model import SchedulerConfig

    rng = random.Random(seed)
    nodes, topology = make_cluster(6, 8, racks=2)
    queues = [make_queue("r", quota_gpus=0), make_queue("a", "r", quota_gpus=8), make_queue("b", "r", quota_gpus=40)]
    config = SchedulerConfig(consolidation_retry_seconds=0, migration=True, min_runtime_seconds=min_runtime)
    state = ClusterState.from_nodes(nodes, topology)
    running: dict[JobId, RunningJob] = {}
    pending: list[Job] = []
    made = 0
    for step in range(12):
        now = 100.0 * (step + 1)
        for _ in range(rng.randint(1, 6)):
            size = rng.choice([0.25, 0.5, 1, 2, 4, 8])
            gpu = {"gpu": size} if size < 1 else {"gpus": int(size)}
            pending.append(
                # "a" borrows the idle cluster first; "b" comes later and takes its quota back (reclaim)
                make_job(f"j{made}", "a" if step < 4 else rng.choice("ab"), priority=rng.choice([10, 50, 150]),
                         created_at=now, **gpu)
            )
            made += 1
        for job_id in [j for j in running if rng.random() < 0.15]:  # finished
            state.release_job(running.pop(job_id))
        snapshot = make_snapshot(nodes, queues, pending, list(running.values()), topology=topology, now=now)
        kept = run_cycle(snapshot, config, state=state)
        if check is not None:
            check(snapshot, config, kept)
        evicted: dict[JobId, RunningJob] = {}
        for eviction in kept.evictions:
            held = running.pop(eviction.job_id)
            state.release_job(held)
            evicted[held.job.id] = held
        waiting = {job.id: job for job in pending}
        for binding in kept.bindings:
            moved = evicted.get(binding.job_id)  # a move keeps its start (and its progress)
            job = waiting[binding.job_id] if moved is None else moved.job
            held = RunningJob(job, binding.placements, now if moved is None else moved.started_at)
            state.allocate_job(held)
            running[job.id] = held
        requeued = [held.job for job_id, held in evicted.items() if job_id not in running]
        pending = [job for job in pending if job.id not in running] + requeued


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_caller_keeping_its_state_gets_the_plans_of_one_that_does_not(seed: int) -> None:
    """Cycle after cycle (`_kept_state_cycles`) every plan equals the one `run_cycle` makes from the
    snapshot alone."""
    from leitstand.scheduler.cycle import run_cycle

    def same_as_alone(snapshot: object, config: object, kept: object) -> None:
        alone = run_cycle(snapshot, config)  # type: ignore[arg-type]
        assert kept.bindings == alone.bindings and kept.evictions == alone.evictions  # type: ignore[attr-defined]
        assert kept.pending == alone.pending  # type: ignore[attr-defined]

    _kept_state_cycles(seed, 0.0, same_as_alone)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), least=st.sampled_from([0.0, 150.0]))
def test_victim_candidates_from_slots_are_the_running_jobs_of_victim_age(seed: int, least: float) -> None:
    """Every time an action asks for victim candidates (reclaim's and preempt's pool, consolidation's),
    and after every action (evictions, binds, moves and what-if searches rolled back), the candidates
    taken from the kept slots are exactly the jobs of `stmt.running` that `is_victim_age` and
    preemptible select (all, and those of the known queues as reclaim's pool asks), and each one
    named by a slot is the job at that slot."""
    from leitstand.scheduler import cycle
    from leitstand.scheduler.actions.context import CycleContext

    asked: list[tuple[int, int]] = []
    original = CycleContext.victim_candidates

    def checked(ctx: CycleContext, queues: Container[QueueName] | None = None) -> object:
        candidates, slots = original(ctx, queues)
        expected = [
            held for held in ctx.stmt.running.values()
            if held.job.is_preemptible and ctx.is_victim_age(held) and (queues is None or held.job.queue in queues)
        ]
        assert sorted(map(id, candidates)) == sorted(map(id, expected))
        assert all(candidates[i] is held for i, held in enumerate(candidates))  # (read by position too)
        assert slots is not None and len(slots[1]) == len(candidates)
        for held, at in zip(candidates, slots[1].tolist(), strict=True):
            assert at == -1 or slots[0].jobs[at] is held
        asked.append((len(ctx.stmt.touched), len(candidates)))
        return candidates, slots

    def then_asked(action: Callable[[CycleContext], None]) -> Callable[[CycleContext], None]:
        def run(ctx: CycleContext) -> None:
            action(ctx)
            ctx.victim_candidates()
            ctx.victim_candidates({QueueName("a")})

        return run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CycleContext, "victim_candidates", checked)
        patch.setattr(cycle, "ACTIONS", [(name, then_asked(action)) for name, action in cycle.ACTIONS])
        _kept_state_cycles(seed, least)
    assert any(touched for touched, _ in asked) and any(n for _, n in asked)  # the check had work to do
