"""Unit tests of the array state: construction, incremental updates, aggregates, stamps, domain index."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_cluster, make_node

from leitstand.scheduler.model import NodeName, Topology
from leitstand.scheduler.state import ClusterState, StateError


def _state() -> ClusterState:
    nodes, topology = make_cluster(6, racks=2, spines=1)
    return ClusterState.from_nodes(nodes, topology)


def test_from_nodes_layout() -> None:
    state = _state()
    assert state.gpu_free_milli.shape == (6, 8)
    assert state.domain.shape == (6, 3)
    assert state.domain[:, 2].tolist() == list(range(6))
    assert state.domain_count.tolist() == [1, 2, 6]
    assert state.gpu_whole_free.tolist() == [8] * 6
    assert state.gpu_max_free_milli.tolist() == [1000] * 6


def test_allocate_release_keep_aggregates_and_stamps() -> None:
    state = _state()
    stamp = int(state.node_version[1])
    state.allocate(1, [0, 1], 1000, 1000, 10)
    state.allocate(1, [2], 250, 0, 0)
    assert state.gpu_whole_free[1] == 5
    assert state.gpu_max_free_milli[1] == 1000
    assert int(state.node_version[1]) != stamp
    for g in range(3, 8):
        state.allocate(1, [g], 1000, 0, 0)
    assert state.gpu_whole_free[1] == 0
    assert state.gpu_max_free_milli[1] == 750
    state.release(1, [2], 250, 0, 0)
    assert state.gpu_max_free_milli[1] == 1000 and state.gpu_whole_free[1] == 1


def test_over_commit_raises_and_changes_nothing() -> None:
    state = _state()
    before = state.gpu_free_milli.copy()
    with pytest.raises(StateError):
        state.allocate(0, [0, 9], 1000, 0, 0)
    with pytest.raises(StateError):
        state.allocate(0, [0], 1000, 10**9, 0)
    assert np.array_equal(before, state.gpu_free_milli)


def test_copy_is_independent_and_stamps_stay_unique() -> None:
    state = _state()
    work = state.copy()
    work.allocate(0, [0], 1000, 0, 0)
    assert state.gpu_whole_free[0] == 8 and work.gpu_whole_free[0] == 7
    assert work.score_cache is state.score_cache
    state.allocate(0, [1], 1000, 0, 0)
    assert int(state.node_version[0]) != int(work.node_version[0])


def test_refresh_aggregates_after_direct_writes() -> None:
    state = _state()
    state.gpu_free_milli[2, :] = 500
    stamps = state.node_version.copy()
    state.refresh_aggregates()
    assert state.gpu_whole_free[2] == 0 and state.gpu_max_free_milli[2] == 500
    assert not np.intersect1d(stamps, state.node_version).size


def test_domain_index_lists_members_per_domain() -> None:
    nodes = [
        make_node("a", topology=("s0", "r1")),
        make_node("b", topology=("s0", "r0")),
        make_node("c", topology=("", "")),
        make_node("d", topology=("s0", "r1")),
    ]
    state = ClusterState.from_nodes(nodes, Topology(("spine", "rack")))
    for level in range(3):
        for d in range(int(state.domain_count[level])):
            start, end = state.domain_start[level, d], state.domain_start[level, d + 1]
            members = state.domain_order[level, start:end].tolist()
            assert members == [n for n in range(4) if state.domain[n, level] == d]
    assert state.domain_names[1][int(state.domain[0, 1])] == "r1"


def test_node_mask_is_memoised_but_follows_schedulable() -> None:
    nodes = [
        make_node("a", model="B200", pool="p", jurisdiction="eu"),
        make_node("b", model="H100", pool="p", jurisdiction="eu"),
        make_node("c", model="B200", pool="q"),
    ]
    state = ClusterState.from_nodes(nodes)
    first = state.node_mask(gpu_models=["B200"])
    assert first.tolist() == [True, False, True]
    first[:] = False  # the caller's copy: the memo is unaffected
    assert state.node_mask(gpu_models=["B200"]).tolist() == [True, False, True]
    assert state.node_mask(node_pool="p", jurisdictions=frozenset({"eu"})).tolist() == [True, True, False]
    assert state.node_mask(excluded_pools=["p"]).tolist() == [False, False, True]
    state.schedulable[2] = False
    assert state.node_mask(gpu_models=["B200"]).tolist() == [True, False, False]
    assert state.copy().mask_cache is state.mask_cache


def test_node_mask_jurisdictions_is_any_of_the_set() -> None:
    nodes = [
        make_node("de", jurisdiction="eu-de"),
        make_node("fr", jurisdiction="eu-fr"),
        make_node("us", jurisdiction="us"),
        make_node("none"),
    ]
    state = ClusterState.from_nodes(nodes)
    assert state.node_mask(jurisdictions=frozenset()).tolist() == [True] * 4  # empty = anywhere
    assert state.node_mask(jurisdictions=frozenset({"eu-de", "eu-fr"})).tolist() == [True, True, False, False]
    assert state.node_mask(jurisdictions=frozenset({"eu-de", "ch"})).tolist() == [True, False, False, False]
    assert state.node_mask(jurisdictions=frozenset({"ch"})).tolist() == [False] * 4


def test_node_mask_allowed_nodes() -> None:
    nodes = [make_node(f"n{i}", model="B200" if i % 2 == 0 else "H100") for i in range(4)]
    state = ClusterState.from_nodes(nodes)
    allowed = frozenset({NodeName("n0"), NodeName("n1"), NodeName("gone")})  # unknown names are ignored
    assert state.node_mask(allowed_nodes=None).tolist() == [True] * 4
    assert state.node_mask(allowed_nodes=allowed).tolist() == [True, True, False, False]
    assert state.node_mask(allowed_nodes=allowed, gpu_models=["B200"]).tolist() == [True, False, False, False]
    assert state.node_mask(allowed_nodes=frozenset()).tolist() == [False] * 4
    state.schedulable[1] = False
    assert state.node_mask(allowed_nodes=allowed).tolist() == [True, False, False, False]


def test_node_mask_memo_keys_on_the_allowed_set_itself() -> None:
    state = ClusterState.from_nodes([make_node(f"n{i}") for i in range(3)])
    shared = frozenset({NodeName("n0"), NodeName("n2")})
    first = state.node_mask(allowed_nodes=shared)
    entries = len(state.mask_cache)
    # the same object and an equal one hit the same entry; a different set gets its own
    assert state.node_mask(allowed_nodes=shared).tolist() == first.tolist()
    assert state.node_mask(allowed_nodes=frozenset({NodeName("n2"), NodeName("n0")})).tolist() == first.tolist()
    assert len(state.mask_cache) == entries
    assert state.node_mask(allowed_nodes=frozenset({NodeName("n1")})).tolist() == [False, True, False]
    assert len(state.mask_cache) == entries + 1
    assert [k for k in state.mask_cache if k[-1] is shared], "the key holds the frozenset itself"
    assert state.copy().fit_cache is state.fit_cache
