"""Placement policies: the context builder, the typical-task table, and each policy's preferences."""

from __future__ import annotations

import numpy as np
import pytest

from leitstand.scheduler import policy_kernels as pk
from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import Node, NodeName
from leitstand.scheduler.policies import DEFAULT_SHAPES, PolicyContext, TaskShape, typical_tasks_from_shapes
from leitstand.scheduler.state import ClusterState


def cluster(*gpus_per_node: int, model: str = "H100") -> ClusterState:
    nodes = [
        Node(name=NodeName(f"n{i}"), gpus=g, cpu_milli=64_000, memory_mib=512_000, gpu_model=model if g else "")
        for i, g in enumerate(gpus_per_node)
    ]
    return ClusterState.from_nodes(nodes)


def score(ctx: PolicyContext, state: ClusterState, n: int, gpus: int, milli: int, cpu: int = 4000) -> int:
    value = pk.node_score_kernel(
        int(ctx.code), n, state.gpu_free_milli, state.gpu_count, state.cpu_free_milli,
        state.cpu_capacity_milli, state.memory_free_mib, state.gpu_model, gpus, milli, cpu, 0,
        ctx.typ_cpu, ctx.typ_milli, ctx.typ_num, ctx.typ_model_ok, ctx.typ_weight, np.uint64(12345),
    )  # fmt: skip
    assert isinstance(value, (int, np.integer)), type(value)  # numpy ints when NUMBA_DISABLE_JIT=1
    return int(value)


def choose(ctx: PolicyContext, state: ClusterState, n: int, gpus: int, milli: int) -> list[int]:
    out = np.full(gpus, -1, dtype=np.int32)
    pk.choose_gpus_kernel(
        int(ctx.code), n, state.gpu_free_milli, state.gpu_count, gpus, milli,
        ctx.typ_cpu, ctx.typ_milli, ctx.typ_num, ctx.typ_model_ok, ctx.typ_weight, out,
    )  # fmt: skip
    return out.tolist()


def test_kernel_policy_ints_match_codes() -> None:
    for code in PolicyCode:
        assert getattr(pk, code.name) == int(code)


def test_build_defaults() -> None:
    state = cluster(8, 8, 4)
    ctx = PolicyContext.build(state)
    assert ctx.code is PolicyCode.LEITSTAND
    assert ctx.node_rank.tolist() == [0, 1, 2]
    assert len(ctx.typ_cpu) == len(DEFAULT_SHAPES)
    assert ctx.typ_model_ok.shape == (len(DEFAULT_SHAPES), len(state.model_codes) + 1)
    assert ctx.typ_weight.sum() == pytest.approx(1.0)
    assert PolicyContext.build(state, "fgd", seed=7).code is PolicyCode.FGD
    with pytest.raises(ValueError, match="node_rank"):
        PolicyContext.build(state, node_rank=np.arange(2))
    with pytest.raises(ValueError, match="choose one of"):
        PolicyContext.build(state, "worstfit")


def test_typical_tasks_stop_at_coverage_and_order_by_count() -> None:
    shapes = [
        TaskShape(cpu_milli=1000, gpu_milli=500, gpus=1, count=50),
        TaskShape(cpu_milli=2000, gpu_milli=1000, gpus=1, count=46),
        TaskShape(cpu_milli=4000, gpu_milli=0, gpus=0, count=4),
    ]
    table = typical_tasks_from_shapes(shapes, {"H100": 0})
    assert table.gpu_milli.tolist() == [500, 1000]  # 96 % covered after two shapes
    assert table.weight.tolist() == pytest.approx([50 / 96, 46 / 96])
    gated = typical_tasks_from_shapes([TaskShape(1000, 500, 1, 1, frozenset({"A100"}))], {"H100": 0, "A100": 1})
    assert gated.model_ok.tolist() == [[False, True, False]]


def test_bestfit_prefers_the_tighter_node() -> None:
    state = cluster(8, 8)
    state.allocate(0, [0, 1, 2, 3], 1000, 8000, 0)
    ctx = PolicyContext.build(state, PolicyCode.BESTFIT)
    assert score(ctx, state, 0, 1, 1000) > score(ctx, state, 1, 1, 1000)


