"""The replay simulator on hand-made streams whose outcome is known (leitstand.scheduler.sim.replay)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from builders import make_job, make_node, make_queue

from leitstand.scheduler.model import (
    Binding,
    Eviction,
    EvictionKind,
    Job,
    JobId,
    Plan,
    ReplicaPlacement,
    RunningJob,
)
from leitstand.scheduler.sim.replay import GreedyScheduler, PackingBound, Task, Workload, packing_bound, replay
from leitstand.scheduler.state import ClusterState


def workload(tasks: Sequence[tuple[Job, float, float]], nodes: int = 1, gpus: int = 1) -> Workload:
    return Workload(
        name="hand-made",
        nodes=tuple(make_node(f"n{i}", gpus) for i in range(nodes)),
        queues=(make_queue("a", quota_gpus=nodes * gpus),),
        tasks=tuple(Task(job, arrival, duration) for job, arrival, duration in tasks),
    )


def test_a_task_that_does_not_fit_waits_until_another_ends() -> None:
    w = workload([(make_job("a", gpus=1), 0.0, 100.0), (make_job("b", gpus=1), 10.0, 50.0)])
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.waits_seconds == (0.0, 90.0)
    assert r.finished == 2 and r.never_placed == 0
    assert r.completion_mean_seconds == pytest.approx((100.0 + 140.0) / 2)
    assert r.end_seconds == 150.0
    assert r.allocation_pct == pytest.approx(100.0)  # the window [0, 10] is fully allocated


def test_allocation_is_time_averaged_over_the_arrival_window() -> None:
    # 2 GPUs; one GPU busy for 5 s of the 10 s window: 1000 × 5 / (2000 × 10) = 25 %.
    w = workload([(make_job("a", gpus=1), 0.0, 5.0), (make_job("b", gpus=1, gpu=0.5), 10.0, 1.0)], gpus=2)
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.allocation_pct == pytest.approx(25.0)
    assert r.window_seconds == 10.0
    # over the run [0, 11]: (5000 + 500) / (2000 × 11)
    assert r.allocation_pct_run == pytest.approx(100.0 * 5500 / 22000)


def test_fifo_backfill_lets_a_small_job_pass_a_big_one() -> None:
    w = workload(
        [
            (make_job("small-running", gpus=1), 0.0, 100.0),
            (make_job("big", gpus=2), 1.0, 10.0),
            (make_job("small", gpus=1), 2.0, 10.0),
        ],
        gpus=2,
    )
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.waits_seconds == (0.0, 99.0, 0.0)


def test_a_task_that_never_fits_counts_with_a_censored_wait() -> None:
    w = workload([(make_job("ok", gpus=1), 0.0, 30.0), (make_job("huge", gpus=8), 5.0, 10.0)])
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.never_placed == 1
    assert r.waits_seconds == (0.0, 25.0)  # the run ends at 30 s, when "ok" finishes


class Scripted:
    """Binds every pending job on n0 GPU 0; evicts `victim` at `evict_at` (optionally re-binding it)."""

    name = "scripted"

    def __init__(self, victim: str, evict_at: float, kind: EvictionKind) -> None:
        self.victim, self.evict_at, self.kind = JobId(victim), evict_at, kind
        self.done = False

    def schedule(
        self,
        now: float,
        pending: Sequence[Job],
        running: Mapping[JobId, RunningJob],
        state: ClusterState,
        *,
        released: bool,
    ) -> Plan:
        here = (ReplicaPlacement(node=state.node_names[0], gpu_indices=(0,)),)
        if not self.done and now >= self.evict_at and self.victim in running:
            self.done = True
            ev = Eviction(self.victim, self.kind, JobId("x"), "test")
            rebind = (Binding(self.victim, here),) if self.kind is EvictionKind.CONSOLIDATE else ()
            return Plan(bindings=rebind, evictions=(ev,))
        free = int(state.gpu_free_milli[0, 0])
        bindings = []
        for job in pending:
            if job.gpu_milli_total <= free:
                bindings.append(Binding(job.id, here))
                free -= job.gpu_milli_total
        return Plan(bindings=tuple(bindings))


def test_an_evicted_job_is_requeued_with_its_remaining_duration() -> None:
    # "a" runs 0..40 of its 100 s and is preempted in the pass at 40 (b's arrival); the follow-up
    # pass at the same instant binds a (60 s left) and b: a ends at 100, b at 50.
    w = workload([(make_job("a", gpus=1, gpu=0.5), 0.0, 100.0), (make_job("b", gpus=1, gpu=0.5), 40.0, 10.0)])
    r = replay(w, Scripted("a", 40.0, EvictionKind.PREEMPT))
    assert r.evictions == 1 and r.moves == 0
    assert r.waits_seconds == (0.0, 0.0)  # waiting counts until the *first* start
    assert r.finished == 2
    assert r.end_seconds == 100.0
    assert r.completion_mean_seconds == pytest.approx((100.0 + 10.0) / 2)


def test_a_move_keeps_progress_and_start_time() -> None:
    w = workload([(make_job("a", gpus=1, gpu=0.5), 0.0, 100.0), (make_job("b", gpus=1, gpu=0.5), 40.0, 10.0)])
    r = replay(w, Scripted("a", 40.0, EvictionKind.CONSOLIDATE))
    assert r.moves == 1 and r.evictions == 0
    # a still finishes at 0 + 100; the scripted plan moved a but did not bind b, so b waits for
    # the next event (a's departure at 100) and ends at 110.
    assert r.completion_mean_seconds == pytest.approx((100.0 + 70.0) / 2)
    assert r.waits_seconds == (0.0, 60.0)


def test_a_move_with_restart_cost_loses_its_progress() -> None:
    w = workload([(make_job("a", gpus=1, gpu=0.5), 0.0, 100.0), (make_job("b", gpus=1, gpu=0.5), 40.0, 10.0)])
    r = replay(w, Scripted("a", 40.0, EvictionKind.CONSOLIDATE), move_cost="restart")
    assert r.moves == 1 and r.evictions == 0
    # a runs its full 100 s again from the move at 40 and ends at 140; b starts then and ends at 150.
    assert r.completion_mean_seconds == pytest.approx((140.0 + 110.0) / 2)
    assert r.waits_seconds == (0.0, 100.0)
    assert r.lost_gpu_hours == pytest.approx(40.0 * 0.5 / 3600)  # 40 s of half a GPU run again


def test_an_unknown_move_cost_is_refused() -> None:
    w = workload([(make_job("a", gpus=1), 0.0, 10.0)])
    with pytest.raises(ValueError, match="move_cost"):
        replay(w, GreedyScheduler("bestfit"), move_cost="cheap")


def test_replay_is_deterministic() -> None:
    tasks = [(make_job(f"t{i}", gpus=1 + i % 2), float(i), 5.0 + (i * 7) % 13) for i in range(40)]
    w = workload(tasks, nodes=2, gpus=4)
    a = replay(w, GreedyScheduler("bestfit"))
    b = replay(w, GreedyScheduler("bestfit"))
    assert a.waits_seconds == b.waits_seconds
    assert a.allocation_timeline == b.allocation_timeline


def test_the_warm_up_is_left_out_of_every_metric() -> None:
    # 2 GPUs; "a" holds one GPU over [0, 5]; measured window [4, 10]: 1000 × 1 / (2000 × 6).
    w = workload([(make_job("a", gpus=1), 0.0, 5.0), (make_job("b", gpus=1), 10.0, 20.0)], gpus=2)
    r = replay(w, GreedyScheduler("bestfit"), warmup_seconds=4.0)
    assert r.allocation_pct == pytest.approx(100.0 * 1000 / 12000)
    assert r.allocation_pct_window == pytest.approx(25.0)
    assert r.measured_tasks == 1 and r.waits_seconds == (0.0,)
    assert r.completion_mean_seconds == 20.0
    with pytest.raises(ValueError, match="warm-up"):
        replay(w, GreedyScheduler("bestfit"), warmup_seconds=10.0)


def test_with_an_interval_a_pass_waits_for_the_next_tick() -> None:
    w = workload([(make_job("a", gpus=1), 0.0, 5.0), (make_job("b", gpus=1), 3.0, 5.0)], gpus=2)
    r = replay(w, GreedyScheduler("bestfit"), interval_seconds=10.0)
    assert r.waits_seconds == (0.0, 7.0)
    assert r.passes == 2


def test_fully_idle_node_hours_are_integrated_over_the_window() -> None:
    # 2 nodes × 1 GPU; one node busy for 5 s of the 10 s window: idle 1 × 5 + 2 × 5 = 15 node-seconds.
    w = workload([(make_job("a", gpus=1), 0.0, 5.0), (make_job("b", gpus=1, gpu=0.5), 10.0, 1.0)], nodes=2)
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.idle_node_hours == pytest.approx(15.0 / 3600.0)
    assert r.idle_node_pct == pytest.approx(75.0)
    assert r.idle_gpu_pct == pytest.approx(75.0)


def test_a_cpu_only_task_keeps_its_node_from_being_idle() -> None:
    w = workload([(make_job("cpu", gpus=0, cpu_milli=1000), 0.0, 20.0), (make_job("b", gpus=1), 10.0, 1.0)])
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.idle_node_hours == 0.0 and r.allocation_pct == 0.0


def test_packing_bound_gives_a_share_over_half_a_gpu_its_own_gpu() -> None:
    def bound(*milli: int) -> PackingBound:
        tasks = [(make_job(f"t{i}", gpus=1, gpu=m / 1000), 0.0, 10.0) for i, m in enumerate(milli)]
        return packing_bound(workload([*tasks, (make_job("last", gpus=1), 10.0, 1.0)]), start=0.0, end=10.0)

    # 600 leaves 400, which takes the 300: 900 milli on 1 GPU.
    assert bound(600, 300).gpu_time_pct == pytest.approx(90.0)
    # a 500 does not fit a 400 leftover: 1,100 milli need 1.5 GPUs.
    assert bound(600, 500).gpu_time_pct == pytest.approx(100.0 * 1100 / 1500)
    # two 500s share one GPU; whole GPUs waste nothing.
    assert bound(500, 500).gpu_time_pct == pytest.approx(100.0)
    # by task count the task arriving at the window's end counts too (a whole GPU: 1,900 / 2,000).
    assert bound(600, 300).tasks_pct == pytest.approx(95.0)


def test_our_cycle_builds_a_given_placement_policy_once_and_schedules_with_it() -> None:
    """`CycleScheduler(context_factory=...)`: the policy (e.g. with the trace's typical shapes) is
    built once for the simulator's state and every pass schedules with it."""
    from leitstand.scheduler.policies import PolicyContext
    from leitstand.scheduler.sim.replay import CycleScheduler, cycle_config

    w = workload([(make_job(f"t{i}", gpus=1), float(i), 30.0) for i in range(6)], nodes=2, gpus=2)
    built: list[PolicyContext] = []

    def factory(state: ClusterState) -> PolicyContext:
        built.append(PolicyContext.build(state, "leitstand"))
        return built[-1]

    ours = CycleScheduler(w.nodes, w.queues, cycle_config(policy="leitstand"), context_factory=factory)
    seen: list[object] = []
    run_cycle = ours._run_cycle

    def spy(*args: object, **kwargs: object) -> Plan:
        seen.append(kwargs.get("policy_context"))
        return run_cycle(*args, **kwargs)  # type: ignore[arg-type]

    ours._run_cycle = spy  # type: ignore[assignment]
    r = replay(w, ours)
    assert r.finished == 6
    assert len(built) == 1 and seen and all(context is built[0] for context in seen)
