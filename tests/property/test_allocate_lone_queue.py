"""Allocate's pass over a lone queue by FIFO decides exactly what its job-by-job walk decides.

When only one queue has jobs left, allocate groups them by `Job.fifo_key` and skips the FIFOs whose
jobs wait behind a failed request (`actions/allocate.py`, `_lone_queue`). The worlds below are made
for that: one busy leaf (sometimes beside a second leaf with a few jobs, so the switch happens part
way through the order), jobs drawn from a handful of shapes so FIFOs repeat, preemptible and
non-preemptible jobs against small quotas (a bind can end a non-preemptible FIFO's sure admission),
elastic jobs, limits (no short cut then) and small per-cycle budgets. The plan — bindings, evictions
and every pending reason, code and message — must be the same with the short cut and without it.
"""

from __future__ import annotations

import dataclasses
from unittest.mock import patch

import hypothesis.strategies as st
from builders import make_job, make_node, make_queue, make_running, make_snapshot
from hypothesis import HealthCheck, event, given, settings

from leitstand.scheduler.actions import allocate
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import (
    GPU_MILLI,
    Job,
    Plan,
    QueueName,
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


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Snapshot, SchedulerConfig]:
    nodes = [
        make_node(f"n{i}", draw(st.sampled_from([4, 8])), cpu_milli=32_000, topology=(f"r{i // 2}",))
        for i in range(draw(st.integers(2, 5)))
    ]
    quota = draw(st.sampled_from([0.0, 2.0, 4.0, 8.0, 64.0]))
    limit = draw(st.sampled_from([None, None, None, quota + 4.0]))
    queues = [make_queue("dept", quota_gpus=64.0), make_queue("big", "dept", quota_gpus=quota, limit_gpus=limit)]
    second = draw(st.booleans())
    if second:
        queues.append(make_queue("small", "dept", quota_gpus=draw(st.sampled_from([0.0, 4.0]))))
    shapes = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1, 2, 4, 8]),  # GPUs per replica
                st.sampled_from([1, 1, 2]),  # replicas
                st.sampled_from([None, None, 0.5]),  # a fraction of one GPU instead
                st.sampled_from([0, 16_000]),  # CPU
            ),
            min_size=1,
            max_size=4,
        )
    )

    def job(job_id: str, queue: str, created_at: float) -> Job:
        gpus, replicas, fraction, cpu = draw(st.sampled_from(shapes))
        made = make_job(
            job_id,
            queue,
            1 if fraction is not None else gpus,
            replicas,
            gpu=fraction,
            priority=draw(st.sampled_from([50, 50, 125])),
            preemptible=draw(st.sampled_from([None, True, False, False])),
            cpu_milli=cpu,
            created_at=created_at,
        )
        if replicas > 1 and draw(st.integers(0, 5)) == 0:
            made = dataclasses.replace(made, min_replicas=1)
        return made

    # A few running jobs, placed with the real placement (they use up some quota and capacity).
    state = ClusterState.from_nodes(nodes, TOPOLOGY)
    policy = PolicyContext.build(state)
    running: list[RunningJob] = []
    for k in range(draw(st.integers(0, 4))):
        held = job(f"run-{k}", "big", float(k))
        if limit is not None and sum(r.job.gpu_milli_total for r in running) + held.gpu_milli_total > limit * GPU_MILLI:
            continue
        result = place_gang(state, GangRequest.for_job(state, held), policy)
        if isinstance(result, GangPlacement):
            placed = RunningJob(held, replica_placements(state, result), started_at=0.0)
            state.allocate_job(placed)
            running.append(placed)
    pending = [job(f"p-{k}", "big", 100.0 + k) for k in range(draw(st.integers(1, 30)))]
    if second:
        pending += [job(f"s-{k}", "small", 100.5 + 3 * k) for k in range(draw(st.integers(0, 3)))]
    config = SchedulerConfig(
        min_runtime_seconds=60.0,
        consolidation=draw(st.booleans()),
        max_jobs_per_cycle=draw(st.sampled_from([100_000, 100_000, 3, 12])),
    )
    snapshot = make_snapshot(nodes, queues, pending, running, topology=TOPOLOGY, now=NOW)
    return snapshot, config


