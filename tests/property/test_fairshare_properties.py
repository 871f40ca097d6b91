"""Property tests (hypothesis) of leitstand.scheduler.fairshare on random queue trees.

Invariants: shares add up at every level, nobody exceeds its limit or its demand, quota is honoured
when quotas fit, more weight never means less, a higher priority bucket is satisfied before a lower
one goes over quota, and the result does not depend on the order the queues are listed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from leitstand.scheduler.fairshare import FairShares, build_queue_tree, compute_fair_shares
from leitstand.scheduler.model import Queue, QueueName

TOL_MILLI = 1e-6
"""Float tolerance, milli-GPU (shares are exact up to rounding of float sums)."""

RANDOM_TREES = settings(max_examples=300, deadline=None)
"""Per test (not a global profile: other modules keep their own hypothesis settings)."""


@dataclass(frozen=True)
class Case:
    queues: list[Queue]
    demand_milli: dict[QueueName, int]
    capacity_milli: float
    usage_share: dict[QueueName, float] | None
    usage_factor: float

    def run(self) -> FairShares:
        return compute_fair_shares(
            self.queues,
            self.demand_milli,
            self.capacity_milli,
            usage_share=self.usage_share,
            usage_factor=self.usage_factor,
        )


@st.composite
def cases(draw: st.DrawFn, *, nested_quotas: bool = False, with_usage: bool = True) -> Case:
    """A random tree of 1–9 queues. With `nested_quotas`, every parent's quota covers its children's
    and the capacity covers the top level's (the "quotas fit" precondition of the guarantee)."""
    n = draw(st.integers(1, 9))
    parents: list[int | None] = [None]
    for i in range(1, n):
        parents.append(draw(st.one_of(st.none(), st.integers(0, i - 1))))
    names = [QueueName(f"q{i}") for i in range(n)]
    has_children = {p for p in parents if p is not None}

    # Whole GPUs half of the time, arbitrary milli-GPU (fractional quotas) otherwise.
    quota_milli = st.integers(0, 16).map(lambda g: g * 1000) | st.integers(0, 16_000)
    quota = [draw(quota_milli) for _ in range(n)]
    if nested_quotas:
        for i in reversed(range(n)):  # children have higher indices than their parent
            kids_quota = sum(quota[k] for k in range(n) if parents[k] == i)
            quota[i] = max(quota[i], kids_quota)
    queues = []
    for i in range(n):
        limit = draw(st.one_of(st.none(), st.integers(quota[i], quota[i] + 20_000)))
        parent = parents[i]
        queues.append(
            Queue(
                name=names[i],
                parent=None if parent is None else names[parent],
                quota_milli=quota[i],
                limit_milli=limit,
                over_quota_weight=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])),
                priority=draw(st.sampled_from([50, 100, 200])),
                created_at=float(draw(st.integers(0, 3))),
            )
        )
    demand = {names[i]: draw(st.integers(0, 24_000)) for i in range(n) if i not in has_children}
    top_quota = sum(quota[i] for i in range(n) if parents[i] is None)
    capacity = draw(st.integers(top_quota if nested_quotas else 0, 64_000 + top_quota))
    usage: dict[QueueName, float] | None = None
    factor = 1.0
    if with_usage and draw(st.booleans()):
        usage = {names[i]: draw(st.floats(0, 1)) for i in range(n) if i not in has_children}
        factor = draw(st.sampled_from([0.0, 0.5, 1.0, 5.0]))
    return Case(queues, demand, float(capacity), usage, factor)


def limit_of(q: Queue) -> float:
    return float("inf") if q.limit_milli is None else float(q.limit_milli)


@RANDOM_TREES
@given(cases())
def test_shares_sum_to_what_is_available_at_every_level(case: Case) -> None:
    r = case.run()
    tree = build_queue_tree(case.queues)
    for parent, kids in tree.children.items():
        available = case.capacity_milli if parent is None else r.share_milli[parent]
        expected = min(available, sum(r.requestable_milli[k] for k in kids))
        got = sum(r.share_milli[k] for k in kids)
        assert abs(got - expected) <= TOL_MILLI * max(1.0, expected), (parent, got, expected)


@RANDOM_TREES
@given(cases())
def test_no_queue_above_its_limit_its_demand_or_below_zero(case: Case) -> None:
    r = case.run()
    for q in case.queues:
        share = r.share_milli[q.name]
        assert share >= -TOL_MILLI
        assert share <= limit_of(q) + TOL_MILLI
        assert share <= r.demand_milli[q.name] + TOL_MILLI
        assert r.deserved_milli[q.name] <= share + TOL_MILLI
        if q.over_quota_weight == 0:
            assert share <= q.quota_milli + TOL_MILLI


@RANDOM_TREES
@given(cases(nested_quotas=True))
def test_quota_is_guaranteed_when_quotas_fit(case: Case) -> None:
    r = case.run()
    tree = build_queue_tree(case.queues)
    for q in case.queues:
        # A leaf's in-quota part is min(quota, demand, limit); an inner queue's is bounded by what
        # its children can use (children with weight 0 cannot take its over-quota part).
        usable = r.demand_milli[q.name] if tree.is_leaf(q.name) else r.requestable_milli[q.name]
        in_quota = min(float(q.quota_milli), usable, limit_of(q))
        assert r.share_milli[q.name] >= in_quota - TOL_MILLI, q.name
        assert r.deserved_scale[q.name] == 1.0
    for leaf in tree.leaves:
        q = tree.queues[leaf]
        if r.demand_milli[leaf] <= q.quota_milli:
            assert abs(r.share_milli[leaf] - r.demand_milli[leaf]) <= TOL_MILLI, leaf


@RANDOM_TREES
@given(cases(with_usage=False), st.data())
def test_more_weight_never_means_less_share(case: Case, data: st.DataObject) -> None:
    idx = data.draw(st.integers(0, len(case.queues) - 1))
    bump = data.draw(st.sampled_from([0.5, 1.0, 4.0]))
    before = case.run()
    target = case.queues[idx]
    heavier = [*case.queues]
    heavier[idx] = replace(target, over_quota_weight=target.over_quota_weight + bump)
    after = replace(case, queues=heavier).run()
    assert after.share_milli[target.name] >= before.share_milli[target.name] - TOL_MILLI


@RANDOM_TREES
@given(cases())
def test_higher_priority_siblings_are_satisfied_before_lower_ones_go_over_quota(case: Case) -> None:
    r = case.run()
    tree = build_queue_tree(case.queues)
    for kids in tree.children.values():
        for hi in kids:
            q_hi = tree.queues[hi]
            if q_hi.over_quota_weight == 0:
                continue
            if r.share_milli[hi] >= r.requestable_milli[hi] - TOL_MILLI:
                continue  # satisfied
            for lo in kids:
                if tree.queues[lo].priority < q_hi.priority:
                    assert r.over_quota_milli(lo) <= TOL_MILLI, (hi, lo)


@RANDOM_TREES
@given(cases(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_listing_order(case: Case, rnd: object) -> None:
    shuffled = [*case.queues]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a = case.run().share_milli
    b = replace(case, queues=shuffled).run().share_milli
    assert a == b
