"""Unit tests of "never fits" (`placement.never_fits`, code `NeverFits`): a gang that not even an empty
cluster could hold waits with the numbers that rule it out, distinct from waiting for capacity, and
no action searches victims for it."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_cluster, make_job, make_node, make_queue, make_running, make_snapshot

from leitstand.scheduler.actions.context import POLICY_BLOCKS, Code
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import JobId, SchedulerConfig, Topology
from leitstand.scheduler.placement import (
    INSUFFICIENT,
    INVALID_REQUEST,
    NEVER_FITS,
    NO_TOPOLOGY_DOMAIN,
    GangPlacement,
    GangRequest,
    Unplaceable,
    never_fits,
    place_gang,
)
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState

ENGINES = ["numba", "reference"]


def _place(state: ClusterState, engine: str = "numba", **job_kwargs: object) -> GangPlacement | Unplaceable:
    job = make_job(**job_kwargs)  # type: ignore[arg-type]
    return place_gang(state, GangRequest.for_job(state, job), PolicyContext.build(state), engine=engine)


def _never(result: GangPlacement | Unplaceable) -> str:
    assert isinstance(result, Unplaceable) and result.code == NEVER_FITS, result
    assert "no eviction can make room" in result.message
    return result.message


def _racks(n_nodes: int = 8, racks: int = 2) -> ClusterState:
    nodes, topology = make_cluster(n_nodes, 8, racks=racks)
    return ClusterState.from_nodes(nodes, topology)


def _fill(state: ClusterState) -> None:
    for n in range(state.n_nodes):
        state.allocate(n, list(range(int(state.gpu_count[n]))), 1000, 0, 0)


# --- the diagnosis --------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_replica_larger_than_every_eligible_node(engine: str) -> None:
    nodes = [make_node("big", 16, model="H100"), make_node("a", 8), make_node("b", 8)]
    state = ClusterState.from_nodes(nodes)
    message = _never(_place(state, engine, gpus=16, models=["B200"]))
    assert "asks 16 GPUs per replica; the largest eligible node has 8" in message
    assert "; eligible: nodes of GPU model B200;" in message
    message = _never(_place(state, engine, gpus=16, allowed_nodes=["a", "b"]))
    assert "the largest eligible node has 8" in message
    assert isinstance(_place(state, engine, gpus=16), GangPlacement)  # the big node is eligible


@pytest.mark.parametrize("engine", ENGINES)
def test_replica_larger_in_cpu_memory_or_all_at_once(engine: str) -> None:
    state = ClusterState.from_nodes([make_node("a", 8, cpu_milli=16_000, memory_mib=65_536)])
    assert "asks 32 cores CPU per replica; the largest eligible node has 16 cores" in _never(
        _place(state, engine, gpus=1, cpu_milli=32_000)
    )
    assert "asks 131072 MiB memory per replica; the largest eligible node has 65536 MiB" in _never(
        _place(state, engine, gpus=1, memory_mib=131_072)
    )
    mixed = ClusterState.from_nodes([make_node("gpu", 8, cpu_milli=16_000), make_node("cpu", 2, cpu_milli=224_000)])
    assert "no eligible node has the GPUs, CPU and memory of one replica" in _never(
        _place(mixed, engine, gpus=4, cpu_milli=100_000)
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_slices_on_too_few_distinct_gpus(engine: str) -> None:
    state = ClusterState.from_nodes([make_node("a", 2), make_node("b", 2)])
    request = GangRequest(1, 3, 500, 0, 0, state.node_mask())
    result = place_gang(state, request, PolicyContext.build(state), engine=engine)
    assert "asks slices of 3 distinct GPUs per replica; the largest eligible node has 2" in _never(result)


@pytest.mark.parametrize("engine", ENGINES)
def test_gang_larger_than_all_eligible_nodes(engine: str) -> None:
    state = _racks(4, racks=1)
    message = _never(_place(state, engine, gpus=8, replicas=5))
    assert "5 × 8 GPUs needs 40 GPUs; all 4 eligible nodes together have 32 GPUs" in message
    assert "room for 4 of 5 replicas even when empty" in message
    # CPU binds: 4 nodes × 2 replicas of 100 cores
    message = _never(_place(state, engine, gpus=1, replicas=9, cpu_milli=100_000))
    assert "room for 8 of 9 replicas even when empty" in message


@pytest.mark.parametrize("engine", ENGINES)
def test_gang_larger_than_the_largest_required_domain(engine: str) -> None:
    state = _racks(8, racks=2)  # two racks of 4 × 8 GPUs
    message = _never(_place(state, engine, gpus=8, replicas=5, required="rack"))
    assert "needs 40 GPUs in one rack; the largest rack (r0) has 32 GPUs on eligible nodes" in message
    assert "relax the required rack" in message
    message = _never(_place(state, engine, gpus=8, replicas=2, required="node"))
    assert "needs 16 GPUs in one node; the largest node (n0) has 8 GPUs" in message
    # the largest rack counts eligible nodes only
    message = _never(_place(state, engine, gpus=8, replicas=3, required="rack", allowed_nodes=["n0", "n1", "n4"]))
    assert "the largest rack (r0) has 16 GPUs on eligible nodes (room for 2 of 3 replicas" in message


@pytest.mark.parametrize("engine", ENGINES)
def test_no_labelled_node_for_the_required_level(engine: str) -> None:
    state = ClusterState.from_nodes([make_node("a", topology=("", ""))], Topology(("spine", "rack")))
    assert "requires one rack, and no eligible node carries a rack label" in _never(
        _place(state, engine, gpus=1, required="rack")
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_busy_is_not_never(engine: str) -> None:
    state = _racks(8, racks=2)
    _fill(state)
    busy = _place(state, engine, gpus=8, replicas=4)
    assert isinstance(busy, Unplaceable) and busy.code == INSUFFICIENT
    rack = _place(state, engine, gpus=8, replicas=4, required="rack")
    assert isinstance(rack, Unplaceable) and rack.code in (INSUFFICIENT, NO_TOPOLOGY_DOMAIN)
    assert _never(_place(state, engine, gpus=8, replicas=5, required="rack"))


def test_the_diagnosis_is_memoised_per_shape_and_mask_but_worded_per_request() -> None:
    nodes = [make_node("a", 8, model="B200", jurisdiction="eu"), make_node("b", 8, model="B200", jurisdiction="eu")]
    state = ClusterState.from_nodes(nodes)
    by_model = GangRequest.for_job(state, make_job(gpus=8, replicas=3, models=["B200"]))
    by_place = GangRequest.for_job(state, make_job(gpus=8, replicas=3, jurisdiction="eu"))
    assert np.array_equal(by_model.node_mask, by_place.node_mask)
    first = never_fits(state, by_model)
    assert first is not None and len(state.fit_cache) == 1
    second = never_fits(state.copy(), by_place)  # copies share the memo
    assert second is not None and len(state.fit_cache) == 1
    assert "GPU model B200" in first.message and "jurisdiction eu" in second.message
    assert never_fits(state, GangRequest.for_job(state, make_job(gpus=8, replicas=2))) is None


# --- the cycle ------------------------------------------------------------------------------------------


def test_never_fits_is_a_block_for_every_action() -> None:
    assert Code.NEVER_FITS == NEVER_FITS
    assert Code.NEVER_FITS in POLICY_BLOCKS


def _forbid_victim_search(monkeypatch: pytest.MonkeyPatch) -> None:
    import leitstand.scheduler.actions.consolidate as consolidate
    import leitstand.scheduler.actions.context as context

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a victim search for a job that never fits")

    monkeypatch.setattr(context, "choose_victims", refuse)
    monkeypatch.setattr(consolidate, "choose_victims", refuse)


def test_no_victim_search_for_a_job_that_never_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reclaim (b borrows), preempt (a lower-priority job of a's own queue) and consolidation (a
    movable job) could all act here; none may search for a gang bigger than the cluster."""
    queues = [make_queue("a", quota_gpus=16), make_queue("b", quota_gpus=0)]
    nodes = [make_node(f"n{i}", 8) for i in range(3)]
    running = [
        make_running(make_job("b-borrow", "b", 8, priority=10), [("n0", range(8))]),
        make_running(make_job("a-low", "a", 4, priority=10), [("n1", range(4))]),
    ]
    pending = [make_job("a-huge", "a", 8, replicas=4, priority=90)]
    snap = make_snapshot(nodes, queues, pending, running, now=1000)
    _forbid_victim_search(monkeypatch)
    plan = run_cycle(snap)
    assert plan.evictions == () and plan.bindings == ()
    (reason,) = plan.pending
    assert reason.code == NEVER_FITS
    assert "4 × 8 GPUs needs 32 GPUs; all 3 eligible nodes together have 24 GPUs" in reason.message


