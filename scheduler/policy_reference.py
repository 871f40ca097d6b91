"""Readable pure-Python twin of `policy_kernels.py`: the same scores and GPU choices, one node at a time.

Used by the parity tests (`tests/parity/test_policy_parity.py`) and as the specification a reader
checks the kernels against; never on the hot path. Same arguments, same results, including the float64
evaluation order where an integer truncation depends on it.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import PolicyCode
from leitstand.scheduler.model import GPU_MILLI

Typical = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_], NDArray[np.float64]]
"""(typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight), as the kernels take them."""

MAX_NODE_GPU_MILLI = 8000
MAX_NODE_CPU_MILLI = 128000
LEITSTAND_PRIMARY_SHIFT = 1 << 40
CPU_PLENTY = 1 << 40


def _is_sharing(req_gpus: int, req_milli: int) -> bool:
    return req_gpus == 1 and 0 < req_milli < GPU_MILLI


def node_fragmentation(
    free: list[int],
    cpu_free: int,
    model: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
) -> float:
    """FGD's F(node): per typical task, the free GPU milli it cannot use, weighted; see the kernel."""
    total = sum(free)
    # Categories: 0 lack both, 1 lack GPU, 2 satisfied, 3 lack CPU, 4 CPU-only fits, 5 CPU-only lacks
    # CPU, 6 model not allowed. "Satisfied" is not fragmentation.
    cat = [0.0] * 7
    for t in range(len(typ_cpu)):
        w = float(typ_weight[t])
        cpu_ok = cpu_free >= int(typ_cpu[t])
        if int(typ_num[t]) == 0:
            cat[4 if cpu_ok else 5] += w * float(total)
        elif not typ_model_ok[t, model]:
            cat[6] += w * float(total)
        else:
            milli = int(typ_milli[t])
            fitting = sum(1 for f in free if f >= milli)
            small = sum(f for f in free if f < milli)
            if fitting >= int(typ_num[t]):
                if cpu_ok:
                    cat[1] += w * float(small)
                    cat[2] += w * float(total - small)
                else:
                    cat[3] += w * float(total)
            else:
                cat[1 if cpu_ok else 0] += w * float(total)
    out = 0.0
    for i in (0, 1, 3, 4, 5, 6):
        out += cat[i]
    return out


def fgd_score(before: float, after: float) -> int:
    return int(1.0 / (1.0 + math.exp(-((before - after) / 1000.0))) * 100.0)


def _by_free(free: list[int], req_gpus: int, req_milli: int, most: bool = False) -> list[int]:
    """Twin of `policy_kernels._take_by_free_kernel`: fitting GPUs, least (or most) free first, lowest
    index on ties."""
    fitting = sorted((-f if most else f, g) for g, f in enumerate(free) if f >= req_milli)
    return [g for _, g in fitting[:req_gpus]]


def fgd_node(
    free: list[int], cpu_free: int, model: int, req_gpus: int, req_milli: int, req_cpu: int, typ: Typical
) -> tuple[int, int]:
    """(FGD integer score, chosen GPU for a sharing task or -1)."""
    before = node_fragmentation(free, cpu_free, model, *typ)
    if _is_sharing(req_gpus, req_milli):
        best, best_g = -1, -1
        for g, f in enumerate(free):
            if f < req_milli:
                continue
            after_free = list(free)
            after_free[g] -= req_milli
            s = fgd_score(before, node_fragmentation(after_free, cpu_free - req_cpu, model, *typ))
            if best_g < 0 or s > best:
                best, best_g = s, g
        return best, best_g
    after_free = list(free)
    if req_gpus > 0 and req_milli > 0:
        for g in _by_free(free, req_gpus, req_milli):
            after_free[g] -= req_milli
    return fgd_score(before, node_fragmentation(after_free, cpu_free - req_cpu, model, *typ)), -1


def bestfit(cpu_left: int, gpu_left: int, req_cpu: int, req_total_milli: int) -> int:
    x = float(cpu_left - req_cpu) / 128000.0 * 0.5 + float(gpu_left - req_total_milli) / 8000.0 * 0.5
    return int((1.0 - x) * 100.0)


