"""Reservations for starving gangs (`scheduler/actions/reserve.py`): a stream of small jobs starves a
big gang without them and not with them; what is held, for whom, and what may use held nodes.
One-cycle cases of the same rules are the scenario files tests/scenarios/reserve-*.yaml."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from builders import make_cluster, make_job, make_queue, make_running, make_snapshot

from leitstand.scheduler.actions.reserve import HELD_FOR_GANG, RESERVED
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import EvictionKind, SchedulerConfig
from leitstand.scheduler.sim import acme
from leitstand.scheduler.sim.openb import TraceFormatError

RESERVE = SchedulerConfig(reserve_after_seconds=600)


def _reasons(plan):  # type: ignore[no-untyped-def]
    return {p.job_id: p for p in plan.pending}


def _stream_workload() -> acme.AcmeWorkload:
    """2 racks × 2 nodes × 8 GPUs; a non-preemptible 2 × 8-GPU gang (one rack) arrives at 1,005 s into a
    stream of preemptible 1-GPU jobs of 300 s, one every 10 s: ~30 of 32 GPUs stay busy, so without a
    hold no rack is ever empty."""
    nodes, topology = make_cluster(4, racks=2)
    gang = make_job("gang", queue="llm", gpus=8, replicas=2, required="rack", preemptible=False, created_at=1005)
    small = [acme.Arrival(make_job(f"s{k:04d}", queue="llm", gpus=1, created_at=10.0 * k), 300.0) for k in range(720)]
    arrivals = sorted([acme.Arrival(gang, 1800.0), *small], key=lambda a: (a.job.created_at, a.job.id))
    return acme.AcmeWorkload(nodes, topology, tuple(arrivals), horizon=7_200.0, end=7_200.0)


def test_stream_of_small_jobs_starves_the_gang_without_reservations_and_not_with_them() -> None:
    workload = _stream_workload()
    off = acme.simulate(workload, SchedulerConfig(), label="off", period=60.0)
    on = acme.simulate(workload, RESERVE, label="on", period=60.0)
    assert off.gangs_never == 1 and not off.gang_waits  # two hours without an empty rack
    assert on.gangs_never == 0 and len(on.gang_waits) == 1
    # Waited 600 s before the hold began; every small job running then ended within 300 s; then the
    # next cycle starts it (evicting the backfill that used the held rack meanwhile).
    assert on.gang_waits[0] <= 600 + 300 + 2 * 60
    assert on.evictions >= 1
    assert on.reserved_cycles >= 1


def _busy_racks(n_racks: int) -> tuple[object, list]:  # type: ignore[type-arg]
    """`n_racks` racks of 2 × 8 GPUs, each node with one non-preemptible 1-GPU job started at 100."""
    nodes, topology = make_cluster(2 * n_racks, racks=n_racks)
    running = [
        make_running(make_job(f"small-{n.name}", queue="llm", gpus=1, priority=100), [(n.name, [0])], started_at=100)
        for n in nodes
    ]
    return (nodes, topology), running


def test_at_most_max_reserved_gangs_hold_capacity_each_in_its_own_rack() -> None:
    (nodes, topology), running = _busy_racks(3)
    gangs = [
        make_job(f"gang-{k}", queue="llm", gpus=8, replicas=2, required="rack", priority=100, created_at=k)
        for k in range(3)
    ]
    snap = make_snapshot(nodes, [make_queue("llm", quota_gpus=48)], gangs, running, topology=topology, now=1000)
    plan = run_cycle(snap, replace(RESERVE, max_reserved_gangs=2))
    reasons = _reasons(plan)
    held = [g.id for g in gangs if reasons[g.id].code == RESERVED]
    assert held == ["gang-0", "gang-1"]  # oldest first at equal priority
    assert reasons["gang-2"].code != RESERVED
    racks = {reasons[g].message.split(" is held")[0].split(": ")[-1] for g in held}
    assert len(racks) == 2  # disjoint holds


def test_hold_takes_only_the_nodes_the_gang_needs() -> None:
    # One rack of 4 nodes; a 1 × 8-GPU job has waited: one node is held (the node level is the
    # tightest that holds it), so a non-preemptible 1-GPU job still starts on another node.
    nodes, topology = make_cluster(4)
    running = [
        make_running(make_job(f"small-{k}", queue="llm", gpus=1, priority=100), [(f"n{k}", [0])], started_at=100)
        for k in range(4)
    ]
    big = make_job("big", queue="llm", gpus=8, priority=100, created_at=0)
    other = make_job("other", queue="llm", gpus=1, priority=100, created_at=900)
    snap = make_snapshot(nodes, [make_queue("llm", quota_gpus=32)], [big, other], running, topology=topology, now=1000)
    plan = run_cycle(snap, RESERVE)
    reasons = _reasons(plan)
    assert reasons["big"].code == RESERVED
    assert "node n" in reasons["big"].message and "(1 nodes, 8 GPUs)" in reasons["big"].message
    assert [b.job_id for b in plan.bindings] == ["other"]


def test_non_preemptible_job_that_fits_only_on_held_nodes_waits_with_held_for_gang() -> None:
    nodes, topology = make_cluster(2)
    running = [make_running(make_job("old", queue="llm", gpus=2, priority=100), [("n0", [0, 1])], started_at=100)]
    gang = make_job("gang", queue="llm", gpus=8, replicas=2, priority=100, created_at=0)
    blocked = make_job("np", queue="llm", gpus=4, priority=100, created_at=900)
    snap = make_snapshot(
        nodes, [make_queue("llm", quota_gpus=32)], [gang, blocked], running, topology=topology, now=1000
    )
    reasons = _reasons(run_cycle(snap, RESERVE))
    assert reasons["gang"].code == RESERVED
    assert reasons["np"].code == HELD_FOR_GANG
    assert "gang" in reasons["np"].message
    # Without reservations the same job starts.
    plan = run_cycle(snap, SchedulerConfig())
    assert "np" in {b.job_id for b in plan.bindings}


def test_preemptible_jobs_running_before_the_hold_are_evicted_only_after_notice() -> None:
    nodes, topology = make_cluster(2)
    old = make_running(make_job("old", queue="llm", gpus=2), [("n0", [0, 1])], started_at=100)
    # Same priority as the old job: preemption does not apply, only the reservation can evict it.
    gang = make_job("gang", queue="llm", gpus=8, replicas=2, preemptible=False, created_at=0)
    queues = [make_queue("llm", quota_gpus=32)]
    # The hold began at 600; at 1000 the old job has had 400 s of notice (< 600): the gang waits.
    early = run_cycle(make_snapshot(nodes, queues, [gang], [old], topology=topology, now=1000), RESERVE)
    assert _reasons(early)["gang"].code == RESERVED and not early.evictions
    # At 1300 (notice 700 s >= 600) the old preemptible job of the gang's own queue is evicted.
    late = run_cycle(make_snapshot(nodes, queues, [gang], [old], topology=topology, now=1300), RESERVE)
    assert [(e.job_id, e.kind, e.for_job) for e in late.evictions] == [("old", EvictionKind.PREEMPT, "gang")]
    assert [b.job_id for b in late.bindings] == ["gang"]


def test_queue_above_its_fair_share_gets_no_hold() -> None:
    nodes, topology = make_cluster(4)
    queues = [make_queue("a", quota_gpus=8), make_queue("b", quota_gpus=24)]
    # Queue a holds 24 GPUs (over its share while b asks for its quota); its starving gang gets no hold.
    running = [
        make_running(make_job(f"a{k}", queue="a", gpus=8, priority=100), [(f"n{k}", list(range(8)))], started_at=100)
        for k in range(3)
    ]
    pending = [
        make_job("a-gang", queue="a", gpus=8, replicas=2, created_at=0),
        make_job("b-job", queue="b", gpus=8, replicas=3, created_at=900),
    ]
    plan = run_cycle(make_snapshot(nodes, queues, pending, running, topology=topology, now=1000), RESERVE)
    assert _reasons(plan)["a-gang"].code != RESERVED


def test_reservations_are_off_by_default() -> None:
    assert SchedulerConfig().reserve_after_seconds is None
    (nodes, topology), running = _busy_racks(2)
    gang = make_job("gang", queue="llm", gpus=8, replicas=2, required="rack", priority=100, created_at=0)
    snap = make_snapshot(nodes, [make_queue("llm", quota_gpus=32)], [gang], running, topology=topology, now=10**6)
    assert _reasons(run_cycle(snap))["gang"].code == "Insufficient"


def test_acme_tables_load_and_name_the_bad_cell(tmp_path: Path) -> None:
    (tmp_path / acme.HISTOGRAM).write_text(
        "cluster,gpu_num_min,gpu_num_max,jobs\nKalos,512,513,346\nKalos,1024,1024,20x\n"
    )
    (tmp_path / acme.DURATIONS).write_text("cluster,type,metric,le_seconds,cdf_percent\n")
    with pytest.raises(TraceFormatError, match=r"gpu_num_histogram.csv:3: column jobs: '20x'"):
        acme.load_tables(tmp_path)


def test_acme_duration_cdf_samples_stay_within_the_table() -> None:
    import numpy as np

    cdf = acme.Cdf((8.0, 16.0, 32.0), (0.0, 50.0, 100.0))
    samples = cdf.sample(np.random.default_rng(0), 10_000)
    assert samples.min() >= 8.0 and samples.max() <= 32.0
    assert abs(float(np.median(samples)) - 16.0) < 1.0


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"reserve_after_seconds": -1.0}, "reserve_after_seconds"),
        ({"reserve_after_seconds": float("nan")}, "reserve_after_seconds"),
        ({"reserve_min_gpus": 0}, "reserve_min_gpus"),
        ({"max_reserved_gangs": -1}, "max_reserved_gangs"),
    ],
)
def test_bad_reservation_knobs_name_the_field(knobs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**knobs)  # type: ignore[arg-type]
