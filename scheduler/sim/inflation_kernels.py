"""Compiled inner loop of the FGD inflation protocol: one task at a time, filter → score → pick → charge.

`select_node_kernel` mirrors the placement contract for a 1-replica request exactly (fit filter,
highest `node_score_kernel`, smallest `node_rank` among ties, then `choose_gpus_kernel`), so the
simulator can later switch to `placement.place_gang` without changing a number. `run_stream_kernel`
drives a whole arrival stream and records arrived / used GPU milli after every task.

Speed: a node's score depends only on its own state and the task's shape (CPU, milli, GPU count,
model set; memory only filters), so scores are cached per (shape, node) and recomputed only for
nodes whose state changed since that shape was last scored. Random is never cached.

Cache note (as in `placement_kernels.py`): these kernels compile `policy_kernels.py`'s functions into
themselves, and Numba's on-disk cache keys on this file's timestamp only, so they are cached in
`$NUMBA_CACHE_DIR/inflation-<sha1 of policy_kernels.py and this file>`; a policy edit can never run
stale. Old `inflation-*` directories may be deleted at any time.

Called by `leitstand.scheduler.sim.inflation` only. No Python objects, no mutable globals.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from numba import njit
from numba.core import config as _numba_config
from numpy.typing import NDArray

from leitstand.scheduler import policy_kernels as _policy_kernels
from leitstand.scheduler.policy_kernels import RANDOM, choose_gpus_kernel, node_score_kernel

_SAVED_CACHE_DIR: str = _numba_config.CACHE_DIR  # type: ignore[attr-defined]


def _policy_keyed_cache_dir() -> str | None:
    """`<cache root>/inflation-<sha1 of policy_kernels.py + this file>`, None if unreadable."""
    digest = hashlib.sha1()
    try:
        for path in (_policy_kernels.__file__, __file__):
            with open(str(path), "rb") as source:
                digest.update(source.read())
    except (OSError, TypeError):
        return None
    root = _SAVED_CACHE_DIR or os.path.join(os.path.expanduser("~"), ".cache", "leitstand", "numba")
    return os.path.join(root, f"inflation-{digest.hexdigest()[:16]}")


_KEYED_CACHE_DIR = _policy_keyed_cache_dir()
if _KEYED_CACHE_DIR is not None:
    _numba_config.CACHE_DIR = _KEYED_CACHE_DIR  # type: ignore[attr-defined]  # restored at the end


@njit(cache=True)  # type: ignore[misc,unused-ignore]
def _xorshift32_kernel(state: NDArray[np.int64]) -> np.uint64:
    """One xorshift32 draw (Random's per-node score); advances `state[0]`. Kept in int64 with masks,
    so it neither overflows compiled nor warns under NUMBA_DISABLE_JIT."""
    x = int(state[0])
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    state[0] = x
    return np.uint64(x)


@njit(cache=True, inline="always")  # type: ignore[misc,unused-ignore]
def node_fits_kernel(
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    model_ok: NDArray[np.bool_],
) -> bool:
    """The protocol's fit filter: CPU, memory, and for a GPU task the model and enough fitting GPUs."""
    if req_cpu > cpu_free_milli[n] or req_mem > memory_free_mib[n]:
        return False
    if req_milli <= 0 or req_gpus <= 0:
        return True
    count = gpu_count[n]
    if count <= 0 or not model_ok[gpu_model[n]]:
        return False
    fitting = 0
    for g in range(count):
        if gpu_free_milli[n, g] >= req_milli:
            fitting += 1
    return fitting >= req_gpus


@njit(cache=True)  # type: ignore[misc,unused-ignore]
def select_node_kernel(
    policy: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    cpu_capacity_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    node_rank: NDArray[np.int64],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    model_ok: NDArray[np.bool_],
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    rng_state: NDArray[np.int64],
    cache_score: NDArray[np.int64],
    cache_stamp: NDArray[np.int64],
    node_version: NDArray[np.int64],
) -> int:
    """Feasible node with the highest score, smallest `node_rank` among ties; -1 if none fits.

    `cache_score[N]` / `cache_stamp[N]` are this task shape's cache row (stamp = the node version the
    score was computed at); pass a stamp row of -1s to score every node afresh.
    """
    best = -1
    best_score = 0
    best_rank = 0
    for n in range(gpu_count.shape[0]):
        if not node_fits_kernel(
            n,
            gpu_free_milli,
            gpu_count,
            cpu_free_milli,
            memory_free_mib,
            gpu_model,
            req_gpus,
            req_milli,
            req_cpu,
            req_mem,
            model_ok,
        ):
            continue
        if policy == RANDOM:
            score = node_score_kernel(
                policy,
                n,
                gpu_free_milli,
                gpu_count,
                cpu_free_milli,
                cpu_capacity_milli,
                memory_free_mib,
                gpu_model,
                req_gpus,
                req_milli,
                req_cpu,
                req_mem,
                typ_cpu,
                typ_milli,
                typ_num,
                typ_model_ok,
                typ_weight,
                _xorshift32_kernel(rng_state),
            )
        elif cache_stamp[n] == node_version[n]:
            score = cache_score[n]
        else:
            score = node_score_kernel(
                policy,
                n,
                gpu_free_milli,
                gpu_count,
                cpu_free_milli,
                cpu_capacity_milli,
                memory_free_mib,
                gpu_model,
                req_gpus,
                req_milli,
                req_cpu,
                req_mem,
                typ_cpu,
                typ_milli,
                typ_num,
                typ_model_ok,
                typ_weight,
                np.uint64(0),
            )
            cache_score[n] = score
            cache_stamp[n] = node_version[n]
        if best < 0 or score > best_score or (score == best_score and node_rank[n] < best_rank):
            best = n
            best_score = score
            best_rank = int(node_rank[n])
    return best


@njit(cache=True)  # type: ignore[misc,unused-ignore]
def run_stream_kernel(
    policy: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    cpu_capacity_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    node_rank: NDArray[np.int64],
    task_cpu: NDArray[np.int64],
    task_mem: NDArray[np.int64],
    task_num: NDArray[np.int64],
    task_milli: NDArray[np.int64],
    task_shape: NDArray[np.int64],
    shape_model_ok: NDArray[np.bool_],
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    random_seed: int,
    arrived_milli: NDArray[np.int64],
    used_milli: NDArray[np.int64],
    placed_node: NDArray[np.int64],
) -> None:
    """Submit every task in order (arrive-only; a task that does not fit fails at once).

    Mutates the state arrays. After task k: `arrived_milli[k]` = GPU milli requested so far (failed
    tasks included), `used_milli[k]` = GPU milli allocated, `placed_node[k]` = node or -1.
    """
    n_nodes = gpu_count.shape[0]
    n_shapes = shape_model_ok.shape[0]
    cache_score = np.zeros((n_shapes, n_nodes), dtype=np.int64)
    cache_stamp = np.full((n_shapes, n_nodes), -1, dtype=np.int64)
    node_version = np.zeros(n_nodes, dtype=np.int64)
    rng_state = np.zeros(1, dtype=np.int64)
    rng_state[0] = (random_seed * 2654435761 + 1) & 0xFFFFFFFF
    if rng_state[0] == 0:
        rng_state[0] = 1  # xorshift needs a non-zero state
    arrived = np.int64(0)
    used = np.int64(0)
    for k in range(task_cpu.shape[0]):
        req_gpus = task_num[k]
        req_milli = task_milli[k]
        s = task_shape[k]
        arrived += req_gpus * req_milli
        n = select_node_kernel(
            policy,
            gpu_free_milli,
            gpu_count,
            cpu_free_milli,
            cpu_capacity_milli,
            memory_free_mib,
            gpu_model,
            node_rank,
            req_gpus,
            req_milli,
            task_cpu[k],
            task_mem[k],
            shape_model_ok[s],
            typ_cpu,
            typ_milli,
            typ_num,
            typ_model_ok,
            typ_weight,
            rng_state,
            cache_score[s],
            cache_stamp[s],
            node_version,
        )
        placed_node[k] = n
        if n >= 0:
            if req_gpus > 0 and req_milli > 0:
                out = np.empty(req_gpus, dtype=np.int32)
                choose_gpus_kernel(
                    policy,
                    n,
                    gpu_free_milli,
                    gpu_count,
                    req_gpus,
                    req_milli,
                    typ_cpu,
                    typ_milli,
                    typ_num,
                    typ_model_ok,
                    typ_weight,
                    out,
                    cpu_free_milli[n],
                    gpu_model[n],
                    task_cpu[k],
                )
                for j in range(req_gpus):
                    gpu_free_milli[n, out[j]] -= req_milli
                used += req_gpus * req_milli
            cpu_free_milli[n] -= task_cpu[k]
            memory_free_mib[n] -= task_mem[k]
            node_version[n] += 1
        arrived_milli[k] = arrived
        used_milli[k] = used


_numba_config.CACHE_DIR = _SAVED_CACHE_DIR  # type: ignore[attr-defined]
