"""The migrate action (`actions/migrate.py`): free stranded GPU capacity by moving preemptible jobs,
only when a waiting job then starts, never moving what may not move.

The base case: two 2-GPU nodes, each with a non-preemptible whole-GPU job on GPU 1 and a half-GPU
job on GPU 0. Half a GPU is free on each node, a whole GPU nowhere, so the waiting 1-GPU job cannot
start; packing the two halves onto one GPU frees the other. Consolidation is off in these tests so
that only migration (off by default, on here) can move anything.
"""

from __future__ import annotations

import dataclasses

import pytest
from builders import make_job, make_node, make_queue, make_running, make_snapshot

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import EvictionKind, Node, Plan, RunningJob, SchedulerConfig

CONFIG = SchedulerConfig(consolidation=False, migration=True)


def base_case(
    *, halves_preemptible: bool = True, started_at: float = 0.0, second_half: float = 0.5
) -> tuple[list[Node], list[RunningJob]]:
    """The base case's nodes and running jobs (module docstring)."""
    nodes = [make_node("n0", 2), make_node("n1", 2)]
    running = [
        make_running(make_job("x0", gpus=1, preemptible=False), [("n0", [1])]),
        make_running(make_job("x1", gpus=1, preemptible=False), [("n1", [1])]),
        make_running(make_job("p0", gpu=0.5, preemptible=halves_preemptible), [("n0", [0])], started_at=started_at),
        make_running(
            make_job("p1", gpu=second_half, preemptible=halves_preemptible), [("n1", [0])], started_at=started_at
        ),
    ]
    return nodes, running


def stranded(
    *,
    halves_preemptible: bool = True,
    started_at: float = 0.0,
    second_half: float = 0.5,
    stats: dict[str, int] | None = None,
) -> Plan:
    nodes, running = base_case(halves_preemptible=halves_preemptible, started_at=started_at, second_half=second_half)
    snap = make_snapshot(nodes, [make_queue("a", quota_gpus=4)], [make_job("w", gpus=1)], running, now=1000)
    return run_cycle(snap, CONFIG, stats=stats)


def test_packing_two_halves_onto_one_gpu_starts_the_waiting_job() -> None:
    plan = stranded()
    assert [b.job_id for b in plan.bindings if b.job_id == "w"] == ["w"]
    moved = [e.job_id for e in plan.evictions]
    assert len(moved) == 1 and moved[0] in {"p0", "p1"}  # one half joins the other; that one stays
    assert all(e.kind is EvictionKind.CONSOLIDATE and e.for_job == "w" for e in plan.evictions)
    rebound = {b.job_id: b.placements for b in plan.bindings}
    assert moved[0] in rebound  # every moved job is placed again in the same plan
    # No GPU is over-committed: the half-GPU jobs share one GPU, w has the other one to itself.
    (w_place,) = rebound["w"]
    (half,) = rebound[moved[0]]
    assert (half.node, half.gpu_indices) != (w_place.node, w_place.gpu_indices)
    assert "w" not in {r.job_id for r in plan.pending}


def test_without_migration_nothing_moves_and_the_job_waits() -> None:
    nodes, running = base_case()
    snap = make_snapshot(nodes, [make_queue("a", quota_gpus=4)], [make_job("w", gpus=1)], running, now=1000)
    off = (dataclasses.replace(CONFIG, migration=False), dataclasses.replace(CONFIG, max_migration_tries=0))
    for config in (SchedulerConfig(consolidation=False), *off):  # the default is off
        plan = run_cycle(snap, config)
        assert plan.evictions == () and plan.bindings == ()


def test_no_move_when_allocation_would_not_rise() -> None:
    # The second job holds 0.6 of its GPU: the halves cannot share a GPU, no whole GPU can be freed,
    # so a try starts nobody and is rolled back.
    stats: dict[str, int] = {}
    plan = stranded(second_half=0.6, stats=stats)
    assert plan.evictions == () and plan.bindings == ()
    assert stats["migrate_tries"] >= 1 and stats.get("migrate_accepted", 0) == 0  # it was tried, and undone


def test_only_preemptible_jobs_move() -> None:
    plan = stranded(halves_preemptible=False)
    assert plan.evictions == () and plan.bindings == ()


def test_jobs_younger_than_the_minimum_runtime_stay() -> None:
    plan = stranded(started_at=1000 - CONFIG.min_runtime_seconds + 1)
    assert plan.evictions == () and plan.bindings == ()
    old_enough = stranded(started_at=1000 - CONFIG.min_runtime_seconds)
    assert [b.job_id for b in old_enough.bindings if b.job_id == "w"] == ["w"]


def test_the_waiting_job_passes_the_same_admission_checks_as_in_allocate() -> None:
    # The queue's limit leaves no room for w: migration must not start it (and so moves nothing).
    nodes, running = base_case()
    queues = [make_queue("a", quota_gpus=3, limit_gpus=3)]
    snap = make_snapshot(nodes, queues, [make_job("w", gpus=1)], running, now=1000)
    plan = run_cycle(snap, CONFIG)
    assert plan.evictions == () and plan.bindings == ()
    assert {r.job_id: r.code for r in plan.pending}["w"] == "QueueAtLimit"


@pytest.mark.parametrize("tries", [-1, -20])
def test_a_negative_number_of_tries_is_refused_by_name(tries: int) -> None:
    with pytest.raises(ValueError, match="max_migration_tries"):
        SchedulerConfig(max_migration_tries=tries)


