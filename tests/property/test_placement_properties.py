"""Invariants of gang placement under hypothesis-generated clusters and request sequences.

- no GPU ever holds more than 1000 milli of work (free stays in 0..1000), CPU and memory never go
  below zero (nothing over capacity);
- gangs are all or nothing: a result is either a placement of every replica or an Unplaceable, and
  `place_gang` itself never changes the state;
- a required topology level is always respected (every replica in one labelled domain of it);
- every replica sits on a node of the request's mask with distinct GPUs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_cases import random_request, random_state

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import GPU_MILLI
from leitstand.scheduler.placement import (
    GangPlacement,
    Unplaceable,
    apply_placement,
    place_gang,
    release_placement,
)
from leitstand.scheduler.policies import PolicyContext


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
        request = random_request(state, rng)
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