def _cycle_counting_lone_passes(snapshot: Snapshot, config: SchedulerConfig) -> tuple[Plan, list[int]]:
    """The cycle's plan, and how many jobs each lone-queue pass of allocate was handed."""
    calls: list[int] = []
    lone = allocate._lone_queue

    def counted(walk: allocate._Walk, queue: QueueName, rest: list[Job]) -> None:
        calls.append(len(rest))
        lone(walk, queue, rest)

    with patch.object(allocate, "_lone_queue", counted):
        return run_cycle(snapshot, config), calls


def _work(snapshot: Snapshot, config: SchedulerConfig) -> dict[str, int]:
    """What the cycle's actions counted (victim searches and their outcomes, budget cuts, ...),
    without the phase times."""
    stats: dict[str, int] = {}
    run_cycle(snapshot, config, stats=stats)
    return {key: value for key, value in stats.items() if not key.startswith("cpu_us_")}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_lone_queue_pass_decides_what_the_walk_decides(world: tuple[Snapshot, SchedulerConfig]) -> None:
    snapshot, config = world
    fast, calls = _cycle_counting_lone_passes(snapshot, config)
    with patch.object(allocate, "_LONE_QUEUE", False):
        walked = run_cycle(snapshot, config)
    assert fast.bindings == walked.bindings
    assert fast.evictions == walked.evictions
    assert fast.pending == walked.pending
    # The jobs a suspended FIFO passed over have no entry of their own: the actions after allocate
    # read their reason through `CycleContext.reason_of` and must do the same work for them.
    fast_work = _work(snapshot, config)
    with patch.object(allocate, "_LONE_QUEUE", False):
        assert fast_work == _work(snapshot, config)
    event(f"lone queue pass: {'yes' if calls else 'no'}")
    if calls and len(calls) and calls[0] > 1:
        event("lone queue pass over several jobs")
    codes = {r.code for r in fast.pending}
    for code in sorted(codes):
        event(f"pending: {code}")
    event(f"bound: {min(len(fast.bindings), 3)}")


def test_a_bind_that_uses_up_the_quota_ends_a_non_preemptible_fifo_s_short_cut() -> None:
    """Non-preemptible 6-GPU jobs wait for room (4 of 8 GPUs free) within their queue's quota of 8;
    a non-preemptible 3-GPU job binds between them and leaves 5 GPUs of quota: the 6-GPU jobs after
    it are found over quota by allocate (their FIFO's short cut ends at the bind), those before it
    by reclaim's re-check of the jobs visited before the last bind — with the short cut as without."""
    nodes = [make_node("n0", 8, cpu_milli=32_000)]
    busy = make_job("busy", "big", 4, preemptible=True)
    running = [make_running(busy, [("n0", [0, 1, 2, 3])])]

    def big(k: int) -> Job:
        return make_job(f"big-{k}", "big", 6, preemptible=False, created_at=float(k))

    pending = [big(0), big(1), make_job("small", "big", 3, preemptible=False, created_at=2.0), big(3), big(4)]
    snapshot = make_snapshot(nodes, [make_queue("big", quota_gpus=8.0)], pending, running, now=NOW)
    config = SchedulerConfig()
    plan, calls = _cycle_counting_lone_passes(snapshot, config)
    assert calls == [5]
    assert [b.job_id for b in plan.bindings] == ["small"]
    codes = {r.job_id: r.code for r in plan.pending}
    assert codes == {
        "big-0": "NonPreemptibleOverQuota",
        "big-1": "NonPreemptibleOverQuota",
        "big-3": "NonPreemptibleOverQuota",
        "big-4": "NonPreemptibleOverQuota",
    }
    with patch.object(allocate, "_LONE_QUEUE", False):
        assert run_cycle(snapshot, config).pending == plan.pending


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 7, 40_000, 65_535, 65_536, 1 << 40]), max_size=60), st.integers(0, 1 << 20))
def test_fifos_group_positions_by_key_in_order_of_first_job(keys: list[int], offset: int) -> None:
    """`_fifos`: per distinct `fifo_key`, its jobs' positions ascending, the FIFOs in the order of
    their first jobs — by radix sort when the keys span fewer than 2^16 numbers, else the general
    sort (the keys drawn cross that line)."""
    from types import SimpleNamespace

    jobs = [SimpleNamespace(fifo_key=offset + key) for key in keys]
    expected: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        expected.setdefault(key, []).append(position)
    got = allocate._fifos(jobs)  # type: ignore[arg-type]
    assert [positions.tolist() for positions in got] == list(expected.values())
