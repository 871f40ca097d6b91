"""Unit tests of leitstand.scheduler.fairshare: each Run:ai/KAI rule (docs/fairshare.md) and
each documented deviation, one small tree at a time. Amounts in tests are GPUs; the API is milli-GPU."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from builders import make_queue

from leitstand.scheduler.errors import InvalidSpecError, LeitstandError
from leitstand.scheduler.fairshare import (
    FairShares,
    build_queue_tree,
    compute_fair_shares,
    saturation,
)
from leitstand.scheduler.model import ModelQuota, Queue, QueueName


def fair(
    queues: Sequence[Queue],
    demand_gpus: Mapping[str, float],
    capacity_gpus: float,
    **kwargs: object,
) -> FairShares:
    demand = {QueueName(k): round(v * 1000) for k, v in demand_gpus.items()}
    return compute_fair_shares(queues, demand, capacity_gpus * 1000, **kwargs)


def gpus(result: FairShares) -> dict[str, float]:
    return {name: round(v / 1000, 6) for name, v in result.share_milli.items()}


# --- deserved phase -------------------------------------------------------------------------------


def test_deserved_is_min_of_quota_demand_and_limit() -> None:
    queues = [
        make_queue("quota-bound", quota_gpus=4, weight=0),
        make_queue("demand-bound", quota_gpus=4, weight=0),
        make_queue("limit-bound", quota_gpus=4, limit_gpus=4, weight=0),
    ]
    r = fair(queues, {"quota-bound": 10, "demand-bound": 1.5, "limit-bound": 3}, 100)
    assert r.deserved_milli == {"quota-bound": 4000, "demand-bound": 1500, "limit-bound": 3000}
    assert gpus(r) == {"quota-bound": 4, "demand-bound": 1.5, "limit-bound": 3}


def test_queue_without_demand_gets_nothing_even_with_quota() -> None:
    r = fair([make_queue("idle", quota_gpus=8), make_queue("busy")], {"busy": 100}, 16)
    assert gpus(r) == {"idle": 0, "busy": 16}


# --- over-quota phase -----------------------------------------------------------------------------


def test_surplus_split_by_over_quota_weight() -> None:
    # 8 GPUs: deserved 2 + 1, surplus 5 split 1:3.
    queues = [make_queue("a", quota_gpus=2, weight=1), make_queue("b", quota_gpus=1, weight=3)]
    r = fair(queues, {"a": 10, "b": 10}, 8)
    assert gpus(r) == {"a": 3.25, "b": 4.75}
    assert r.over_quota_milli(QueueName("a")) == pytest.approx(1250)


def test_water_filling_hands_a_capped_queue_slice_to_the_others() -> None:
    # Equal weights, 12 GPUs, no quotas: a wants only 1, so b and c split the other 11.
    queues = [make_queue("a"), make_queue("b"), make_queue("c")]
    r = fair(queues, {"a": 1, "b": 100, "c": 100}, 12)
    assert gpus(r) == {"a": 1, "b": 5.5, "c": 5.5}


def test_water_filling_respects_limits() -> None:
    queues = [make_queue("a", limit_gpus=2), make_queue("b", weight=2), make_queue("c", weight=2)]
    r = fair(queues, {"a": 100, "b": 100, "c": 3}, 12)
    assert gpus(r) == {"a": 2, "b": 7, "c": 3}


def test_weight_zero_gets_nothing_over_quota() -> None:
    queues = [make_queue("zero", quota_gpus=2, weight=0), make_queue("one", quota_gpus=2, limit_gpus=4)]
    r = fair(queues, {"zero": 100, "one": 100}, 16)
    # 'one' is capped at 4 and 'zero' may not go over quota: 10 GPUs stay idle.
    assert gpus(r) == {"zero": 2, "one": 4}
    assert r.requestable_milli["zero"] == 2000


def test_higher_priority_bucket_is_satisfied_first() -> None:
    queues = [
        make_queue("high", priority=200, weight=1),
        make_queue("low-heavy", priority=100, weight=100),
        make_queue("low", priority=100, weight=100, quota_gpus=1),
    ]
    r = fair(queues, {"high": 6, "low-heavy": 100, "low": 100}, 10)
    # Quota first (low: 1), then 'high' takes all it wants (6) despite its small weight, then the
    # lower bucket splits the last 3.
    assert gpus(r) == {"high": 6, "low-heavy": 1.5, "low": 2.5}


def test_higher_bucket_can_take_everything() -> None:
    queues = [make_queue("high", priority=200), make_queue("low", priority=100)]
    r = fair(queues, {"high": 100, "low": 100}, 10)
    assert gpus(r) == {"high": 10, "low": 0}


def test_quota_is_not_subject_to_priority() -> None:
    queues = [make_queue("high", priority=200), make_queue("low", priority=1, quota_gpus=4)]
    r = fair(queues, {"high": 100, "low": 100}, 10)
    assert gpus(r) == {"high": 6, "low": 4}


def test_fractional_quotas_count_exactly() -> None:
    # KAI would round shares to whole GPUs; Leitstand keeps milli-GPU exactly.
    queues = [make_queue("a", quota_gpus=0.7, weight=1), make_queue("b", quota_gpus=0.3, weight=2)]
    r = fair(queues, {"a": 5, "b": 5}, 2.5)
    assert r.deserved_milli == {"a": 700, "b": 300}
    assert r.share_milli["a"] == pytest.approx(700 + 500)
    assert r.share_milli["b"] == pytest.approx(300 + 1000)


# --- over-committed quotas (documented deviation) --------------------------------------------------


def test_overcommitted_quotas_scale_down_proportionally() -> None:
    queues = [make_queue("a", quota_gpus=8), make_queue("b", quota_gpus=4), make_queue("c", quota_gpus=4)]
    r = fair(queues, {"a": 8, "b": 4, "c": 2}, 7)
    # Deserved 8 + 4 + 2 = 14 > 7: each gets half of its in-quota part, nothing over quota.
    assert gpus(r) == {"a": 4, "b": 2, "c": 1}
    assert r.deserved_scale[QueueName("a")] == pytest.approx(0.5)
    assert sum(r.share_milli.values()) == pytest.approx(7000)


def test_children_quotas_above_the_department_share_are_scaled() -> None:
    queues = [
        make_queue("dept", quota_gpus=4, limit_gpus=4),
        make_queue("p1", "dept", quota_gpus=4),
        make_queue("p2", "dept", quota_gpus=4),
        make_queue("other"),
    ]
    r = fair(queues, {"p1": 8, "p2": 8, "other": 100}, 16)
    assert gpus(r) == {"dept": 4, "p1": 2, "p2": 2, "other": 12}
    assert r.deserved_scale[QueueName("p1")] == pytest.approx(0.5)
    assert r.deserved_scale[QueueName("dept")] == 1.0


# --- hierarchy ------------------------------------------------------------------------------------


def department_tree() -> list[Queue]:
    return [
        make_queue("research", quota_gpus=16, weight=1),
        make_queue("vision", "research", quota_gpus=8, weight=1),
        make_queue("nlp", "research", quota_gpus=8, weight=3),
        make_queue("product", quota_gpus=8, weight=1),
        make_queue("serving", "product", quota_gpus=8),
    ]


def test_children_divide_the_parents_share() -> None:
    r = fair(department_tree(), {"vision": 100, "nlp": 100, "serving": 100}, 32)
    # Root: research 16 + product 8 deserved; surplus 8 split 1:1.
    assert gpus(r)["research"] == 20
    assert gpus(r)["product"] == 12
    # research's 20: 8 + 8 deserved, surplus 4 split 1:3.
    assert gpus(r)["vision"] == 9
    assert gpus(r)["nlp"] == 11
    assert gpus(r)["serving"] == 12


def test_inner_demand_and_requestable_come_from_children() -> None:
    r = fair(department_tree(), {"vision": 2, "nlp": 3, "serving": 100}, 32)
    assert r.demand_milli["research"] == 5000
    assert r.requestable_milli["research"] == 5000
    assert gpus(r) == {"research": 5, "vision": 2, "nlp": 3, "product": 27, "serving": 27}


def test_parent_limit_caps_the_whole_subtree() -> None:
    queues = [make_queue("dept", limit_gpus=6), make_queue("p1", "dept"), make_queue("p2", "dept"), make_queue("x")]
    r = fair(queues, {"p1": 100, "p2": 100, "x": 100}, 20)
    assert gpus(r) == {"dept": 6, "p1": 3, "p2": 3, "x": 14}


def test_children_with_weight_zero_do_not_strand_the_parents_share() -> None:
    # dept could borrow, but its only child may not go over quota: dept's requestable stops at 2.
    queues = [make_queue("dept"), make_queue("p", "dept", quota_gpus=2, weight=0), make_queue("x")]
    r = fair(queues, {"p": 100, "x": 100}, 10)
    assert gpus(r) == {"dept": 2, "p": 2, "x": 8}


def test_multiple_roots_share_the_capacity() -> None:
    queues = [make_queue("a", quota_gpus=1), make_queue("b", quota_gpus=1), make_queue("c", "b")]
    r = fair(queues, {"a": 100, "c": 100}, 6)
    assert gpus(r) == {"a": 3, "b": 3, "c": 3}


def test_capacity_zero_gives_zero_shares() -> None:
    r = fair(department_tree(), {"vision": 1}, 0)
    assert set(r.share_milli.values()) == {0.0}


# --- time-decayed fair share ----------------------------------------------------------------------


def test_usage_lowers_the_over_quota_share() -> None:
    queues = [make_queue("heavy-user"), make_queue("light-user")]
    demand = {"heavy-user": 100, "light-user": 100}
    plain = fair(queues, demand, 10)
    decayed = fair(queues, demand, 10, usage_share={QueueName("heavy-user"): 0.6}, usage_factor=0.5)
    assert gpus(plain) == {"heavy-user": 5, "light-user": 5}
    # W = 0.5 each; P_heavy = 0.5 + 0.5·(0.5 − 0.6) = 0.45, P_light = 0.5 + 0.5·0.5 = 0.75.
    assert decayed.share_milli["heavy-user"] == pytest.approx(10_000 * 0.45 / 1.2)
    assert decayed.share_milli["light-user"] == pytest.approx(10_000 * 0.75 / 1.2)


def test_usage_does_not_touch_quota() -> None:
    queues = [make_queue("a", quota_gpus=6), make_queue("b")]
    r = fair(queues, {"a": 6, "b": 100}, 10, usage_share={QueueName("a"): 1.0}, usage_factor=10)
    assert gpus(r) == {"a": 6, "b": 4}


def test_usage_factor_zero_is_plain_weights() -> None:
    queues = [make_queue("a", weight=1), make_queue("b", weight=3)]
    demand = {"a": 100, "b": 100}
    r = fair(queues, demand, 8, usage_share={QueueName("a"): 0.9}, usage_factor=0)
    assert gpus(r) == gpus(fair(queues, demand, 8))


def test_weight_decayed_to_zero_still_takes_leftovers() -> None:
    # P_heavy = max(0, 0.5 + 2·(0.5 − 1.0)) = 0: it goes last, but idle GPUs are not withheld.
    queues = [make_queue("heavy"), make_queue("light")]
    r = fair(queues, {"heavy": 100, "light": 4}, 10, usage_share={QueueName("heavy"): 1.0}, usage_factor=2)
    assert gpus(r) == {"heavy": 6, "light": 4}


def test_inner_usage_defaults_to_sum_of_children() -> None:
    queues = [make_queue("d1"), make_queue("p1", "d1"), make_queue("d2"), make_queue("p2", "d2")]
    demand = {"p1": 100, "p2": 100}
    by_leaf = fair(queues, demand, 10, usage_share={QueueName("p1"): 0.6})
    by_dept = fair(queues, demand, 10, usage_share={QueueName("d1"): 0.6})
    assert by_leaf.share_milli["d1"] == pytest.approx(by_dept.share_milli["d1"])
    assert by_leaf.share_milli["d1"] < 5000


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queues", "demand", "match"),
    [
        ([make_queue("a", "nope")], {}, "parent 'nope' is not a known queue"),
        ([make_queue("a", "b"), make_queue("b", "a")], {}, "cycle: a -> b -> a"),
        ([make_queue("a", "a")], {}, "cycle: a -> a"),
        ([make_queue("a"), make_queue("a")], {}, "defined twice"),
        ([make_queue("a"), make_queue("b", "a")], {"a": 1000}, "'a' has child queues \\(b\\)"),
        ([make_queue("a")], {"ghost": 1000}, "unknown queue 'ghost'"),
        ([make_queue("a")], {"a": -1}, "demand -1"),
        ([make_queue("a", quota_gpus=4, limit_gpus=2)], {}, "quota 4 GPUs is above its limit 2 GPUs"),
        ([make_queue("a", weight=-1)], {}, "weight -1"),
        ([make_queue("a", weight=math.nan)], {}, "weight nan"),
        ([make_queue("a", quota_gpus=-1)], {}, "negative"),
        ([make_queue("")], {}, "empty name"),
    ],
)
def test_invalid_specs_raise_naming_the_queue(queues: list[Queue], demand: dict[str, int], match: str) -> None:
    with pytest.raises(InvalidSpecError, match=match):
        compute_fair_shares(queues, {QueueName(k): v for k, v in demand.items()}, 8000)


def test_invalid_spec_error_is_a_value_error_and_a_leitstand_error() -> None:
    with pytest.raises(ValueError) as info:
        build_queue_tree([make_queue("a", "missing")])
    assert isinstance(info.value, LeitstandError)


@pytest.mark.parametrize(("capacity", "k"), [(-1.0, 1.0), (math.inf, 1.0), (1000.0, -0.5)])
def test_invalid_numbers_raise(capacity: float, k: float) -> None:
    with pytest.raises(InvalidSpecError):
        compute_fair_shares([make_queue("a")], {}, capacity, usage_share={}, usage_factor=k)


def test_invalid_usage_raises() -> None:
    with pytest.raises(InvalidSpecError, match="usage given for unknown queue 'x'"):
        compute_fair_shares([make_queue("a")], {}, 1000, usage_share={QueueName("x"): 0.1})


# --- tree and helpers -----------------------------------------------------------------------------


def test_queue_tree_paths_and_order() -> None:
    tree = build_queue_tree(
        [make_queue("leaf", "mid"), make_queue("mid", "top"), make_queue("top"), make_queue("solo")]
    )
    assert tree.path(QueueName("leaf")) == ("top", "mid", "leaf")
    assert tree.ancestors(QueueName("leaf")) == ("mid", "top")
    assert tree.order.index(QueueName("top")) < tree.order.index(QueueName("mid"))
    assert set(tree.leaves) == {"leaf", "solo"}
    assert tree.children[None] == ("solo", "top")


def test_every_queue_has_every_entry() -> None:
    r = fair(department_tree(), {}, 10)
    names = {q.name for q in department_tree()}
    for d in (r.share_milli, r.deserved_milli, r.requestable_milli, r.demand_milli, r.deserved_scale):
        assert set(d) == names


@pytest.mark.parametrize(
    ("allocated", "share", "expected"),
    [(500.0, 1000.0, 0.5), (0.0, 0.0, 0.0), (1.0, 0.0, math.inf), (2000.0, 1000.0, 2.0)],
)
def test_saturation(allocated: float, share: float, expected: float) -> None:
    assert saturation(allocated, share) == expected


# --- reserved pools (docs/fairshare.md, "Reserved pools") ------------------------------------------


def pools(**gpus_by_pool: float) -> dict[str, float]:
    return {pool: g * 1000 for pool, g in gpus_by_pool.items()}


def test_reserved_pool_counts_only_for_its_queue() -> None:
    # 256 shared GPUs, 1,040 in the consortium's pool. Shared tenants divide 256, not 1,296.
    queues = [
        make_queue("consortium", quota_gpus=1040, pool="consortium"),
        make_queue("industry", quota_gpus=64),
        make_queue("sme", quota_gpus=64),
    ]
    demand = {"consortium": 80, "industry": 500, "sme": 500}
    r = fair(queues, demand, 256, pool_capacity_milli=pools(consortium=1040))
    assert gpus(r) == {"consortium": 80, "industry": 128, "sme": 128}
    assert r.capacity_milli == 1296 * 1000
    # Without pool capacities, every GPU counts for everyone (the old rule, kept for such callers).
    old = fair(queues, demand, 1296)
    assert gpus(old)["industry"] == gpus(old)["sme"] == 500


def test_reserved_pool_is_not_shared_when_idle_and_its_queue_gets_no_shared_gpus() -> None:
    queues = [make_queue("gov", quota_gpus=16, pool="sovereign"), make_queue("team")]
    r = fair(queues, {"gov": 100, "team": 100}, 16, pool_capacity_milli=pools(sovereign=16))
    assert gpus(r) == {"gov": 16, "team": 16}
    idle = fair(queues, {"team": 100}, 16, pool_capacity_milli=pools(sovereign=16))
    assert gpus(idle) == {"gov": 0, "team": 16}


def test_reserved_child_takes_its_quota_and_share_out_of_its_department() -> None:
    # university quota 48 = lab 32 (reserved pool of 32) + students 16; industry 16; 64 shared.
    queues = [
        make_queue("university", quota_gpus=48, limit_gpus=60),
        make_queue("lab", "university", quota_gpus=32, pool="lab"),
        make_queue("students", "university", quota_gpus=16),
        make_queue("industry", quota_gpus=16),
    ]
    r = fair(queues, {"lab": 30, "students": 100, "industry": 100}, 64, pool_capacity_milli=pools(lab=32))
    # Shared: university 48 - 32 = 16 in quota, limit 60 - 30 (lab's share) = 30; industry 16.
    # Surplus 32 split 1:1 would give 32 each, but the university's shared part stops at 30.
    assert gpus(r) == {"university": 60, "lab": 30, "students": 30, "industry": 34}
    assert r.deserved_milli["university"] == pytest.approx((16 + 30) * 1000)
    assert r.share_milli["university"] <= 60_000 + 1e-6


def test_reserved_pools_sum_to_their_capacity_and_never_leak() -> None:
    queues = [
        make_queue("a", quota_gpus=4, pool="p"),
        make_queue("b", quota_gpus=4, pool="p"),
        make_queue("c", quota_gpus=2, pool="q"),
        make_queue("d"),
    ]
    r = fair(queues, {"a": 100, "b": 100, "c": 1, "d": 100}, 10, pool_capacity_milli=pools(p=12, q=8))
    assert gpus(r) == {"a": 6, "b": 6, "c": 1, "d": 10}  # c's idle 7 GPUs stay in pool q


def test_reserved_pool_capacity_missing_or_negative_is_an_error() -> None:
    queues = [make_queue("gov", pool="sovereign")]
    with pytest.raises(InvalidSpecError, match="pool 'sovereign' is reserved by queue\\(s\\) gov"):
        fair(queues, {}, 8, pool_capacity_milli={})
    with pytest.raises(InvalidSpecError, match="pool 'sovereign': capacity"):
        fair(queues, {}, 8, pool_capacity_milli={"sovereign": -1.0})


def test_a_pool_reserved_twice_in_one_subtree_is_divided_through_the_tree_above() -> None:
    # outer reserves p; inside it middle reserves q, and inner (under middle) p again. Pool p's 8 GPUs
    # go to its two leaves through outer and middle (weights 1:1): other 4, inner 4. Pool q has no
    # leaf of its own, so its GPUs go to nobody.
    queues = [
        make_queue("outer", pool="p"),
        make_queue("middle", "outer", pool="q"),
        make_queue("inner", "middle", pool="p"),
        make_queue("other", "outer"),
    ]
    r = fair(queues, {"inner": 100, "other": 100}, 0, pool_capacity_milli=pools(p=8, q=8))
    assert gpus(r) == {"outer": 8, "middle": 4, "inner": 4, "other": 4}


def test_ancestor_limit_holds_across_pools() -> None:
    # dept (limit 10) has a child reserving pool p (12 GPUs) and a shared child: the pool counts first
    # (it cannot go to anyone else), the shared child gets what the limit leaves.
    queues = [
        make_queue("dept", limit_gpus=10),
        make_queue("lab", "dept", pool="p"),
        make_queue("team", "dept"),
        make_queue("other"),
    ]
    r = fair(queues, {"lab": 100, "team": 100, "other": 100}, 16, pool_capacity_milli=pools(p=12))
    assert gpus(r) == {"dept": 10, "lab": 10, "team": 0, "other": 16}


# --- quota per GPU model (docs/fairshare.md, "Quota per GPU model") --------------------------------


def with_models(queue: Queue, **entries: tuple[float, float | None]) -> Queue:
    """`B200=(quota, limit)` in GPUs."""
    return replace(
        queue,
        model_quotas=tuple(
            ModelQuota(m, round(q * 1000), None if lim is None else round(lim * 1000))
            for m, (q, lim) in entries.items()
        ),
    )


def test_fair_share_per_model_and_in_total() -> None:
    queues = [
        with_models(make_queue("a", quota_gpus=24), B200=(16, None), H100=(8, None)),
        with_models(make_queue("b", quota_gpus=24), B200=(16, None), H100=(8, None)),
    ]
    capacity = {(None, "B200"): 32_000.0, (None, "H100"): 16_000.0}
    model_demand = {"B200": {QueueName("a"): 32_000}, "H100": {QueueName("b"): 16_000}}
    r = fair(queues, {"a": 32, "b": 16}, 48, model_capacity_milli=capacity, model_demand_milli=model_demand)
    assert gpus(r) == {"a": 32, "b": 16}
    assert gpus(r.by_model["B200"]) == {"a": 32, "b": 0}
    assert gpus(r.by_model["H100"]) == {"a": 0, "b": 16}
    assert r.by_model["B200"].deserved_milli == {"a": 16_000, "b": 0}


def test_model_limit_caps_the_model_share_and_unlisted_queues_have_no_model_quota() -> None:
    queues = [with_models(make_queue("a", quota_gpus=16), H100=(0, 8)), make_queue("b", quota_gpus=16)]
    capacity = {(None, "H100"): 32_000.0}
    model_demand = {"H100": {QueueName("a"): 32_000, QueueName("b"): 32_000}}
    r = fair(queues, {"a": 32, "b": 32}, 32, model_capacity_milli=capacity, model_demand_milli=model_demand)
    assert gpus(r.by_model["H100"]) == {"a": 8, "b": 24}
    assert r.by_model["H100"].deserved_milli == {"a": 0, "b": 0}


def test_model_shares_respect_reserved_pools() -> None:
    queues = [
        with_models(make_queue("lab", quota_gpus=8, pool="lab"), B200=(8, None)),
        with_models(make_queue("team", quota_gpus=8), B200=(8, None)),
    ]
    capacity = {("lab", "B200"): 8_000.0, (None, "B200"): 16_000.0}
    model_demand = {"B200": {QueueName("lab"): 100_000, QueueName("team"): 100_000}}
    r = fair(
        queues,
        {"lab": 100, "team": 100},
        16,
        pool_capacity_milli=pools(lab=8),
        model_capacity_milli=capacity,
        model_demand_milli=model_demand,
    )
    assert gpus(r.by_model["B200"]) == {"lab": 8, "team": 16}


def test_no_model_division_without_model_quotas_or_capacity() -> None:
    queues = [with_models(make_queue("a", quota_gpus=8), B200=(8, None))]
    assert fair(queues, {"a": 8}, 8).by_model == {}
    assert fair([make_queue("a")], {"a": 8}, 8, model_capacity_milli={(None, "B200"): 8000.0}).by_model == {}


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ((ModelQuota("B200", 1000), ModelQuota("B200", 1000)), "GPU model 'B200' is listed twice"),
        ((ModelQuota("B200", 4000, 2000),), "'B200': quota 4 GPUs is above its limit 2 GPUs"),
        ((ModelQuota("B200", -1),), "'B200': quota -1 milli-GPU is negative"),
        ((ModelQuota("B200", 0, -1),), "'B200': limit -1 milli-GPU is negative"),
        ((ModelQuota("B200", 0, None, math.nan),), "'B200': over-quota weight nan"),
        ((ModelQuota("", 1000),), "empty model name"),
        ((ModelQuota("B200", 6000), ModelQuota("H100", 6000)), "per-model quotas add up to 12 GPUs, above its total"),
    ],
)
def test_invalid_model_quotas_name_the_queue_model_and_fix(entries: tuple[ModelQuota, ...], match: str) -> None:
    queue = replace(make_queue("a", quota_gpus=8), model_quotas=entries)
    with pytest.raises(InvalidSpecError, match=match):
        build_queue_tree([queue])