def gpupacking(free: list[int], req_gpus: int, req_milli: int) -> int:
    if req_gpus == 0 or req_milli == 0:
        return 0
    fully = sum(1 for f in free if f == GPU_MILLI)
    if fully == len(free):
        return max(33 - fully, fully)
    used = [free[g] for g in _by_free(free, req_gpus, req_milli)]
    fully_used = sum(1 for f in used if f == GPU_MILLI)
    if fully_used:
        return max(50 - fully_used, 33)
    pct = sum(int(f) * 100 // GPU_MILLI for f in used)
    return int(max(100 - pct // 10, 50))


def dotprod(free: list[int], cpu_left: int, req_gpus: int, req_milli: int, req_cpu: int) -> tuple[int, int]:
    """Tetris dot product in the authors' configuration: candidates are each partly used GPU that fits
    (for a request below one GPU), then all fully free GPUs together if the request fits there; the
    vectors (CPU, GPU milli) are scaled by the largest node (128 cores, 8 GPUs); the smallest product
    wins (first candidate on ties). Returns (score, partly used GPU or -1 for the fully free ones)."""
    request = req_gpus * req_milli
    cpu_term = (float(cpu_left) / MAX_NODE_CPU_MILLI) * (float(req_cpu) / MAX_NODE_CPU_MILLI)
    req_norm = float(request) / MAX_NODE_GPU_MILLI
    candidates: list[tuple[int, int]] = []  # (GPU milli of the candidate, GPU index or -1)
    if request < GPU_MILLI:
        candidates += [(f, g) for g, f in enumerate(free) if request <= f < GPU_MILLI]
    idle = sum(1 for f in free if f == GPU_MILLI)
    if request <= idle * GPU_MILLI:
        candidates.append((idle * GPU_MILLI, -1))
    best, best_g = -1.0, -1
    for milli, g in candidates:
        score = 1.0 - (0.0 + cpu_term + (float(milli) / MAX_NODE_GPU_MILLI) * req_norm) / 2.0
        if best < score:
            best, best_g = score, g
    if best < 0.0:
        return 0, -1
    return int(100.0 * best), best_g


def gpuclustering(free: list[int], req_gpus: int, req_milli: int) -> int:
    if req_gpus == 0 or req_milli == 0:
        return 0
    partial = any(0 < f < GPU_MILLI for f in free)
    full = any(f == 0 for f in free)
    sharing = _is_sharing(req_gpus, req_milli)
    same, other = (partial, full) if sharing else (full, partial)
    packing = 25 * (MAX_NODE_GPU_MILLI - sum(free)) // MAX_NODE_GPU_MILLI
    if same:
        return packing + (50 if other else 75)
    return packing + (0 if other else 25)


def leitstand(
    free: list[int], cpu_free: int, model: int, req_gpus: int, req_milli: int, req_cpu: int, typ: Typical
) -> tuple[int, int]:
    """FGD's integer score first; inside a level, a CPU-only task prefers the node with least free GPU."""
    primary, g = fgd_node(free, cpu_free, model, req_gpus, req_milli, req_cpu, typ)
    secondary = MAX_NODE_GPU_MILLI - sum(free) if req_gpus == 0 or req_milli == 0 else 0
    return primary * LEITSTAND_PRIMARY_SHIFT + secondary, g


def pseudo_random_fitting(free: list[int], n: int, req_milli: int) -> int:
    """Random's GPU for a sharing task: a 32-bit FNV-1a hash of node index and free milli picks a fitting GPU."""
    h = 2166136261 ^ (n & 0xFFFFFFFF)
    for f in free:
        h = ((h ^ f) * 16777619) & 0xFFFFFFFF
    h ^= h >> 13
    fitting = [g for g, f in enumerate(free) if f >= req_milli]
    return fitting[h % max(len(fitting), 1)] if fitting else -1


def node_score(
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
    rand_u64: int,
) -> int:
    """Twin of `policy_kernels.node_score_kernel`."""
    free = [int(f) for f in gpu_free_milli[n, : int(gpu_count[n])]]
    cpu_free = int(cpu_free_milli[n])
    typ = (typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight)
    code = PolicyCode(policy)
    if code is PolicyCode.RANDOM:
        return int(rand_u64) >> 1
    if code is PolicyCode.BESTFIT:
        return bestfit(cpu_free, sum(free), req_cpu, req_gpus * req_milli)
    if code is PolicyCode.GPUPACKING:
        return gpupacking(free, req_gpus, req_milli)
    if code is PolicyCode.DOTPROD:
        return dotprod(free, cpu_free, req_gpus, req_milli, req_cpu)[0]
    if code is PolicyCode.GPUCLUSTERING:
        return gpuclustering(free, req_gpus, req_milli)
    if code is PolicyCode.FGD:
        return fgd_node(free, cpu_free, int(gpu_model[n]), req_gpus, req_milli, req_cpu, typ)[0]
    return leitstand(free, cpu_free, int(gpu_model[n]), req_gpus, req_milli, req_cpu, typ)[0]


def choose_gpus(
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
    """Twin of `policy_kernels.choose_gpus_kernel`."""
    if req_gpus == 0:
        return
    free = [int(f) for f in gpu_free_milli[n, : int(gpu_count[n])]]
    if not _is_sharing(req_gpus, req_milli):
        if 0 < req_milli < GPU_MILLI:  # several slices per replica: the most free first
            chosen = _by_free(free, req_gpus, req_milli, most=True)
        else:
            chosen = [g for g, f in enumerate(free) if f >= req_milli][:req_gpus]
        out[: len(chosen)] = chosen
        return
    cpu_free = node_cpu_free if node_cpu_free >= 0 else CPU_PLENTY
    typ = (typ_cpu, typ_milli, typ_num, typ_model_ok, typ_weight)
    code = PolicyCode(policy)
    if code is PolicyCode.FGD:
        out[0] = fgd_node(free, cpu_free, node_model, req_gpus, req_milli, req_cpu, typ)[1]
    elif code is PolicyCode.LEITSTAND:
        out[0] = leitstand(free, cpu_free, node_model, req_gpus, req_milli, req_cpu, typ)[1]
    elif code is PolicyCode.RANDOM:
        out[0] = pseudo_random_fitting(free, n, req_milli)
    elif code is PolicyCode.DOTPROD:
        g = dotprod(free, cpu_free, req_gpus, req_milli, req_cpu)[1]
        out[0] = g if g >= 0 else free.index(GPU_MILLI)
    else:
        out[0] = _by_free(free, 1, req_milli)[0]
