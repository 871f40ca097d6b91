"""Compiled node scores and GPU choice of every placement policy (Numba, arrays in, arrays out).

Called by the placement kernels (`placement_kernels.py`; the inflation simulator reaches them only
through `place_gang_kernel`) once per feasible node: `node_score_kernel` says how good node `n` is
for a request (higher is better; ties are the caller's business: smallest `node_rank` wins), and
`choose_gpus_kernel` picks the GPUs on the chosen node. Neither kernel checks feasibility: the caller
has already filtered on CPU, memory, model and "≥ req_gpus GPUs with ≥ req_milli free".

Policy codes are `codes.PolicyCode` values. The baselines follow the FGD paper (ATC'23) as its
authors' simulator runs them (docs/policies.md, "The paper protocol"): integer scores, truncated the way
Go truncates, because the published numbers depend on the ties this creates. `leitstand` is FGD's
fragmentation gradient with finer tie-break keys (see docs/policies.md).

Typical-task arrays (T typical shapes, M GPU-model codes): `typ_cpu[T]` milli-CPU, `typ_milli[T]`
milli per GPU, `typ_num[T]` GPU count (0 = CPU-only), `typ_model_ok[T, M+1]` (column m: model code m
allowed; the last column is read for nodes without a model code, i.e. code -1), `typ_weight[T]`.

No Python objects, no globals, no logging; every helper lives in this file (Numba's cache does not
notice edits to other files). `policy_reference.py` is the readable twin; parity tests hold them equal.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import GPU_MILLI as MODEL_GPU_MILLI

# PolicyCode values as plain ints (Numba freezes module-level ints into the compiled code);
# codes.py is the single source, and model.GPU_MILLI the one definition of a whole GPU.
LEITSTAND = int(PolicyCode.LEITSTAND)
RANDOM = int(PolicyCode.RANDOM)
DOTPROD = int(PolicyCode.DOTPROD)
GPUCLUSTERING = int(PolicyCode.GPUCLUSTERING)
GPUPACKING = int(PolicyCode.GPUPACKING)
BESTFIT = int(PolicyCode.BESTFIT)
FGD = int(PolicyCode.FGD)

GPU_MILLI = int(MODEL_GPU_MILLI)
MAX_NODE_GPU_MILLI = 8000
"""The authors' `MaxSpecGpu`: 8 GPUs × 1000 milli, the GPU scale of GpuClustering and DotProd."""
MAX_NODE_CPU_MILLI = 128000
"""The authors' `MaxSpecCpu`: 128 cores, the CPU scale of DotProd (and of BestFit's formula)."""
CPU_PLENTY = 1 << 40
"""Free CPU assumed when a caller of `choose_gpus_kernel` does not pass the node's (milli-CPU)."""
LEITSTAND_PRIMARY_SHIFT = 1 << 40
"""leitstand composes (FGD integer score, finer keys) into one int64: primary × 2^40 + secondary."""


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _node_frag_kernel(
    free: NDArray[np.int32],
    count: int,
    cpu_free: int,
    model: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
) -> float:
    """FGD's node fragmentation F: expected GPU milli of the node that a typical task cannot use.

    Accumulated per category (lack both, lack GPU, satisfied, lack CPU, CPU-only fits, CPU-only lacks
    CPU, no model access) and summed without "satisfied", in that order: float64 rounding then matches
    the authors' simulator, so the truncated scores match too.
    """
    total_free = 0
    for g in range(count):
        total_free += free[g]
    g_total = float(total_free)
    c0 = 0.0
    c1 = 0.0
    c2 = 0.0
    c3 = 0.0
    c4 = 0.0
    c5 = 0.0
    c6 = 0.0
    for t in range(typ_cpu.shape[0]):
        w = typ_weight[t]
        cpu_ok = cpu_free >= typ_cpu[t]
        if typ_num[t] == 0:
            if cpu_ok:
                c4 += w * g_total
            else:
                c5 += w * g_total
            continue
        if not typ_model_ok[t, model]:
            c6 += w * g_total
            continue
        milli = typ_milli[t]
        fitting = 0
        small = 0
        for g in range(count):
            if free[g] >= milli:
                fitting += 1
            else:
                small += free[g]
        if fitting >= typ_num[t]:
            if cpu_ok:
                c1 += w * float(small)
                c2 += w * float(total_free - small)
            else:
                c3 += w * g_total
        elif cpu_ok:
            c1 += w * g_total
        else:
            c0 += w * g_total
    out = 0.0
    out += c0
    out += c1
    out += c3
    out += c4
    out += c5
    out += c6
    return out


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _fgd_int_kernel(before: float, after: float) -> int:
    """100 · sigmoid((F_before − F_after) / 1000), truncated toward zero like Go's int64()."""
    x = (before - after) / 1000.0
    return int(1.0 / (1.0 + math.exp(-x)) * 100.0)


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _take_by_free_kernel(
    free: NDArray[np.int32], count: int, req_gpus: int, req_milli: int, out: NDArray[np.int32], most: bool
) -> None:
    """`req_gpus` GPUs that fit, least free first (`most` False: the after-state of a whole-GPU task
    in the scores) or most free first (`most` True: several slices per replica, which
    `choose_gpus_kernel` places so); lowest index on ties.

    Why most free first for several slices: replica after replica, taking the GPUs with the most
    slots left places k replicas on a node whenever Σ_g min(⌊free_g / milli⌋, k) ≥ k · req_gpus —
    the count `replica_capacity_kernel` promises (each pick keeps that sum true for the replicas
    left) — where the lowest-index GPUs can strand slots on one GPU (3 replicas of 2 × 0.5 GPU on 3
    free GPUs)."""
    taken = 0
    while taken < req_gpus:
        best = -1
        for g in range(count):
            if free[g] < req_milli:
                continue
            already = False
            for k in range(taken):
                if out[k] == g:
                    already = True
                    break
            if already:
                continue
            if best < 0 or (free[g] > free[best] if most else free[g] < free[best]):
                best = g
        out[taken] = best
        taken += 1


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _lowest_fitting_kernel(
    free: NDArray[np.int32], count: int, req_gpus: int, req_milli: int, out: NDArray[np.int32]
) -> None:
    """The lowest-index GPUs with at least `req_milli` free (whole- and multi-GPU tasks)."""
    taken = 0
    for g in range(count):
        if taken >= req_gpus:
            break
        if free[g] >= req_milli:
            out[taken] = g
            taken += 1


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _pseudo_random_fitting_kernel(free: NDArray[np.int32], count: int, n: int, req_milli: int) -> int:
    """Random's GPU for a sharing task: a fitting GPU picked by a hash of the node and its free milli.

    The interface passes no random draw to GPU choice, so the pick is a deterministic function of the
    node's state; over a run it spreads like a uniform draw (which is what the baseline asks for).
    """
    h = 2166136261 ^ (n & 0xFFFFFFFF)  # FNV-1a, 32-bit, kept in int64 (no overflow compiled or not)
    fitting = 0
    for g in range(count):
        h = ((h ^ int(free[g])) * 16777619) & 0xFFFFFFFF
        if free[g] >= req_milli:
            fitting += 1
    h ^= h >> 13
    pick = h % max(fitting, 1)
    for g in range(count):
        if free[g] >= req_milli:
            if pick == 0:
                return g
            pick -= 1
    return -1


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _fgd_scores_kernel(
    free: NDArray[np.int32],
    count: int,
    cpu_free: int,
    model: int,
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    gpu_scores: NDArray[np.int64],
    gpu_deltas: NDArray[np.float64],
) -> tuple[int, float, int]:
    """FGD on one node: (best integer score, its F_after − F_before, GPU index or -1).

    For a sharing task every GPU that fits is tried (`gpu_scores[g]`, `gpu_deltas[g]` filled, -1 where
    it does not fit; GPUs with equal free milli share one evaluation); otherwise the after-state is the
    node minus the task (GPUs least-free-first).
    """
    before = _node_frag_kernel(free, count, cpu_free, model, typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight)
    row = free[:count].copy()
    if req_gpus == 1 and 0 < req_milli < GPU_MILLI:
        best = -1
        best_g = -1
        best_delta = 0.0
        for g in range(count):
            gpu_scores[g] = -1
            if free[g] < req_milli:
                continue
            done = False
            for h in range(g):
                if free[h] == free[g] and gpu_scores[h] >= 0:
                    gpu_scores[g] = gpu_scores[h]
                    gpu_deltas[g] = gpu_deltas[h]
                    done = True
                    break
            if not done:
                row[g] -= req_milli
                after = _node_frag_kernel(
                    row, count, cpu_free - req_cpu, model, typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight
                )
                row[g] += req_milli
                gpu_scores[g] = _fgd_int_kernel(before, after)
                gpu_deltas[g] = after - before
            if best_g < 0 or gpu_scores[g] > best:
                best = gpu_scores[g]
                best_g = g
                best_delta = gpu_deltas[g]
        return best, best_delta, best_g
    if req_gpus > 0 and req_milli > 0:
        taken = np.empty(req_gpus, dtype=np.int32)
        _take_by_free_kernel(free, count, req_gpus, req_milli, taken, False)
        for k in range(req_gpus):
            row[taken[k]] -= req_milli
    after = _node_frag_kernel(
        row, count, cpu_free - req_cpu, model, typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight
    )
    return _fgd_int_kernel(before, after), after - before, -1


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _bestfit_raw_kernel(cpu_left: int, gpu_left: int, req_cpu: int, req_total_milli: int) -> int:
    """BestFit: 100 · (1 − mean of CPU and GPU left after placement, scaled by 128 cores / 8 GPUs)."""
    x = float(cpu_left - req_cpu) / 128000.0 * 0.5 + float(gpu_left - req_total_milli) / 8000.0 * 0.5
    return int((1.0 - x) * 100.0)


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _gpupacking_kernel(free: NDArray[np.int32], count: int, req_gpus: int, req_milli: int) -> int:
    """GpuPacking: partly used GPUs first, then partly used nodes, then idle nodes (integer tiers)."""
    if req_gpus == 0 or req_milli == 0:
        return 0
    fully = 0
    for g in range(count):
        if free[g] == GPU_MILLI:
            fully += 1
    if fully == count:
        return max(33 - fully, fully)
    taken = np.empty(req_gpus, dtype=np.int32)
    _take_by_free_kernel(free, count, req_gpus, req_milli, taken, False)
    fully_used = 0
    pct = 0
    for k in range(req_gpus):
        f = free[taken[k]]
        if f == GPU_MILLI:
            fully_used += 1
        pct += f * 100 // GPU_MILLI
    if fully_used > 0:
        return max(50 - fully_used, 33)
    return max(100 - pct // 10, 50)


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _dotprod_kernel(
    free: NDArray[np.int32], count: int, cpu_left: int, req_gpus: int, req_milli: int, req_cpu: int
) -> tuple[int, int]:
    """Tetris-style dot product, as the FGD authors configure it ("separate GPU dimension, share the
    CPU dimension", normalised by the largest node: 128 cores, 8 GPUs).

    Candidates: for a request below one GPU, each partly used GPU that fits, as (CPU left, its free
    milli); then, if the request fits in the fully free GPUs, (CPU left, fully free milli), which
    would take the lowest-index free GPUs. Score = 100 · (1 − (request · candidate) / 2), the best
    candidate wins (the first on ties). Returns (score, GPU of a partly used candidate or -1).
    """
    request = req_gpus * req_milli
    cpu_term = (float(cpu_left) / MAX_NODE_CPU_MILLI) * (float(req_cpu) / MAX_NODE_CPU_MILLI)
    req_norm = float(request) / MAX_NODE_GPU_MILLI
    best = -1.0
    best_g = -1
    idle = 0
    if request < GPU_MILLI:
        for g in range(count):
            f = free[g]
            if f >= GPU_MILLI or f < request:
                continue
            dot = 0.0 + cpu_term + (float(f) / MAX_NODE_GPU_MILLI) * req_norm
            score = 1.0 - dot / 2.0
            if best < score:
                best = score
                best_g = g
    for g in range(count):
        if free[g] == GPU_MILLI:
            idle += 1
    if request <= idle * GPU_MILLI:
        dot = 0.0 + cpu_term + (float(idle * GPU_MILLI) / MAX_NODE_GPU_MILLI) * req_norm
        score = 1.0 - dot / 2.0
        if best < score:
            best = score
            best_g = -1
    if best < 0.0:
        return 0, -1
    return int(100.0 * best), best_g


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _gpuclustering_kernel(free: NDArray[np.int32], count: int, req_gpus: int, req_milli: int) -> int:
    """GpuClustering: keep tasks of one kind together (tiers 75/50/25/0) and pack within a tier.

    Kinds as the paper's baseline defines them: GPU-sharing tasks, or whole-GPU tasks. The authors
    track the kinds running on each node; the array state only has free milli per GPU, so a partly
    used GPU is read as "sharing tasks run here" and a fully used GPU as "whole-GPU tasks run here"
    (the authors also tell 1-, 2-, 4- and 8-GPU tasks apart; the arrays cannot).
    """
    if req_gpus == 0 or req_milli == 0:
        return 0
    total = 0
    partial = False
    full = False
    for g in range(count):
        total += free[g]
        if free[g] == 0:
            full = True
        elif free[g] < GPU_MILLI:
            partial = True
    sharing = req_gpus == 1 and req_milli < GPU_MILLI
    same = partial if sharing else full
    other = full if sharing else partial
    packing = 25 * (MAX_NODE_GPU_MILLI - total) // MAX_NODE_GPU_MILLI
    if same:
        return packing + (50 if other else 75)
    if not other:
        return packing + 25
    return packing


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _leitstand_kernel(
    free: NDArray[np.int32],
    count: int,
    cpu_free: int,
    cpu_cap: int,
    model: int,
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
) -> tuple[int, int]:
    """leitstand on one node: (score, GPU for a sharing task or -1). See docs/policies.md."""
    gpu_scores = np.empty(max(count, 1), dtype=np.int64)
    gpu_deltas = np.empty(max(count, 1), dtype=np.float64)
    primary, _, best_g = _fgd_scores_kernel(
        free,
        count,
        cpu_free,
        model,
        req_gpus,
        req_milli,
        req_cpu,
        typ_cpu,
        typ_milli,
        typ_num,
        typ_model_ok,
        typ_weight,
        gpu_scores,
        gpu_deltas,
    )
    # Secondary key, inside one integer FGD level, for CPU-only tasks only: the node with the least
    # free GPU milli, so CPU goes where the GPUs are already taken instead of stranding free GPUs
    # (exact ties, and every GPU task, then go to the smallest rank as in FGD). Measured alternatives
    # (docs/policies.md): the same key for every task (hurts cpu100 by 0.2 pt: sharing tasks must
    # keep FGD's fixed-order ties), for whole-GPU tasks too (+0.26 on cpu250, −0.07 on default),
    # continuous Δ-fragmentation as the key (−1.1 pt on default: it scatters instead of packing).
    secondary = 0
    if req_gpus == 0 or req_milli == 0:
        total = 0
        for g in range(count):
            total += int(free[g])
        secondary = MAX_NODE_GPU_MILLI - total
    return int(primary) * LEITSTAND_PRIMARY_SHIFT + secondary, best_g


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def node_score_kernel(
    policy: int,
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    cpu_capacity_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    rand_u64: np.uint64,
) -> int:
    """Score of feasible node `n` for one replica (higher is better). `rand_u64`: Random's draw."""
    free = gpu_free_milli[n]
    count = gpu_count[n]
    if policy == RANDOM:
        return int(np.int64(np.uint64(rand_u64) >> np.uint64(1)))
    if policy == BESTFIT:
        total = 0
        for g in range(count):
            total += free[g]
        return _bestfit_raw_kernel(cpu_free_milli[n], total, req_cpu, req_gpus * req_milli)
    if policy == GPUPACKING:
        return _gpupacking_kernel(free, count, req_gpus, req_milli)
    if policy == DOTPROD:
        score, _ = _dotprod_kernel(free, count, cpu_free_milli[n], req_gpus, req_milli, req_cpu)
        return score
    if policy == GPUCLUSTERING:
        return _gpuclustering_kernel(free, count, req_gpus, req_milli)
    if policy == FGD:
        gpu_scores = np.empty(max(count, 1), dtype=np.int64)
        gpu_deltas = np.empty(max(count, 1), dtype=np.float64)
        score, _, _ = _fgd_scores_kernel(
            free,
            count,
            cpu_free_milli[n],
            gpu_model[n],
            req_gpus,
            req_milli,
            req_cpu,
            typ_cpu,
            typ_milli,
            typ_num,
            typ_model_ok,
            typ_weight,
            gpu_scores,
            gpu_deltas,
        )
        return score
    score, _ = _leitstand_kernel(
        free,
        count,
        cpu_free_milli[n],
        cpu_capacity_milli[n],
        gpu_model[n],
        req_gpus,
        req_milli,
        req_cpu,
        typ_cpu,
        typ_milli,
        typ_num,
        typ_model_ok,
        typ_weight,
    )
    return score


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def choose_gpus_kernel(
    policy: int,
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    out: NDArray[np.int32],
    node_cpu_free: int = -1,
    node_model: int = -1,
    req_cpu: int = 0,
) -> None:
    """Write the `req_gpus` GPU indices to use on node `n` into `out` (nothing for CPU-only tasks).

    Sharing task: FGD and leitstand take the GPU their score picked, Random a pseudo-random fitting GPU,
    the others the GPU with the least
    free milli that fits (lowest index on ties). Whole- and multi-GPU tasks: lowest-index fitting GPUs.
    Several slices per replica (`req_gpus` > 1 shares of one GPU each): the fitting GPUs with the most
    free milli, for every policy (`_take_by_free_kernel`: the fill then places every replica the
    placement's count promises).

    The optional trailing arguments make FGD's / leitstand's GPU choice exact: the node's free CPU
    (`-1`: unknown, taken as plenty), its model code and the request's CPU. Fragmentation depends on
    them, and through the integer truncation so can the winning GPU; pass them when you have them.
    """
    if req_gpus == 0:
        return
    free = gpu_free_milli[n]
    count = gpu_count[n]
    if not (req_gpus == 1 and 0 < req_milli < GPU_MILLI):
        if 0 < req_milli < GPU_MILLI:
            _take_by_free_kernel(free, count, req_gpus, req_milli, out, True)
        else:
            _lowest_fitting_kernel(free, count, req_gpus, req_milli, out)
        return
    if policy == FGD:
        gpu_scores = np.empty(max(count, 1), dtype=np.int64)
        gpu_deltas = np.empty(max(count, 1), dtype=np.float64)
        cpu_free = node_cpu_free if node_cpu_free >= 0 else CPU_PLENTY
        _, _, g = _fgd_scores_kernel(
            free,
            count,
            cpu_free,
            node_model,
            req_gpus,
            req_milli,
            req_cpu,
            typ_cpu,
            typ_milli,
            typ_num,
            typ_model_ok,
            typ_weight,
            gpu_scores,
            gpu_deltas,
        )
        out[0] = g
        return
    if policy == LEITSTAND:
        cpu_free = node_cpu_free if node_cpu_free >= 0 else CPU_PLENTY
        _, g = _leitstand_kernel(
            free,
            count,
            cpu_free,
            cpu_free,
            node_model,
            req_gpus,
            req_milli,
            req_cpu,
            typ_cpu,
            typ_milli,
            typ_num,
            typ_model_ok,
            typ_weight,
        )
        out[0] = g
        return
    if policy == RANDOM:
        out[0] = _pseudo_random_fitting_kernel(free, count, n, req_milli)
        return
    if policy == DOTPROD:
        cpu_free = node_cpu_free if node_cpu_free >= 0 else CPU_PLENTY
        _, g = _dotprod_kernel(free, count, cpu_free, req_gpus, req_milli, req_cpu)
        if g < 0:
            _lowest_fitting_kernel(free, count, 1, GPU_MILLI, out)  # the fully free candidate
        else:
            out[0] = g
        return
    _take_by_free_kernel(free, count, 1, req_milli, out, False)
