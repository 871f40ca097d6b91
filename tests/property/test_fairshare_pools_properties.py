"""Property tests (hypothesis) of reserved pools in leitstand.scheduler.fairshare: random queue
trees in which some queues reserve a node pool of their own (docs/fairshare.md, "Reserved pools").

Invariants: a pool's GPUs never reach a queue outside the subtree reserved to it (the leaves of each
partition share at most its capacity), nobody exceeds its limit or its demand, a parent holds at
least what its children hold, the top level holds at most the cluster, a tree without reservations
divides exactly as before, and per-model divisions obey the same bounds per model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from leitstand.scheduler.fairshare import (
    FairShares,
    build_queue_tree,
    compute_fair_shares,
    effective_reservations,
)
from leitstand.scheduler.model import ModelQuota, Queue, QueueName

TOL_MILLI = 1e-6
RANDOM_TREES = settings(max_examples=300, deadline=None)
MODELS = ("B200", "H100")


@dataclass(frozen=True)
class Case:
    queues: list[Queue]
    demand_milli: dict[QueueName, int]
    shared_milli: float
    pool_milli: dict[str, float]
    model_capacity: dict[tuple[str | None, str], float]
    model_demand: dict[str, dict[QueueName, int]]

    def run(self) -> FairShares:
        return compute_fair_shares(
            self.queues,
            self.demand_milli,
            self.shared_milli,
            pool_capacity_milli=self.pool_milli,
            model_capacity_milli=self.model_capacity,
            model_demand_milli=self.model_demand,
        )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """1–9 queues; each queue reserves its own pool with probability 1/4 (no pool twice)."""
    n = draw(st.integers(1, 9))
    parents: list[int | None] = [None]
    for i in range(1, n):
        parents.append(draw(st.one_of(st.none(), st.integers(0, i - 1))))
    names = [QueueName(f"q{i}") for i in range(n)]
    has_children = {p for p in parents if p is not None}
    queues = []
    for i in range(n):
        quota = draw(st.integers(0, 16_000))
        limit = draw(st.one_of(st.none(), st.integers(quota, quota + 20_000)))
        models = []
        left = quota
        for model in MODELS:
            if draw(st.booleans()):
                mq = draw(st.integers(0, left))
                left -= mq
                ml = draw(st.one_of(st.none(), st.integers(mq, mq + 16_000)))
                models.append(ModelQuota(model, mq, ml, draw(st.sampled_from([None, 0.0, 1.0, 3.0]))))
        queues.append(
            Queue(
                name=names[i],
                parent=None if parents[i] is None else names[parents[i]],
                quota_milli=quota,
                limit_milli=limit,
                over_quota_weight=draw(st.sampled_from([0.0, 1.0, 2.0])),
                priority=draw(st.sampled_from([50, 100])),
                node_pool=f"pool{i}" if draw(st.integers(0, 3)) == 0 else None,
                model_quotas=tuple(models),
            )
        )
    leaves = [names[i] for i in range(n) if i not in has_children]
    demand = {q: draw(st.integers(0, 40_000)) for q in leaves}
    pools = {q.node_pool: float(draw(st.integers(0, 32_000))) for q in queues if q.node_pool is not None}
    parts: list[str | None] = [None, *pools]
    model_capacity = {(p, m): float(draw(st.integers(0, 16_000))) for p in parts for m in MODELS}
    model_demand = {m: {q: draw(st.integers(0, demand[q])) for q in leaves} for m in MODELS}
    return Case(queues, demand, float(draw(st.integers(0, 64_000))), pools, model_capacity, model_demand)


def check_bounds(case: Case, r: FairShares, capacity: dict[str | None, float], demand: dict[QueueName, int]) -> None:
    tree = build_queue_tree(case.queues)
    part = effective_reservations(tree)
    held: dict[str | None, float] = {}
    for leaf in tree.leaves:
        held[part[leaf]] = held.get(part[leaf], 0.0) + r.share_milli[leaf]
        assert r.share_milli[leaf] <= demand.get(leaf, 0) + TOL_MILLI, leaf
    for p, amount in held.items():
        assert amount <= capacity.get(p, 0.0) + TOL_MILLI, (p, amount, capacity)
    for q in case.queues:
        assert r.share_milli[q.name] >= -TOL_MILLI
        kids = tree.children.get(q.name, ())
        if kids:
            assert sum(r.share_milli[k] for k in kids) <= r.share_milli[q.name] + TOL_MILLI * len(kids), q.name
    top = sum(r.share_milli[q] for q in tree.children.get(None, ()))
    assert top <= sum(capacity.values()) + TOL_MILLI


@RANDOM_TREES
@given(cases())
def test_pools_never_leak_and_nobody_exceeds_limit_or_demand(case: Case) -> None:
    r = case.run()
    check_bounds(case, r, {None: case.shared_milli, **case.pool_milli}, case.demand_milli)
    for q in case.queues:
        if q.limit_milli is not None:
            assert r.share_milli[q.name] <= q.limit_milli + TOL_MILLI, q.name


@RANDOM_TREES
@given(cases())
def test_per_model_divisions_obey_the_same_bounds(case: Case) -> None:
    r = case.run()
    for model, by_model in r.by_model.items():
        capacity = {p: c for (p, m), c in case.model_capacity.items() if m == model}
        check_bounds(case, by_model, capacity, case.model_demand[model])
        for q in case.queues:
            entry = q.model_quota(model)
            limit = q.limit_milli if entry is None or entry.limit_milli is None else entry.limit_milli
            if limit is not None:
                assert by_model.share_milli[q.name] <= limit + TOL_MILLI, (model, q.name)


@RANDOM_TREES
@given(cases())
def test_without_reservations_the_division_is_the_old_one(case: Case) -> None:
    queues = [replace(q, node_pool=None, model_quotas=()) for q in case.queues]
    plain = compute_fair_shares(queues, case.demand_milli, case.shared_milli)
    with_pools_given = compute_fair_shares(queues, case.demand_milli, case.shared_milli, pool_capacity_milli={})
    assert with_pools_given.share_milli == plain.share_milli
    assert with_pools_given.deserved_milli == plain.deserved_milli