def test_queue_at_limit_job_that_never_fits_gets_no_preemption(monkeypatch: pytest.MonkeyPatch) -> None:
    queues = [make_queue("a", quota_gpus=8, limit_gpus=8)]
    nodes = [make_node("n0", 8)]
    running = [make_running(make_job("a-low", "a", 8, priority=10), [("n0", range(8))])]
    pending = [make_job("a-huge", "a", 16, priority=90)]
    _forbid_victim_search(monkeypatch)
    plan = run_cycle(make_snapshot(nodes, queues, pending, running, now=1000))
    assert plan.evictions == ()
    reasons = {p.job_id: p for p in plan.pending}
    assert reasons[JobId("a-huge")].code == NEVER_FITS
    assert "asks 16 GPUs per replica; the largest eligible node has 8" in reasons[JobId("a-huge")].message


def test_a_job_that_fits_an_empty_cluster_still_gets_victims() -> None:
    queues = [make_queue("a", quota_gpus=16), make_queue("b", quota_gpus=0)]
    nodes = [make_node(f"n{i}", 8) for i in range(2)]
    running = [make_running(make_job(f"b{i}", "b", 8, priority=10), [(f"n{i}", range(8))]) for i in range(2)]
    plan = run_cycle(make_snapshot(nodes, queues, [make_job("a-gang", "a", 8, replicas=2)], running, now=1000))
    assert {e.job_id for e in plan.evictions} == {"b0", "b1"}
    assert [b.job_id for b in plan.bindings] == ["a-gang"]


