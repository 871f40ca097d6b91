"""Invariants of gang placement under hypothesis-generated clusters and request sequences.

- no GPU ever holds more than 1000 milli of work (free stays in 0..1000), CPU and memory never go
  below zero (nothing over capacity);
- gangs are all or nothing: a result is either a placement of every replica or an Unplaceable, and
  `place_gang` itself never changes the state;
- a required topology level is always respected (every replica in one labelled domain of it);
- every replica sits on a node of the request's mask with distinct GPUs, and on one of its
  `allowed_nodes` when the request names them;
- "never fits" is exact: NeverFits is claimed only for gangs an empty cluster cannot hold either,
  and on an empty cluster a gang that does not fit is NeverFits (or NoMatchingNodes; Fragmented is
  still accepted there, though the fill no longer leaves it), never Insufficient or NoTopologyDomain;
- several GPU shares per replica: exactly as many replicas fit a node as its slots allow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from builders import make_node
from hypothesis import event, given, settings
from hypothesis import strategies as st
from placement_cases import random_request, random_state

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import GPU_MILLI, NodeName
from leitstand.scheduler.placement import (
    FRAGMENTED,
    NEVER_FITS,
    NO_MATCHING_NODES,
    GangPlacement,
    GangRequest,
    Unplaceable,
    apply_placement,
    place_gang,
    release_placement,
)
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState


def _with_allowed_nodes(state: ClusterState, request: GangRequest, rng: np.random.Generator) -> GangRequest:
    """Sometimes restrict the request to a random set of node names (as `GangRequest.for_job` would)."""
    if rng.random() < 0.6:
        return request
    names = frozenset(NodeName(n) for n in state.node_names if rng.random() < 0.5)
    mask = request.node_mask & state.node_mask(allowed_nodes=names)
    return dataclasses.replace(request, node_mask=mask, allowed_nodes=names)


def _emptied(state: ClusterState) -> ClusterState:
    """The same cluster with nothing running."""
    empty = state.copy()
    for n in range(empty.n_nodes):
        empty.gpu_free_milli[n, : int(empty.gpu_count[n])] = GPU_MILLI
    empty.cpu_free_milli[:] = empty.cpu_capacity_milli
    empty.memory_free_mib[:] = empty.memory_capacity_mib
    empty.refresh_aggregates()
    return empty


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_nodes=st.integers(1, 16),
    fill=st.floats(0.0, 0.8),
    policy=st.sampled_from([PolicyCode.LEITSTAND, PolicyCode.BESTFIT, PolicyCode.RANDOM]),
)
def test_placement_invariants(seed: int, n_nodes: int, fill: float, policy: PolicyCode) -> None:
    state = random_state(seed, n_nodes, fill)
    ctx = PolicyContext.build(state, policy)
    rng = np.random.default_rng(seed)
    placed = []
    for i in range(12):
        request = _with_allowed_nodes(state, random_request(state, rng), rng)
        before = (state.gpu_free_milli.copy(), state.cpu_free_milli.copy(), state.memory_free_mib.copy())
        result = place_gang(state, request, ctx, nonce=i)
        # place_gang never changes the state, placed or not
        assert np.array_equal(before[0], state.gpu_free_milli)
        assert np.array_equal(before[1], state.cpu_free_milli)
        assert np.array_equal(before[2], state.memory_free_mib)
        if isinstance(result, Unplaceable):
            assert result.code and result.message
            continue
        assert isinstance(result, GangPlacement)
        assert result.nodes.shape == (request.replicas,)  # all or nothing
        for r in range(request.replicas):
            node = int(result.nodes[r])
            assert request.node_mask[node]
            if request.allowed_nodes is not None:
                assert state.node_names[node] in request.allowed_nodes
            used = [int(g) for g in result.gpus[r] if g >= 0]
            assert len(used) == request.gpus
            assert len(set(used)) == len(used)
        if request.required_level >= 0:
            domains = {int(state.domain[int(n), request.required_level]) for n in result.nodes}
            assert len(domains) == 1 and min(domains) >= 0
        apply_placement(state, request, result)  # raises StateError on any over-commit
        placed.append((request, result))
        assert state.gpu_free_milli.min() >= 0 and state.gpu_free_milli.max() <= GPU_MILLI
        assert (state.cpu_free_milli >= 0).all() and (state.memory_free_mib >= 0).all()
        # the aggregates the kernels prefilter on stay exact
        for n in range(state.n_nodes):
            row = state.gpu_free_milli[n, : int(state.gpu_count[n])]
            assert state.gpu_whole_free[n] == int((row == GPU_MILLI).sum())
            assert state.gpu_max_free_milli[n] == (int(row.max()) if row.size else 0)
    for request, result in reversed(placed):
        release_placement(state, request, result)
    assert state.gpu_free_milli.max() <= GPU_MILLI
    assert (state.cpu_free_milli <= state.cpu_capacity_milli).all()


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_nodes=st.integers(1, 14),
    fill=st.floats(0.0, 1.0),
)
def test_never_fits_means_an_empty_cluster_cannot_hold_the_gang(seed: int, n_nodes: int, fill: float) -> None:
    state = random_state(seed, n_nodes, fill)
    empty = _emptied(state)
    ctx, empty_ctx = PolicyContext.build(state), PolicyContext.build(empty)
    rng = np.random.default_rng(seed)
    for _ in range(12):
        request = _with_allowed_nodes(state, random_request(state, rng), rng)
        now = place_gang(state, request, ctx)
        ever = place_gang(empty, request, empty_ctx)
        event(f"now: {now.code if isinstance(now, Unplaceable) else 'placed'}")
        if isinstance(now, Unplaceable) and now.code == NEVER_FITS:
            assert isinstance(ever, Unplaceable) and ever.code == NEVER_FITS, (now, ever)
        if isinstance(ever, Unplaceable):
            assert ever.code in (NEVER_FITS, NO_MATCHING_NODES, FRAGMENTED), ever
            if ever.code == FRAGMENTED:
                assert request.gpus > 1 and request.gpu_milli < GPU_MILLI, ever


def _same_outcome(a: GangPlacement | Unplaceable, b: GangPlacement | Unplaceable) -> bool:
    if isinstance(a, Unplaceable) or isinstance(b, Unplaceable):
        return a == b
    return bool((a.nodes == b.nodes).all() and (a.gpus == b.gpus).all())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_nodes=st.integers(2, 24), fill=st.floats(0.3, 1.0))
def test_a_remembered_failure_is_what_placing_again_says(seed: int, n_nodes: int, fill: float) -> None:
    """`place_gang(remember_failure=True)`, asked again and again with the same request objects while
    replicas come and go (on the state and on copies of it, as a cycle's working copy), says what a
    placement without the memo says: the same placement, or the same failure with the same counts
    of nodes short of CPU, memory and GPUs. Fails if a changed node is missed, if counts moved on in
    a call that found room are not said, or if a copy's change leaks into the original's answer."""
    state = random_state(seed, n_nodes, fill)
    rng = np.random.default_rng(seed)
    policy = PolicyContext.build(state, PolicyCode.LEITSTAND)
    requests = [dataclasses.replace(random_request(state, rng), replicas=1, required_level=-1) for _ in range(6)]
    placed: list[tuple[ClusterState, GangRequest, GangPlacement]] = []
    work = state
    remembered = 0
    for _ in range(40):
        if rng.random() < 0.15:
            work = state.copy() if work is state else state  # a cycle's copy, then the original again
        for request in requests:
            got = place_gang(work, request, policy, remember_failure=True)
            assert _same_outcome(got, place_gang(work, request, policy))
            remembered += isinstance(got, Unplaceable) and id(request) in work.fail_cache
            if isinstance(got, GangPlacement) and rng.random() < 0.5:
                apply_placement(work, request, got)  # it starts: the nodes fill up
                placed.append((work, request, got))
        for _ in range(int(rng.integers(0, 3))):  # some end: room appears
            if placed:
                where, request, placement = placed.pop(int(rng.integers(0, len(placed))))
                if where is work:
                    release_placement(work, request, placement)
    event(f"remembered failures asked again: {'some' if remembered else 'none'}")


@settings(max_examples=300, deadline=None)
@given(
    free=st.lists(st.sampled_from([0, 100, 200, 250, 300, 400, 500, 600, 750, 800, 1000]), min_size=1, max_size=8),
    gpus=st.integers(2, 4),
    milli=st.sampled_from([100, 200, 250, 300, 400, 500, 600, 750]),
    policy=st.sampled_from([PolicyCode.LEITSTAND, PolicyCode.FGD, PolicyCode.BESTFIT, PolicyCode.RANDOM]),
)
def test_several_slices_per_replica_place_exactly_as_many_replicas_as_the_slots_allow(
    free: list[int], gpus: int, milli: int, policy: PolicyCode
) -> None:
    """A node whose GPUs have `free` milli holds k replicas of `gpus` slices of `milli` on distinct
    GPUs exactly when Σ_g min(⌊free_g / milli⌋, k) ≥ k · gpus (a k × GPUs 0/1 matrix with rows of
    `gpus` and columns within each GPU's slots). The placement of k replicas must succeed for the
    largest such k, with distinct GPUs per replica and no GPU over-committed, and k + 1 must fail
    as not fitting — never `Fragmented` (the fill takes the GPUs with the most room first)."""
    state = ClusterState.from_nodes([make_node("a", gpus=len(free))])
    state.gpu_free_milli[0, : len(free)] = free
    state.refresh_aggregates()
    slots = [f // milli for f in free]
    most = max((k for k in range(0, sum(slots) + 1) if sum(min(s, k) for s in slots) >= k * gpus), default=0)
    ctx = PolicyContext.build(state, policy)
    for engine in ("numba", "reference"):
        if most:
            request = GangRequest(replicas=most, gpus=gpus, gpu_milli=milli, cpu_milli=0, memory_mib=0,
                                  node_mask=np.ones(1, bool))
            result = place_gang(state, request, ctx, engine=engine)
            assert isinstance(result, GangPlacement), (engine, result)
            assert all(len(set(row.tolist())) == gpus for row in result.gpus)
            used = np.bincount(result.gpus.ravel(), minlength=len(free)) * milli
            assert (used <= np.array(free)).all()
        over = GangRequest(replicas=most + 1, gpus=gpus, gpu_milli=milli, cpu_milli=0, memory_mib=0,
                           node_mask=np.ones(1, bool))
        failed = place_gang(state, over, ctx, engine=engine)
        assert isinstance(failed, Unplaceable) and failed.code != FRAGMENTED, (engine, failed)
    event(f"replicas {most}")
