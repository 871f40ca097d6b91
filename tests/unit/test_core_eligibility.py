"""Unit tests of per-job node eligibility: `Job.allowed_nodes` (node selector / affinity / tolerations,
computed by the operator) and `Job.jurisdictions` (data residency as a set), through placement, the
failure memo and every action that searches victims or re-places a job."""

from __future__ import annotations

import dataclasses

import pytest
from builders import make_cluster, make_job, make_node, make_queue, make_running, make_snapshot

from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.model import EvictionKind, Job, JobId, NodeName, RunningJob, SchedulerConfig
from leitstand.scheduler.placement import NO_MATCHING_NODES, GangPlacement, GangRequest, Unplaceable, place_gang
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState

ENGINES = ["numba", "reference"]


def _names(*names: str) -> frozenset[NodeName]:
    return frozenset(NodeName(n) for n in names)


def _place(state: ClusterState, engine: str = "numba", **job_kwargs: object) -> GangPlacement | Unplaceable:
    job = make_job(**job_kwargs)  # type: ignore[arg-type]
    return place_gang(state, GangRequest.for_job(state, job), PolicyContext.build(state), engine=engine)


def _placed_on(state: ClusterState, result: GangPlacement | Unplaceable) -> set[str]:
    assert isinstance(result, GangPlacement), result
    return {state.node_names[int(n)] for n in result.nodes}


# --- placement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_allowed_nodes_restrict_placement(engine: str) -> None:
    nodes, topology = make_cluster(4, 8)
    state = ClusterState.from_nodes(nodes, topology)
    result = _place(state, engine, gpus=4, replicas=3, allowed_nodes=["n2", "n3"])
    assert _placed_on(state, result) <= {"n2", "n3"}
    assert _placed_on(state, _place(state, engine, gpus=8, allowed_nodes=["n1"])) == {"n1"}


@pytest.mark.parametrize("engine", ENGINES)
def test_allowed_nodes_that_exclude_every_node_say_so(engine: str) -> None:
    nodes, topology = make_cluster(2, 8)
    state = ClusterState.from_nodes(nodes, topology)
    for allowed in ([], ["elsewhere"]):
        result = _place(state, engine, gpus=1, allowed_nodes=allowed)
        assert isinstance(result, Unplaceable) and result.code == NO_MATCHING_NODES
        assert "node selector/affinity/tolerations" in result.message
        assert "the job's node constraints exclude every node" in result.message


@pytest.mark.parametrize("engine", ENGINES)
def test_allowed_nodes_and_labels_that_do_not_meet_say_so(engine: str) -> None:
    nodes = [make_node("a", model="B200"), make_node("b", model="B200"), make_node("c", model="H100")]
    state = ClusterState.from_nodes(nodes)
    result = _place(state, engine, gpus=1, models=["H100"], allowed_nodes=["a", "b"])
    assert isinstance(result, Unplaceable) and result.code == NO_MATCHING_NODES
    assert "none of the 2 schedulable nodes the job's node selector/affinity/tolerations allow" in result.message
    assert "GPU model H100" in result.message
    state.schedulable[:2] = False
    result = _place(state, engine, gpus=1, allowed_nodes=["a", "b"])
    assert isinstance(result, Unplaceable) and result.code == NO_MATCHING_NODES
    assert "unschedulable" in result.message


@pytest.mark.parametrize("engine", ENGINES)
def test_jurisdictions_are_any_of_the_set(engine: str) -> None:
    nodes = [make_node(name, jurisdiction=place) for name, place in (("de", "eu-de"), ("fr", "eu-fr"), ("us", "us"))]
    state = ClusterState.from_nodes(nodes)
    result = _place(state, engine, gpus=8, replicas=2, jurisdictions=["eu-de", "eu-fr"])
    assert _placed_on(state, result) == {"de", "fr"}
    assert _placed_on(state, _place(state, engine, gpus=8, jurisdiction="us")) == {"us"}
    missing = _place(state, engine, gpus=1, jurisdictions=["ch", "li"])
    assert isinstance(missing, Unplaceable) and missing.code == NO_MATCHING_NODES
    assert "jurisdiction ch|li" in missing.message


def test_request_carries_the_constraints_for_messages() -> None:
    state = ClusterState.from_nodes([make_node("a", jurisdiction="eu-de")])
    allowed = _names("a")
    job = dataclasses.replace(make_job(gpus=1, jurisdictions=["eu-de"]), allowed_nodes=allowed)
    request = GangRequest.for_job(state, job)
    assert request.allowed_nodes is allowed
    assert request.jurisdictions == frozenset({"eu-de"})
    assert request.node_mask.tolist() == [True]


# --- the cycle ------------------------------------------------------------------------------------------


def test_failure_memo_is_not_shared_between_different_allowed_sets() -> None:
    nodes = [make_node("n0", 8), make_node("n1", 8)]
    running = [make_running(make_job("r", gpus=8, priority=125), [("n0", range(8))])]
    pending = [
        make_job("only-n0", gpus=8, allowed_nodes=["n0"], created_at=1),
        make_job("only-n1", gpus=8, allowed_nodes=["n1"], created_at=2),
    ]
    plan = run_cycle(make_snapshot(nodes, pending=pending, running=running), SchedulerConfig(consolidation=False))
    assert [b.job_id for b in plan.bindings] == ["only-n1"]
    assert {p.node for p in plan.bindings[0].placements} == {"n1"}
    assert [p.job_id for p in plan.pending] == ["only-n0"]


