"""Unit tests of leitstand.scheduler.fairshare: each Run:ai/KAI rule (notes/runai-semantics.md) and
each documented deviation, one small tree at a time. Amounts in tests are GPUs; the API is milli-GPU."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest
from builders import make_queue

from leitstand.scheduler.errors import InvalidSpecError, LeitstandError
from leitstand.scheduler.fairshare import (
    FairShares,
    build_queue_tree,
    compute_fair_shares,
    saturation,
)
from leitstand.scheduler.model import Queue, QueueName


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
