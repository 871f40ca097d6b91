"""Compiled inner loop of the FGD inflation protocol: every task placed by the real placement kernel.

`run_stream_kernel` drives a whole arrival stream in one compiled call: each task is a 1-replica
gang with no required or preferred topology level, placed by `placement_kernels.place_gang_kernel`
(the kernel `placement.place_gang` calls for the real scheduler: fit filter, highest
`node_score_kernel`, smallest `node_rank` among ties, `choose_gpus_kernel`), then charged to the
state arrays exactly as `ClusterState.allocate` does (GPU row, CPU, memory, the per-node aggregates
via `refresh_node_kernel`, a new node version stamp). Arrived / used GPU milli are recorded after
every task. The caller (`sim/inflation.py`) prepares the arrays as `placement.place_gang` does: node
masks per model set, score-cache rows per request shape, Random's `rand_base(seed, nonce)` with the
task index as nonce.

Speed: `place_gang_kernel` reuses a node's cached score for the task's request shape while the node's
version stamp is unchanged (never for Random), so only nodes changed since that shape was last
scored are scored again.

Cache note (as in `placement_kernels.py`): these kernels compile `policy_kernels.py`'s and
`placement_kernels.py`'s functions into themselves, and Numba's on-disk cache keys on this file's
timestamp only, so they are cached in `$NUMBA_CACHE_DIR/inflation-<sha1 of policy_kernels.py,
placement_kernels.py and this file>`; a policy or placement edit can never run stale. Old
`inflation-*` directories may be deleted at any time.

Called by `leitstand.scheduler.sim.inflation` only. No Python objects, no mutable globals.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from numba import njit
from numba.core import config as _numba_config
from numpy.typing import NDArray

from leitstand.scheduler import placement_kernels as _placement_kernels
from leitstand.scheduler import policy_kernels as _policy_kernels
from leitstand.scheduler.codes import DIAG_SIZE, STATUS_BAD_POLICY_CHOICE, STATUS_OK
from leitstand.scheduler.placement_kernels import (
    mix64_kernel,
    place_gang_kernel,
    refresh_node_kernel,
)
from leitstand.scheduler.policy_kernels import RANDOM

_SAVED_CACHE_DIR: str = _numba_config.CACHE_DIR  # type: ignore[attr-defined]


def _policy_keyed_cache_dir() -> str | None:
    """`<cache root>/inflation-<sha1 of policy_kernels.py + placement_kernels.py + this file>`, None if
    unreadable."""
    digest = hashlib.sha1()
    try:
        for path in (_policy_kernels.__file__, _placement_kernels.__file__, __file__):
            with open(str(path), "rb") as source:
                digest.update(source.read())
    except (OSError, TypeError):
        return None
    root = _SAVED_CACHE_DIR or os.path.join(os.path.expanduser("~"), ".cache", "leitstand", "numba")
    return os.path.join(root, f"inflation-{digest.hexdigest()[:16]}")


_KEYED_CACHE_DIR = _policy_keyed_cache_dir()
if _KEYED_CACHE_DIR is not None:
    _numba_config.CACHE_DIR = _KEYED_CACHE_DIR  # type: ignore[attr-defined]  # restored at the end

NO_REQUIRED_LEVEL = -1
NO_PREFERRED_LEVEL = -1


@njit(cache=True)  # type: ignore[misc,unused-ignore]
def run_stream_kernel(
    policy: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    cpu_capacity_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    domain: NDArray[np.int32],
    domain_count: NDArray[np.int32],
    domain_order: NDArray[np.int32],
    domain_start: NDArray[np.int32],
    node_version: NDArray[np.int64],
    node_rank: NDArray[np.int64],
    task_cpu: NDArray[np.int64],
    task_mem: NDArray[np.int64],
    task_num: NDArray[np.int64],
    task_milli: NDArray[np.int64],
    task_mask: NDArray[np.int64],
    task_cache: NDArray[np.int64],
    node_masks: NDArray[np.bool_],
    cache_score: NDArray[np.int64],
    cache_stamp: NDArray[np.int64],
    use_cache: bool,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    rand_seed_mix: np.uint64,
    arrived_milli: NDArray[np.int64],
    used_milli: NDArray[np.int64],
    placed_node: NDArray[np.int64],
) -> int:
    """Submit every task in order (arrive-only; a task that does not fit fails at once).

    Task k asks for `task_num[k]` GPUs of `task_milli[k]` each (both 0 for a CPU-only task), may use
    the nodes in `node_masks[task_mask[k]]`, and reads / writes score-cache row `task_cache[k]` of
    `cache_score` / `cache_stamp` (when `use_cache`). Random gets the per-task base
    `placement.rand_base(seed, nonce=k)`, i.e. `mix64(rand_seed_mix ^ k)` with `rand_seed_mix =
    mix64(seed)`; every other policy gets base 0, as `placement.place_gang` passes.

    Mutates the state arrays (including the aggregates and `node_version`, whose new stamps continue
    from its maximum). After task k: `arrived_milli[k]` = GPU milli requested so far (failed tasks
    included), `used_milli[k]` = GPU milli allocated, `placed_node[k]` = node or -1.
    Returns -1, or the index of the first task for which the policy chose GPUs that do not fit (a
    bug: `STATUS_BAD_POLICY_CHOICE`; that task is left unplaced).
    """
    width = 1
    for k in range(task_num.shape[0]):
        if task_num[k] > width:
            width = int(task_num[k])
    out_nodes = np.empty(1, dtype=np.int32)
    out_gpus = np.empty((1, width), dtype=np.int32)
    diag = np.zeros(DIAG_SIZE, dtype=np.int64)
    next_stamp = np.int64(1)
    for n in range(node_version.shape[0]):
        if node_version[n] >= next_stamp:
            next_stamp = node_version[n] + 1
    bad = -1
    arrived = np.int64(0)
    used = np.int64(0)
    for k in range(task_cpu.shape[0]):
        req_gpus = task_num[k]
        req_milli = task_milli[k]
        req_cpu = task_cpu[k]
        req_mem = task_mem[k]
        arrived += req_gpus * req_milli
        rand_base = np.uint64(0)
        if policy == RANDOM:
            rand_base = mix64_kernel(np.uint64(rand_seed_mix) ^ np.uint64(k))
        c = task_cache[k]
        status = place_gang_kernel(
            gpu_free_milli,
            gpu_count,
            cpu_free_milli,
            cpu_capacity_milli,
            memory_free_mib,
            gpu_model,
            gpu_whole_free,
            gpu_max_free_milli,
            domain,
            domain_count,
            domain_order,
            domain_start,
            node_masks[task_mask[k]],
            node_rank,
            1,
            req_gpus,
            req_milli,
            req_cpu,
            req_mem,
            NO_REQUIRED_LEVEL,
            NO_PREFERRED_LEVEL,
            policy,
            typ_cpu,
            typ_milli,
            typ_num,
            typ_model_ok,
            typ_weight,
            rand_base,
            node_version,
            cache_score[c],
            cache_stamp[c],
            use_cache,
            out_nodes,
            out_gpus,
            diag,
        )
        n = -1
        if status == STATUS_OK:
            n = int(out_nodes[0])
            # charge it as ClusterState.allocate does: the row, then aggregates and a new stamp
            for j in range(req_gpus):
                gpu_free_milli[n, out_gpus[0, j]] -= req_milli
            cpu_free_milli[n] -= req_cpu
            memory_free_mib[n] -= req_mem
            refresh_node_kernel(n, gpu_free_milli, gpu_count, gpu_whole_free, gpu_max_free_milli)
            node_version[n] = next_stamp
            next_stamp += 1
            used += req_gpus * req_milli
        elif status == STATUS_BAD_POLICY_CHOICE and bad < 0:
            bad = k
        placed_node[k] = n
        arrived_milli[k] = arrived
        used_milli[k] = used
    return bad


_numba_config.CACHE_DIR = _SAVED_CACHE_DIR  # type: ignore[attr-defined]