def test_shape_key_tells_allowed_sets_and_jurisdictions_apart() -> None:
    from leitstand.scheduler.actions.context import CycleContext

    a = make_job("a", gpus=8)
    same = [
        dataclasses.replace(a, id=JobId("b"), allowed_nodes=_names("n0", "n1")),
        dataclasses.replace(a, id=JobId("c"), allowed_nodes=_names("n1", "n0")),  # equal, another object
    ]
    other = dataclasses.replace(a, id=JobId("d"), allowed_nodes=_names("n0"))
    resident = dataclasses.replace(a, id=JobId("e"), jurisdictions=frozenset({"eu"}))
    state = ClusterState.from_nodes([make_node("n0"), make_node("n1")])

    class _NoReservations:  # shape_key reads only this of the context
        def __init__(self) -> None:
            self.reserved_pools: dict[str, str | None] = {}

    def k(job: Job) -> object:
        return CycleContext.shape_key(_NoReservations(), job, GangRequest.for_job(state, job))  # type: ignore[arg-type]

    assert k(same[0]) == k(same[1])
    assert len({k(a), k(same[0]), k(other), k(resident)}) == 4


def test_reclaim_evicts_only_on_allowed_nodes() -> None:
    queues = [make_queue("a", quota_gpus=8), make_queue("b", quota_gpus=0)]
    nodes = [make_node("n0", 8), make_node("n1", 8)]
    running = [
        make_running(make_job("b-cheap", "b", 8, priority=10), [("n0", range(8))]),
        make_running(make_job("b-dear", "b", 8, priority=40), [("n1", range(8))]),
    ]
    free_choice = run_cycle(make_snapshot(nodes, queues, [make_job("a1", "a", 8)], running, now=1000))
    assert [e.job_id for e in free_choice.evictions] == ["b-cheap"]
    pending = [make_job("a1", "a", 8, allowed_nodes=["n1"])]
    plan = run_cycle(make_snapshot(nodes, queues, pending, running, now=1000))
    assert [(e.job_id, e.kind) for e in plan.evictions] == [("b-dear", EvictionKind.RECLAIM)]
    assert {p.node for p in plan.bindings[0].placements} == {"n1"}


def test_preempt_evicts_only_on_allowed_nodes() -> None:
    queues = [make_queue("a", quota_gpus=16, limit_gpus=16)]
    nodes = [make_node("n0", 8), make_node("n1", 8)]
    running = [
        make_running(make_job("low", "a", 8, priority=10), [("n0", range(8))]),
        make_running(make_job("mid", "a", 8, priority=40), [("n1", range(8))]),
    ]
    pending = [make_job("high", "a", 8, priority=90, allowed_nodes=["n1"])]
    plan = run_cycle(make_snapshot(nodes, queues, pending, running, now=1000))
    assert [(e.job_id, e.kind) for e in plan.evictions] == [("mid", EvictionKind.PREEMPT)]
    assert {p.node for p in plan.bindings[0].placements} == {"n1"}


def test_no_victims_outside_the_allowed_nodes() -> None:
    queues = [make_queue("a", quota_gpus=8), make_queue("b", quota_gpus=0)]
    nodes = [make_node("n0", 8), make_node("n1", 8)]
    running = [
        make_running(make_job("b-evictable", "b", 8, priority=10), [("n0", range(8))]),
        make_running(make_job("b-protected", "b", 8, preemptible=False), [("n1", range(8))]),
    ]
    pending = [make_job("a1", "a", 8, allowed_nodes=["n1"])]
    plan = run_cycle(make_snapshot(nodes, queues, pending, running, now=1000))
    assert plan.evictions == () and plan.bindings == ()


def test_consolidation_re_places_a_moved_job_only_on_its_allowed_nodes() -> None:
    queues = [make_queue("a", quota_gpus=8), make_queue("b", quota_gpus=8)]
    nodes = [make_node("n0", 8), make_node("n1", 8)]

    def running(pinned: bool) -> list[RunningJob]:
        young = make_job("b-young", "b", 4, allowed_nodes=["n0"] if pinned else None)
        return [
            make_running(young, [("n0", range(4))], started_at=10),  # the cheaper one to move
            make_running(make_job("b-old", "b", 4), [("n1", range(4))], started_at=0),
        ]

    free = run_cycle(make_snapshot(nodes, queues, [make_job("a1", "a", 8)], running(False), now=1000))
    assert [(e.job_id, e.kind) for e in free.evictions] == [("b-young", EvictionKind.CONSOLIDATE)]
    plan = run_cycle(make_snapshot(nodes, queues, [make_job("a1", "a", 8)], running(True), now=1000))
    assert [(e.job_id, e.kind) for e in plan.evictions] == [("b-old", EvictionKind.CONSOLIDATE)]
    where = {b.job_id: {p.node for p in b.placements} for b in plan.bindings}
    assert where == {"a1": {"n1"}, "b-old": {"n0"}}