def test_gpupacking_tiers() -> None:
    state = cluster(8, 8, 8)
    state.allocate(0, [0], 500, 0, 0)  # GPU 0 half used
    state.allocate(1, [0], 1000, 0, 0)  # a whole GPU used, the rest idle
    ctx = PolicyContext.build(state, PolicyCode.GPUPACKING)
    shared = score(ctx, state, 0, 1, 250)
    opened = score(ctx, state, 1, 1, 250)
    idle = score(ctx, state, 2, 1, 250)
    assert shared == 100 - (500 * 100 // 1000) // 10 == 95
    assert opened == 49 and idle == 25
    assert score(ctx, state, 0, 0, 0) == 0  # CPU-only tasks tie everywhere


def test_fgd_prefers_the_gpu_where_the_slice_fits_snugly() -> None:
    state = cluster(2)
    state.allocate(0, [0], 500, 0, 0)
    shapes = [TaskShape(cpu_milli=1000, gpu_milli=500, gpus=1, count=1)]
    ctx = PolicyContext.build(state, PolicyCode.FGD, typical=typical_tasks_from_shapes(shapes, state.model_codes))
    assert choose(ctx, state, 0, 1, 500) == [0]  # filling GPU 0 leaves GPU 1 whole for the next 500
    assert score(ctx, state, 0, 1, 500) == 50  # Δ fragmentation 0 → sigmoid(0) · 100


def test_whole_gpu_tasks_take_lowest_index_free_gpus_and_trailing_args_are_optional() -> None:
    state = cluster(8)
    state.allocate(0, [1], 300, 0, 0)
    for code in PolicyCode:
        ctx = PolicyContext.build(state, code)
        assert choose(ctx, state, 0, 2, 1000) == [0, 2], code


def test_sharing_task_goes_to_least_free_gpu_for_bestfit() -> None:
    state = cluster(4)
    state.allocate(0, [2], 700, 0, 0)
    state.allocate(0, [1], 400, 0, 0)
    ctx = PolicyContext.build(state, PolicyCode.BESTFIT)
    assert choose(ctx, state, 0, 1, 250) == [2]  # 300 free: the tightest fit
    assert choose(ctx, state, 0, 1, 500) == [1]


def test_leitstand_puts_cpu_only_tasks_where_gpus_are_taken() -> None:
    state = cluster(8, 8)
    state.allocate(0, list(range(8)), 1000, 8000, 0)  # node 0's GPUs are all busy
    typical = typical_tasks_from_shapes([TaskShape(1000, 1000, 1, 1)], state.model_codes)
    ctx = PolicyContext.build(state, PolicyCode.LEITSTAND, typical=typical)
    fgd = PolicyContext.build(state, PolicyCode.FGD, typical=typical)
    assert score(fgd, state, 0, 0, 0) == score(fgd, state, 1, 0, 0) == 50  # FGD is indifferent here
    assert score(ctx, state, 0, 0, 0) > score(ctx, state, 1, 0, 0)


def test_random_scores_follow_the_draw() -> None:
    state = cluster(8)
    ctx = PolicyContext.build(state, PolicyCode.RANDOM)
    assert score(ctx, state, 0, 1, 1000) == 12345 >> 1


def test_scores_are_int64_for_every_policy() -> None:
    """Mixing uint64 (Random's draw) and int64 once widened every score to float64; keep it integral."""
    state = cluster(8)
    for code in PolicyCode:
        score(PolicyContext.build(state, code), state, 0, 1, 500)  # asserts an int comes back
    signatures = getattr(pk.node_score_kernel, "nopython_signatures", None)  # None without the JIT
    if signatures is not None:
        assert signatures and all(str(sig.return_type) == "int64" for sig in signatures)


def test_dotprod_prefers_the_smallest_product_and_keeps_idle_gpus() -> None:
    state = cluster(8, 8)
    state.allocate(0, [3], 700, 0, 0)  # GPU 3: 300 free
    state.allocate(0, [5], 400, 0, 0)  # GPU 5: 600 free
    ctx = PolicyContext.build(state, PolicyCode.DOTPROD)
    out = np.full(1, -1, dtype=np.int32)
    pk.choose_gpus_kernel(
        int(ctx.code), 0, state.gpu_free_milli, state.gpu_count, 1, 250,
        ctx.typ_cpu, ctx.typ_milli, ctx.typ_num, ctx.typ_model_ok, ctx.typ_weight, out,
        int(state.cpu_free_milli[0]), int(state.gpu_model[0]), 4000,
    )  # fmt: skip
    assert out.tolist() == [3]
    # the partly used node beats the idle one: a smaller product with what is left
    assert score(ctx, state, 0, 1, 250) > score(ctx, state, 1, 1, 250)
    assert choose(ctx, state, 1, 1, 250) == [0]  # idle node: the lowest-index free GPU