def test_never_fits_reasons_are_shared_by_identical_jobs() -> None:
    pending = [make_job(f"huge-{i}", gpus=8, replicas=5, created_at=i) for i in range(3)]
    plan = run_cycle(make_snapshot(pending=pending), SchedulerConfig(consolidation=False))
    assert {p.code for p in plan.pending} == {NEVER_FITS}
    assert len({p.message for p in plan.pending}) == 1


@pytest.mark.parametrize(("what", "kwargs", "code"), [
    ("2^31 - 1 one-GPU replicas", {"gpus": 1, "replicas": 2**31 - 1}, NEVER_FITS),
    ("2^31 - 1 GPUs in one replica", {"gpus": 2**31 - 1}, NEVER_FITS),
    ("2^31 - 1 replicas asking for nothing", {"gpus": 0, "replicas": 2**31 - 1}, INVALID_REQUEST),
])
def test_a_hostile_gang_is_answered_without_sizing_anything_by_it(what: str, kwargs: dict[str, int], code: str) -> None:
    """A tenant's TrainingJob with replicas or gpus near 2^31 once made the cycle allocate 8 GiB for the
    answer's arrays and the kernel OOM-killed the operator (found by `leitstand bench hostile`). Now the
    gang gets its reason from numbers alone; memory is measured (tracemalloc sees numpy's buffers)."""
    import tracemalloc

    nodes, topology = make_cluster(16, racks=4)
    snapshot = make_snapshot(nodes, [make_queue("a", quota_gpus=8)], [make_job("hostile", "a", **kwargs)],
                             topology=topology)
    run_cycle(make_snapshot(nodes, [make_queue("a")], [], topology=topology))  # compile outside the measurement
    tracemalloc.start()
    try:
        plan = run_cycle(snapshot)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.code for p in plan.pending] == [code], (what, plan.pending)
    assert peak < 64 * 2**20, f"{what}: {peak / 2**20:.0f} MiB traced"
    assert not plan.bindings