@pytest.mark.parametrize("nodes", [0, -1])
def test_a_try_of_no_nodes_is_refused_by_name(nodes: int) -> None:
    with pytest.raises(ValueError, match="migration_nodes_per_try"):
        SchedulerConfig(migration_nodes_per_try=nodes)


def test_jobs_older_than_the_migration_age_stay() -> None:
    # The halves started at 0 and it is 1000 now: 1000 s old. A move restarts a pod; a job that ran
    # longer than migration_max_age_seconds would lose too much, so it stays (and w waits).
    nodes, running = base_case()
    snap = make_snapshot(nodes, [make_queue("a", quota_gpus=4)], [make_job("w", gpus=1)], running, now=1000)
    too_old = run_cycle(snap, dataclasses.replace(CONFIG, migration_max_age_seconds=999))
    assert too_old.evictions == () and too_old.bindings == ()
    young_enough = run_cycle(snap, dataclasses.replace(CONFIG, migration_max_age_seconds=1000))
    assert [b.job_id for b in young_enough.bindings if b.job_id == "w"] == ["w"]


@pytest.mark.parametrize("age", [-1.0, float("inf"), float("nan")])
def test_a_migration_age_that_is_not_a_number_of_seconds_is_refused_by_name(age: float) -> None:
    with pytest.raises(ValueError, match="migration_max_age_seconds"):
        SchedulerConfig(migration_max_age_seconds=age)


def quarters_and_halves() -> tuple[list[Node], list[RunningJob]]:
    """Two 2-GPU nodes, every job preemptible: n0 GPU 0 holds two halves, GPU 1 two quarters (half
    free); n1 GPU 0 two quarters (half free), GPU 1 two halves. Two moves free a whole GPU (e.g. one
    node's two quarters join the other's); a try moves all eight jobs and re-packs them."""
    nodes = [make_node("n0", 2), make_node("n1", 2)]

    def job(name: str, gpu: float, node: str, device: int, started_at: float) -> RunningJob:
        return make_running(make_job(name, gpu=gpu), [(node, [device])], started_at=started_at)

    running = [
        job("h0", 0.5, "n0", 0, 600), job("h1", 0.5, "n0", 0, 300),
        job("q0", 0.25, "n0", 1, 300), job("q1", 0.25, "n0", 1, 600),
        job("q2", 0.25, "n1", 0, 600), job("q3", 0.25, "n1", 0, 600),
        job("h2", 0.5, "n1", 1, 300), job("h3", 0.5, "n1", 1, 600),
    ]  # fmt: skip
    return nodes, running


def test_pruning_leaves_in_place_the_moves_the_room_does_not_need() -> None:
    nodes, running = quarters_and_halves()
    snap = make_snapshot(nodes, [make_queue("a", quota_gpus=4)], [make_job("w", gpus=1)], running, now=1000)
    as_found = run_cycle(snap, dataclasses.replace(CONFIG, migration_prune_moves=0))
    stats: dict[str, int] = {}
    pruned = run_cycle(snap, CONFIG, stats=stats)  # 16 pruning steps, the default
    for plan in (as_found, pruned):
        assert "w" in {b.job_id for b in plan.bindings}
        assert {e.job_id for e in plan.evictions} <= {b.job_id for b in plan.bindings}  # every move re-placed
    assert len(as_found.evictions) > 2  # the try as found moves more than the room needs
    assert len(pruned.evictions) == 2  # pruned: two moves, as few as the room needs

    def progress(plan: Plan) -> float:  # what the moved jobs had run (a restart throws it away)
        started = {held.job.id: held.started_at for held in running}
        return sum(1000 - started[e.job_id] for e in plan.evictions)

    assert progress(pruned) < progress(as_found)
    assert stats["migrate_pruned"] >= 1 and stats["migrate_prune_tries"] >= stats["migrate_pruned"]


@pytest.mark.parametrize("prune", [-1, -16])
def test_a_negative_number_of_pruning_steps_is_refused_by_name(prune: int) -> None:
    with pytest.raises(ValueError, match="migration_prune_moves"):
        SchedulerConfig(migration_prune_moves=prune)


def test_pruning_never_keeps_a_try_that_loses_more_progress() -> None:
    # n0 holds a half on GPU 0 (running 700 s) and a quarter on GPU 1 (400 s); n1 is full. Moving the
    # quarter onto the half's GPU frees GPU 1 for w. Pruning asks whether the quarter can stay: then
    # the half moves instead, which starts w as well but throws away more progress, so it is refused.
    nodes = [make_node("n0", 2), make_node("n1", 2)]
    running = [
        make_running(make_job("half", gpu=0.5), [("n0", [0])], started_at=300),
        make_running(make_job("quarter", gpu=0.25), [("n0", [1])], started_at=600),
        make_running(make_job("f0", gpu=0.25), [("n1", [0])], started_at=600),
        make_running(make_job("f1", gpu=0.75), [("n1", [0])], started_at=300),
        make_running(make_job("f2", gpu=0.75), [("n1", [1])], started_at=600),
        make_running(make_job("f3", gpu=0.25), [("n1", [1])], started_at=600),
    ]
    snap = make_snapshot(nodes, [make_queue("a", quota_gpus=8)], [make_job("w", gpus=1)], running, now=1000)
    for prune in (0, 16):
        plan = run_cycle(snap, dataclasses.replace(CONFIG, migration_prune_moves=prune))
        assert [e.job_id for e in plan.evictions] == ["quarter"] and "w" in {b.job_id for b in plan.bindings}
