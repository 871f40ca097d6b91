"""Unit tests of gang placement: topology choice, slices, reasons, all-or-nothing, the FGD equivalence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import make_cluster, make_job, make_node

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import Topology
from leitstand.scheduler.placement import (
    FRAGMENTED,
    INSUFFICIENT,
    INVALID_REQUEST,
    NEVER_FITS,
    NO_MATCHING_NODES,
    NO_TOPOLOGY_DOMAIN,
    GangPlacement,
    GangRequest,
    Unplaceable,
    apply_placement,
    place_gang,
    release_placement,
    replica_placements,
)
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.policy_kernels import choose_gpus_kernel, node_score_kernel
from leitstand.scheduler.state import ClusterState

ENGINES = ["numba", "reference"]


def _state(n_nodes: int = 8, racks: int = 2, spines: int = 1) -> ClusterState:
    nodes, topology = make_cluster(n_nodes, racks=racks, spines=spines)
    return ClusterState.from_nodes(nodes, topology)


def _place(state: ClusterState, job_kwargs: dict[str, object], engine: str = "numba") -> GangPlacement | Unplaceable:
    job = make_job(**job_kwargs)
    return place_gang(state, GangRequest.for_job(state, job), PolicyContext.build(state), engine=engine)


def _use(state: ClusterState, node: int, gpus: int) -> None:
    state.allocate(node, list(range(gpus)), 1000, 0, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_required_rack_holds_every_replica(engine: str) -> None:
    state = _state()
    result = _place(state, {"gpus": 8, "replicas": 4, "required": "rack"}, engine)
    assert isinstance(result, GangPlacement)
    racks = {int(state.domain[int(n), 1]) for n in result.nodes}
    assert len(racks) == 1
    assert result.level == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_tightest_rack_wins(engine: str) -> None:
    state = _state()
    _use(state, 0, 8)  # rack r0 (nodes 0-3) has 3 free nodes, rack r1 has 4
    result = _place(state, {"gpus": 8, "replicas": 2, "required": "rack"}, engine)
    assert isinstance(result, GangPlacement)
    assert {int(n) for n in result.nodes} <= {1, 2, 3}
    assert state.domain_names[1][result.domain] == "r0"


@pytest.mark.parametrize("engine", ENGINES)
def test_no_rack_large_enough_names_the_largest(engine: str) -> None:
    state = _state()
    _use(state, 0, 8)
    _use(state, 4, 2)
    result = _place(state, {"gpus": 8, "replicas": 4, "required": "rack", "models": ["B200"]}, engine)
    assert isinstance(result, Unplaceable)
    assert result.code == NO_TOPOLOGY_DOMAIN
    assert "no rack has 32 free GPUs of GPU model B200 for 4 × 8 GPUs" in result.message
    assert "room for 3 of 4 replicas, 24 GPUs, in rack r" in result.message


@pytest.mark.parametrize("engine", ENGINES)
def test_preferred_level_falls_back_upwards_then_anywhere(engine: str) -> None:
    state = _state(8, racks=2, spines=2)  # 4 racks of 2 nodes, 2 spines
    for n in (0, 2, 4):
        _use(state, n, 8)
    # 3 × 8 GPUs: no rack (2 nodes) holds it; spine s1 (nodes 4-7) has 3 free nodes -> spine level
    result = _place(state, {"gpus": 8, "replicas": 3, "preferred": "rack"}, engine)
    assert isinstance(result, GangPlacement)
    assert result.level == 0
    assert sorted(int(n) for n in result.nodes) == [5, 6, 7]
    # 4 × 8 GPUs: no spine holds it either -> anywhere
    result = _place(state, {"gpus": 8, "replicas": 4, "preferred": "rack"}, engine)
    assert isinstance(result, GangPlacement)
    assert result.level == -1
    assert sorted(int(n) for n in result.nodes) == [1, 3, 5, 6] or len(set(result.nodes.tolist())) == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_required_level_excludes_unlabelled_nodes(engine: str) -> None:
    nodes = [
        make_node("a", topology=("s0", "r0")),
        make_node("a2", topology=("s0", "r0")),
        make_node("b", topology=("", "")),
    ]
    state = ClusterState.from_nodes(nodes, Topology(("spine", "rack")))
    _use(state, 1, 2)
    result = _place(state, {"gpus": 8, "replicas": 2, "required": "rack"}, engine)
    assert isinstance(result, Unplaceable) and result.code == INSUFFICIENT
    assert "2 matching nodes with a rack label hold 1 of 2 replicas" in result.message
    # without a2, rack r0 could never hold both replicas: the unlabelled node b does not count
    small = ClusterState.from_nodes([nodes[0], nodes[2]], Topology(("spine", "rack")))
    result = _place(small, {"gpus": 8, "replicas": 2, "required": "rack"}, engine)
    assert isinstance(result, Unplaceable) and result.code == NEVER_FITS
    assert "needs 16 GPUs in one rack; the largest rack (r0) has 8 GPUs" in result.message
    unlabelled = ClusterState.from_nodes([make_node("b", topology=("", ""))], Topology(("spine", "rack")))
    result = _place(unlabelled, {"gpus": 8, "required": "rack"}, engine)
    assert isinstance(result, Unplaceable) and result.code == NEVER_FITS
    assert "no eligible node carries a rack label" in result.message
    ok = _place(small, {"gpus": 8, "replicas": 2}, engine)
    assert isinstance(ok, GangPlacement)


@pytest.mark.parametrize("engine", ENGINES)
def test_slices_stack_on_one_gpu(engine: str) -> None:
    state = ClusterState.from_nodes([make_node("a", gpus=1)])
    result = _place(state, {"gpu": 0.25, "replicas": 4}, engine)
    assert isinstance(result, GangPlacement)
    assert result.nodes.tolist() == [0, 0, 0, 0]
    assert result.gpus.ravel().tolist() == [0, 0, 0, 0]
    too_many = _place(state, {"gpu": 0.25, "replicas": 5}, engine)
    assert isinstance(too_many, Unplaceable) and too_many.code == NEVER_FITS
    assert "room for 4 of 5 replicas even when empty" in too_many.message
    apply_placement(state, GangRequest.for_job(state, make_job(gpu=0.25, replicas=2)), _slices(state, 2))
    busy = _place(state, {"gpu": 0.25, "replicas": 3}, engine)
    assert isinstance(busy, Unplaceable) and busy.code == INSUFFICIENT


def _slices(state: ClusterState, replicas: int) -> GangPlacement:
    result = _place(state, {"gpu": 0.25, "replicas": replicas})
    assert isinstance(result, GangPlacement)
    return result


@pytest.mark.parametrize("engine", ENGINES)
def test_insufficient_says_what_is_missing(engine: str) -> None:
    nodes, topology = make_cluster(2)
    state = ClusterState.from_nodes(nodes, topology)
    _use(state, 0, 8)
    result = _place(state, {"gpus": 4, "replicas": 3, "cpu_milli": 100_000}, engine)
    assert isinstance(result, Unplaceable) and result.code == INSUFFICIENT
    assert "hold 2 of 3 replicas" in result.message
    assert "1 nodes with too few free GPUs" in result.message
    state.allocate(1, [], 0, 200_000, 0)
    result = _place(state, {"gpus": 1, "cpu_milli": 100_000}, engine)
    assert isinstance(result, Unplaceable) and result.code == INSUFFICIENT
    assert "too little free CPU" in result.message


def test_a_failure_message_is_the_same_for_a_request_asked_again_and_an_equal_new_one() -> None:
    """What a failure says of the request itself is kept per request object (`_request_text`): asked
    again as the state changes, and with other requests failing in between, each request's message is
    the one an equal, never-seen request gets (fails if the kept text is not checked to be the same
    request's, or outlives a change it depends on)."""
    nodes, topology = make_cluster(2)
    state = ClusterState.from_nodes(nodes, topology)
    policy = PolicyContext.build(state)
    asks = [
        {"gpus": 4, "replicas": 3, "cpu_milli": 100_000},
        {"gpus": 8, "replicas": 2, "memory_mib": 1},
        {"gpus": 1, "gpu": 0.5, "replicas": 40},
        {"gpus": 16},  # never fits: no node has 16 GPUs
    ]
    kept = [GangRequest.for_job(state, make_job(**ask)) for ask in asks]  # type: ignore[arg-type]
    done: list[tuple[int, list[int]]] = []
    for node, gpus in [(0, list(range(8))), (1, list(range(2))), (1, list(range(2, 7)))]:
        state.allocate(node, gpus, 1000, 0, 0)
        done.append((node, gpus))
        for request, ask in zip(kept, asks, strict=True):
            again = place_gang(state, request, policy)
            unseen = ClusterState.from_nodes(nodes, topology)  # nothing kept: the message made from scratch
            for n, g in done:
                unseen.allocate(n, g, 1000, 0, 0)
            fresh = place_gang(unseen, GangRequest.for_job(unseen, make_job(**ask)), PolicyContext.build(unseen))  # type: ignore[arg-type]
            assert isinstance(again, Unplaceable) and again == fresh
    assert {place_gang(state, r, policy).code for r in kept} == {INSUFFICIENT, NEVER_FITS}  # type: ignore[union-attr]


@pytest.mark.parametrize("engine", ENGINES)
def test_no_matching_nodes(engine: str) -> None:
    state = _state()
    result = _place(state, {"gpus": 1, "models": ["H100"]}, engine)
    assert isinstance(result, Unplaceable) and result.code == NO_MATCHING_NODES
    assert "GPU model H100" in result.message


@pytest.mark.parametrize("engine", ENGINES)
def test_cpu_only_replicas(engine: str) -> None:
    state = _state(2, racks=1)
    result = _place(state, {"gpus": 0, "replicas": 3, "cpu_milli": 1000}, engine)
    assert isinstance(result, GangPlacement)
    assert (result.gpus == -1).all()


def test_multi_slice_replicas_need_distinct_gpus() -> None:
    state = ClusterState.from_nodes([make_node("a", gpus=2)])
    request = GangRequest(replicas=2, gpus=2, gpu_milli=500, cpu_milli=0, memory_mib=0, node_mask=np.ones(1, bool))
    result = place_gang(state, request, PolicyContext.build(state))
    assert isinstance(result, GangPlacement)
    for row in result.gpus:
        assert len(set(row.tolist())) == 2
    request3 = GangRequest(replicas=3, gpus=2, gpu_milli=500, cpu_milli=0, memory_mib=0, node_mask=np.ones(1, bool))
    assert isinstance(place_gang(state, request3, PolicyContext.build(state)), Unplaceable)


def test_invalid_request_is_a_result() -> None:
    state = _state()
    bad = GangRequest(replicas=1, gpus=1, gpu_milli=1500, cpu_milli=0, memory_mib=0, node_mask=state.node_mask())
    result = place_gang(state, bad, PolicyContext.build(state))
    assert isinstance(result, Unplaceable) and result.code == INVALID_REQUEST


def test_apply_release_and_names_round_trip() -> None:
    state = _state()
    ctx = PolicyContext.build(state)
    request = GangRequest.for_job(state, make_job(gpus=8, replicas=2, required="rack"))
    result = place_gang(state, request, ctx)
    assert isinstance(result, GangPlacement)
    free_before = state.gpu_free_milli.copy()
    apply_placement(state, request, result)
    assert state.gpu_used_milli == 16_000
    names = replica_placements(state, result)
    assert [p.gpu_indices for p in names] == [tuple(range(8))] * 2
    release_placement(state, request, result)
    assert np.array_equal(state.gpu_free_milli, free_before)


def test_fragmented_code_exists() -> None:
    assert FRAGMENTED == "Fragmented"


@pytest.mark.parametrize("policy", [PolicyCode.LEITSTAND, PolicyCode.FGD, PolicyCode.BESTFIT, PolicyCode.DOTPROD])
def test_one_replica_without_topology_is_filter_max_score_rank_choose(policy: PolicyCode) -> None:
    """The FGD-protocol simulator relies on this equivalence."""
    rng = np.random.default_rng(7)
    nodes = [make_node(f"n{i}", gpus=int(rng.choice([2, 4, 8])), cpu_milli=64_000) for i in range(30)]
    state = ClusterState.from_nodes(nodes)
    for n in range(state.n_nodes):
        for g in range(int(state.gpu_count[n])):
            state.gpu_free_milli[n, g] = int(rng.choice([0, 250, 500, 1000]))
    state.refresh_aggregates()
    rank = rng.permutation(state.n_nodes).astype(np.int64)
    ctx = PolicyContext.build(state, policy, node_rank=rank)
    for gpus, milli, cpu in [(1, 250, 1000), (1, 500, 0), (2, 1000, 4000), (1, 1000, 70_000)]:
        request = GangRequest(1, gpus, milli, cpu, 0, state.node_mask())
        result = place_gang(state, request, ctx)
        best: tuple[int, int] | None = None
        for n in range(state.n_nodes):
            fitting = int((state.gpu_free_milli[n, : state.gpu_count[n]] >= milli).sum())
            if state.cpu_free_milli[n] < cpu or fitting < gpus:
                continue
            score = int(
                node_score_kernel(
                    int(policy),
                    n,
                    state.gpu_free_milli,
                    state.gpu_count,
                    state.cpu_free_milli,
                    state.cpu_capacity_milli,
                    state.memory_free_mib,
                    state.gpu_model,
                    gpus,
                    milli,
                    cpu,
                    0,
                    ctx.typ_cpu,
                    ctx.typ_milli,
                    ctx.typ_num,
                    ctx.typ_model_ok,
                    ctx.typ_weight,
                    np.uint64(0),
                )
            )
            if best is None or score > best[0] or (score == best[0] and rank[n] < rank[best[1]]):
                best = (score, n)
        if best is None:
            assert isinstance(result, Unplaceable)
            continue
        assert isinstance(result, GangPlacement)
        assert int(result.nodes[0]) == best[1]
        out = np.full(gpus, -1, dtype=np.int32)
        choose_gpus_kernel(
            int(policy),
            best[1],
            state.gpu_free_milli,
            state.gpu_count,
            gpus,
            milli,
            ctx.typ_cpu,
            ctx.typ_milli,
            ctx.typ_num,
            ctx.typ_model_ok,
            ctx.typ_weight,
            out,
            int(state.cpu_free_milli[best[1]]),
            int(state.gpu_model[best[1]]),
            cpu,
        )
        assert result.gpus[0].tolist() == out.tolist()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("policy", ["leitstand", "fgd", "bestfit", "random"])
def test_several_slices_per_replica_fill_every_slot_the_count_promises(engine: str, policy: str) -> None:
    """3 replicas × 2 half-GPU slices on distinct GPUs fit 3 free GPUs ({0,1}, {1,2}, {0,2}). The
    lowest-index GPUs put the first two replicas on GPUs 0 and 1 and left GPU 2's two slots to a
    replica that needs two GPUs (`Fragmented`, a wrong answer this test once pinned); the fill takes
    the GPUs with the most room first, for every policy. A fourth replica does not fit (6 slots)."""
    state = ClusterState.from_nodes([make_node("a", gpus=3)])
    request = GangRequest(replicas=3, gpus=2, gpu_milli=500, cpu_milli=0, memory_mib=0, node_mask=np.ones(1, bool))
    before = state.gpu_free_milli.copy()
    ctx = PolicyContext.build(state, policy)
    result = place_gang(state, request, ctx, engine=engine)
    assert isinstance(result, GangPlacement)
    assert np.array_equal(before, state.gpu_free_milli)  # (place_gang only proposes)
    assert all(len(set(row.tolist())) == 2 for row in result.gpus)
    assert sorted(result.gpus.ravel().tolist()) == [0, 0, 1, 1, 2, 2]
    apply_placement(state, request, result)
    assert state.gpu_free_milli[0, :3].tolist() == [0, 0, 0]
    more = place_gang(state, dataclasses.replace(request, replicas=1), ctx, engine=engine)
    assert isinstance(more, Unplaceable) and more.code != FRAGMENTED


def test_a_remembered_failure_is_redone_without_the_placement_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allocate's way of asking (`remember_failure=True`): a one-replica request that fits no node is
    answered again from the nodes changed since, without the placement kernel, with the counts a
    fresh placement gives; once a changed node has room, the kernel places it."""
    from leitstand.scheduler import placement

    nodes, topology = make_cluster(4)
    state = ClusterState.from_nodes(nodes, topology)
    policy = PolicyContext.build(state)
    for node in range(4):
        state.allocate(node, list(range(8)), 1000, 0, 0)  # every GPU taken
    request = GangRequest.for_job(state, make_job(gpus=1, cpu_milli=1000))
    first = place_gang(state, request, policy, remember_failure=True)
    assert isinstance(first, Unplaceable) and first.code == INSUFFICIENT
    assert id(request) in state.fail_cache

    kernel = placement.K.place_gang_kernel

    def not_called(*args: object) -> int:
        raise AssertionError("the placement kernel was asked")

    monkeypatch.setattr(placement.K, "place_gang_kernel", not_called)
    assert place_gang(state, request, policy, remember_failure=True) is first  # nothing changed
    state.allocate(2, [], 0, state.cpu_capacity_milli[2], 0)  # node 2 now short of CPU as well
    again = place_gang(state, request, policy, remember_failure=True)
    monkeypatch.setattr(placement.K, "place_gang_kernel", kernel)
    fresh = place_gang(state, GangRequest.for_job(state, make_job(gpus=1, cpu_milli=1000)), policy)
    assert again == fresh and again != first and "1 nodes with too little free CPU" in again.message
    state.release(3, [5], 1000, 0, 0)  # room on node 3
    placed = place_gang(state, request, policy, remember_failure=True)
    assert isinstance(placed, GangPlacement) and placed.nodes.tolist() == [3]
