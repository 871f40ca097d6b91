"""Compiled gang-placement kernels: feasibility per node, domain choice, node and GPU choice.

What it holds: `place_gang_kernel`, the whole placement decision for one gang in compiled code
(arrays in, arrays out), and `replica_capacity_kernel`, how many replicas of a request one node
holds. Helpers live in this file because Numba's cache does not notice edits in other files.

Who calls it: `placement.py` (the dispatch point between this module and its pure-Python twin
`placement_reference.py`, which must stay step-for-step identical: parity tests compare them), and
the FGD-protocol simulator's compiled stream loop (`sim/inflation_kernels.py`), which places every
task through `place_gang_kernel` and keeps the aggregates current with `refresh_node_kernel`.

What it must not do: hold Python objects or mutable globals, log, or leave the state arrays changed.
The kernel charges replicas to the arrays tentatively while it places a gang (so the policy scores
see the replicas already placed) and always undoes every charge before it returns.

Cache note: `node_score_kernel` / `choose_gpus_kernel` are compiled into these kernels from
`policy_kernels.py`, but Numba's on-disk cache keys on this file's timestamp only, so a cached
placement kernel would keep running an old policy after `policy_kernels.py` changes (and a process
that imported the old policy could store its build under this file's new stamp). The kernels below
are therefore cached in a directory named after a hash of `policy_kernels.py`'s content, taken right
after importing it: `$NUMBA_CACHE_DIR/placement-<hash>` (`~/.cache/leitstand/numba/...` when the
variable is unset). Numba reads the cache directory when a kernel is decorated, so `numba.config`
is pointed there for the definitions below and restored at the end of this module. Old
`placement-*` directories are dead weight and may be deleted at any time.

Algorithm (docs/placement.md has the long form):
1. Per node: replica capacity = min over CPU, memory and GPUs of how many replicas fit (0 outside
   the node mask, and for a required level, 0 on nodes lacking that label).
2. Levels to try, finest first: the preferred level, then upwards level by level down to the required
   level (or to the top and then "anywhere" when nothing is required).
3. Per level: sum node capacities per domain (bottom-up counts); take the tightest domain holding
   the whole gang (smallest capacity ≥ replicas, ties → the smallest node rank in the domain).
4. Inside it, replica by replica: the feasible node with the highest policy score (ties → smallest
   rank), GPUs by the policy's `choose_gpus_kernel`; only the chosen node is re-scored. Scores come
   from the caller's per-shape cache when the node is unchanged, else are computed once per distinct
   node state (a per-call hash table; not for Random).
5. All replicas or none: a failed domain is undone and the next tightest is tried.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from numba import njit
from numba.core import config as _numba_config
from numpy.typing import NDArray

from leitstand.scheduler import codes as _codes
from leitstand.scheduler import policy_kernels as _policy_kernels
from leitstand.scheduler.model import GPU_MILLI as MODEL_GPU_MILLI
from leitstand.scheduler.policy_kernels import RANDOM, choose_gpus_kernel, node_score_kernel

_SAVED_CACHE_DIR: str = _numba_config.CACHE_DIR  # type: ignore[attr-defined]


def _policy_keyed_cache_dir() -> str | None:
    """`<cache root>/placement-<sha1 of policy_kernels.py>`, or None when the file is unreadable."""
    try:
        with open(_policy_kernels.__file__, "rb") as source:
            digest = hashlib.sha1(source.read()).hexdigest()[:16]
    except (OSError, TypeError):
        return None
    root = _SAVED_CACHE_DIR or os.path.join(os.path.expanduser("~"), ".cache", "leitstand", "numba")
    return os.path.join(root, f"placement-{digest}")


_KEYED_CACHE_DIR = _policy_keyed_cache_dir()
if _KEYED_CACHE_DIR is not None:
    # restored at the end of this module
    _numba_config.CACHE_DIR = _KEYED_CACHE_DIR  # type: ignore[attr-defined]

GPU_MILLI = int(MODEL_GPU_MILLI)
# Status and diagnosis codes live in codes.py (shared with the Numba-free twin); named here too
# because placement.py reads them as K.*.
DIAG_BEST_DOMAIN = _codes.DIAG_BEST_DOMAIN
DIAG_BEST_DOMAIN_REPLICAS = _codes.DIAG_BEST_DOMAIN_REPLICAS
DIAG_BEST_LEVEL = _codes.DIAG_BEST_LEVEL
DIAG_DOMAIN_USED = _codes.DIAG_DOMAIN_USED
DIAG_LABELLED_NODES = _codes.DIAG_LABELLED_NODES
DIAG_LACK_CPU = _codes.DIAG_LACK_CPU
DIAG_LACK_GPU = _codes.DIAG_LACK_GPU
DIAG_LACK_MEMORY = _codes.DIAG_LACK_MEMORY
DIAG_LEVEL_USED = _codes.DIAG_LEVEL_USED
DIAG_MATCHING_NODES = _codes.DIAG_MATCHING_NODES
DIAG_SIZE = _codes.DIAG_SIZE
DIAG_TOTAL_REPLICAS = _codes.DIAG_TOTAL_REPLICAS
MAX_DOMAIN_TRIES = _codes.MAX_DOMAIN_TRIES
STATUS_BAD_POLICY_CHOICE = _codes.STATUS_BAD_POLICY_CHOICE
STATUS_FRAGMENTED = _codes.STATUS_FRAGMENTED
STATUS_INSUFFICIENT = _codes.STATUS_INSUFFICIENT
STATUS_NO_MATCHING_NODES = _codes.STATUS_NO_MATCHING_NODES
STATUS_NO_TOPOLOGY_DOMAIN = _codes.STATUS_NO_TOPOLOGY_DOMAIN
STATUS_OK = _codes.STATUS_OK
CAPACITY_LIMIT = 1 << 30
"""Replica capacity of a node that the request does not constrain at all (no GPU, CPU or memory)."""
DEDUPE_MIN_CANDIDATES = 32
"""Below this many cold candidates, scoring each node is cheaper than hashing node states."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc,unused-ignore]
def mix64_kernel(
    x: np.uint64,
) -> np.uint64:
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc,unused-ignore]
def _node_rand(
    rand_base: np.uint64,
    n: int,
) -> np.uint64:
    return mix64_kernel(rand_base ^ (np.uint64(n) * _GOLDEN))


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc,unused-ignore]
def _whole_times_upto(amount: int, unit: int, upto: int) -> int:
    """min(upto, amount // unit) for amount >= 0, unit > 0, without a division when upto is small.

    Chains of dependent int64 divisions dominated the node loops (~40 cycles each); counting down
    from a small `upto` (the gang's replica count) costs a few multiplications.
    """
    if upto > 64:
        q = amount // unit
        return q if q < upto else upto
    k = upto
    while k > 0 and amount < unit * k:
        k -= 1
    return k


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc,unused-ignore]
def replica_capacity_kernel(
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    limit: int,
) -> int:
    """min(limit, how many replicas node `n` holds now).

    The callers ask for at most the gang's replica count (often 1), so this counts down from
    `limit` instead of dividing (see `_whole_times_upto`).
    """
    k = limit
    if req_cpu > 0:
        k = _whole_times_upto(cpu_free_milli[n], req_cpu, k)
    if req_mem > 0:
        k = _whole_times_upto(memory_free_mib[n], req_mem, k)
    if k <= 0:
        return 0
    if req_gpus > 0:
        if req_milli >= GPU_MILLI:
            k = _whole_times_upto(gpu_whole_free[n], req_gpus, k)
        elif gpu_max_free_milli[n] < req_milli:
            return 0
        elif req_gpus == 1:
            total = 0
            for g in range(gpu_count[n]):
                total += _whole_times_upto(gpu_free_milli[n, g], req_milli, k - total)
                if total >= k:
                    break
            if total < k:
                k = total
        else:
            # c replicas on req_gpus distinct GPUs each fit iff sum_g min(slots_g, c) >= c * req_gpus;
            # slots capped at k leave that sum unchanged for every c <= k
            total = 0
            for g in range(gpu_count[n]):
                total += _whole_times_upto(gpu_free_milli[n, g], req_milli, k)
            c = _whole_times_upto(total, req_gpus, k)
            while c > 0:
                s = 0
                for g in range(gpu_count[n]):
                    slots = _whole_times_upto(gpu_free_milli[n, g], req_milli, c)
                    s += slots
                if s >= c * req_gpus:
                    break
                c -= 1
            k = c
    return k


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc,unused-ignore]
def refresh_node_kernel(
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
) -> None:
    """Recompute node `n`'s GPU aggregates (`gpu_whole_free`, `gpu_max_free_milli`) from its GPU row,
    as `ClusterState._refresh_node` does; callers that charge a node outside `ClusterState` (the
    inflation simulator) must call it after every change."""
    whole = 0
    best = 0
    for g in range(gpu_count[n]):
        free = gpu_free_milli[n, g]
        if free == GPU_MILLI:
            whole += 1
        if free > best:
            best = free
    gpu_whole_free[n] = whole
    gpu_max_free_milli[n] = best


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _undo(
    placed: int,
    out_nodes: NDArray[np.int32],
    out_gpus: NDArray[np.int32],
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
) -> None:
    for r in range(placed):
        n = out_nodes[r]
        for j in range(req_gpus):
            gpu_free_milli[n, out_gpus[r, j]] += req_milli
        cpu_free_milli[n] += req_cpu
        memory_free_mib[n] += req_mem
        if req_gpus > 0:
            refresh_node_kernel(n, gpu_free_milli, gpu_count, gpu_whole_free, gpu_max_free_milli)


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _fill_domain(
    level: int,
    dom: int,
    capacity: NDArray[np.int64],
    feasible_nodes: NDArray[np.int64],
    n_feasible: int,
    domain: NDArray[np.int32],
    domain_order: NDArray[np.int32],
    domain_start: NDArray[np.int32],
    node_rank: NDArray[np.int64],
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    cpu_capacity_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_model: NDArray[np.int32],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    replicas: int,
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    policy: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    rand_base: np.uint64,
    node_version: NDArray[np.int64],
    cached_score: NDArray[np.int64],
    cached_stamp: NDArray[np.int64],
    use_cache: bool,
    out_nodes: NDArray[np.int32],
    out_gpus: NDArray[np.int32],
) -> int:
    """Place every replica inside domain `dom` of `level` (level < 0: anywhere); all or none.

    The replicas are charged tentatively while they are placed (so the scores see them) and every
    charge is undone before it returns; on success out_nodes / out_gpus hold the choice. Returns a
    STATUS_* code.
    """
    if level < 0:  # anywhere: the feasible nodes (ascending)
        cand = np.empty(n_feasible, np.int64)
        count = 0
        for i in range(n_feasible):
            n = feasible_nodes[i]
            cand[count] = n
            count += capacity[n] > 0
    else:  # the domain's members, from the static per-level index
        first = domain_start[level, dom]
        last = domain_start[level, dom + 1]
        cand = np.empty(last - first, np.int64)
        count = 0
        for i in range(first, last):
            n = domain_order[level, i]
            cand[count] = n
            count += capacity[n] > 0
    feasible = np.ones(count, np.bool_)
    scores = np.empty(count, np.int64)
    first_best = -1  # the first replica's choice, found while scoring (saves a pass)
    # Cold scores are deduplicated by node state: two nodes with the same GPU row, CPU, memory and
    # model score the same (a score depends only on the node's own state and the request; Random,
    # whose draw is per node, is excluded). Idle or identically loaded nodes are common at scale.
    # The dedupe table is sized by the nodes that need a cold score: with a warm score cache (the
    # common case inside a cycle) that is a handful, and three 2×count arrays (hundreds of KB at
    # 12,500 nodes, allocated, filled and freed per call) would cost more than the scoring.
    n_cold = count
    if use_cache:
        n_cold = 0
        for i in range(count):
            n = cand[i]
            n_cold += cached_stamp[n] != node_version[n]
    dedupe = policy != RANDOM and n_cold >= DEDUPE_MIN_CANDIDATES
    table_size = 1
    if dedupe:
        while table_size < 2 * n_cold:
            table_size *= 2
    table_node = np.full(table_size, -1, np.int64)
    table_hash = np.zeros(table_size, np.uint64)
    table_score = np.zeros(table_size, np.int64)
    for i in range(count):
        n = cand[i]
        # the committed state of n: a cached score is valid while the node's stamp is unchanged
        if use_cache and cached_stamp[n] == node_version[n]:
            scores[i] = cached_score[n]
        else:
            slot = np.int64(-1)
            h = _FNV_OFFSET
            if dedupe:
                h = (h ^ np.uint64(gpu_count[n])) * _FNV_PRIME
                for g in range(gpu_count[n]):
                    h = (h ^ np.uint64(gpu_free_milli[n, g])) * _FNV_PRIME
                h = (h ^ np.uint64(cpu_free_milli[n])) * _FNV_PRIME
                h = (h ^ np.uint64(cpu_capacity_milli[n])) * _FNV_PRIME
                h = (h ^ np.uint64(memory_free_mib[n])) * _FNV_PRIME
                h = (h ^ np.uint64(gpu_model[n] + 1)) * _FNV_PRIME
                slot = np.int64(mix64_kernel(h) & np.uint64(table_size - 1))
                while table_node[slot] >= 0:
                    m = table_node[slot]
                    if table_hash[slot] == h:
                        same = (
                            gpu_count[m] == gpu_count[n]
                            and cpu_free_milli[m] == cpu_free_milli[n]
                            and cpu_capacity_milli[m] == cpu_capacity_milli[n]
                            and memory_free_mib[m] == memory_free_mib[n]
                            and gpu_model[m] == gpu_model[n]
                        )
                        if same:
                            for g in range(gpu_count[n]):
                                if gpu_free_milli[m, g] != gpu_free_milli[n, g]:
                                    same = False
                        if same:
                            break
                    slot = (slot + 1) & (table_size - 1)
            if slot >= 0 and table_node[slot] >= 0:
                scores[i] = table_score[slot]
            else:
                scores[i] = node_score_kernel(
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
                    _node_rand(rand_base, n),
                )
                if slot >= 0:
                    table_node[slot] = n
                    table_hash[slot] = h
                    table_score[slot] = scores[i]
            if use_cache:
                cached_score[n] = scores[i]
                cached_stamp[n] = node_version[n]
        if (
            first_best < 0
            or scores[i] > scores[first_best]
            or (scores[i] == scores[first_best] and node_rank[n] < node_rank[cand[first_best]])
        ):
            first_best = i
    chosen = np.empty(req_gpus, np.int32)
    for r in range(replicas):
        best = first_best
        if r > 0:
            best = -1
            for i in range(count):
                if not feasible[i]:
                    continue
                if (
                    best < 0
                    or scores[i] > scores[best]
                    or (scores[i] == scores[best] and node_rank[cand[i]] < node_rank[cand[best]])
                ):
                    best = i
        if best < 0:
            _undo(
                r,
                out_nodes,
                out_gpus,
                gpu_free_milli,
                gpu_count,
                cpu_free_milli,
                memory_free_mib,
                gpu_whole_free,
                gpu_max_free_milli,
                req_gpus,
                req_milli,
                req_cpu,
                req_mem,
            )
            return STATUS_FRAGMENTED
        n = cand[best]
        if req_gpus > 0:
            for j in range(req_gpus):
                chosen[j] = -1
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
                chosen,
                cpu_free_milli[n],
                gpu_model[n],
                req_cpu,
            )
            ok = True
            for j in range(req_gpus):
                g = chosen[j]
                if g < 0 or g >= gpu_count[n] or gpu_free_milli[n, g] < req_milli:
                    ok = False
                for k in range(j):
                    if chosen[k] == g:
                        ok = False
            if not ok:
                _undo(
                    r,
                    out_nodes,
                    out_gpus,
                    gpu_free_milli,
                    gpu_count,
                    cpu_free_milli,
                    memory_free_mib,
                    gpu_whole_free,
                    gpu_max_free_milli,
                    req_gpus,
                    req_milli,
                    req_cpu,
                    req_mem,
                )
                return STATUS_BAD_POLICY_CHOICE
            for j in range(req_gpus):
                gpu_free_milli[n, chosen[j]] -= req_milli
                out_gpus[r, j] = chosen[j]
            refresh_node_kernel(n, gpu_free_milli, gpu_count, gpu_whole_free, gpu_max_free_milli)
        cpu_free_milli[n] -= req_cpu
        memory_free_mib[n] -= req_mem
        out_nodes[r] = n
        left = replica_capacity_kernel(
            n,
            gpu_free_milli,
            gpu_count,
            cpu_free_milli,
            memory_free_mib,
            gpu_whole_free,
            gpu_max_free_milli,
            req_gpus,
            req_milli,
            req_cpu,
            req_mem,
            1,
        )
        if left > 0:
            scores[best] = node_score_kernel(
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
                _node_rand(rand_base, n),
            )
        else:
            feasible[best] = False
    # the choice is in out_nodes / out_gpus; the tentative charges go back
    _undo(
        replicas,
        out_nodes,
        out_gpus,
        gpu_free_milli,
        gpu_count,
        cpu_free_milli,
        memory_free_mib,
        gpu_whole_free,
        gpu_max_free_milli,
        req_gpus,
        req_milli,
        req_cpu,
        req_mem,
    )
    return STATUS_OK


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def still_insufficient_kernel(
    node_version: NDArray[np.int64],
    stamps: NDArray[np.int64],
    node_mask: NDArray[np.bool_],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    lack: NDArray[np.int8],
    counts: NDArray[np.int64],
) -> bool:
    """A one-replica request without a required level (and not several slices per replica) that no
    node held when the nodes had `stamps`: does it still fit nowhere? Only the nodes whose
    `node_version` changed since are judged again, as `place_gang_kernel` judges a node for such a
    request (its capacity is exactly the pass-1 test). For each, `lack[n]` (bit 0: CPU, 1: memory,
    2: GPUs, what the node lacks) and `counts` (nodes lacking CPU, memory, GPUs among the matching
    ones) are brought up to date and the stamp taken. False as soon as a changed matching node lacks
    nothing (the caller places the request; nodes judged so far stay up to date)."""
    for n in range(node_version.shape[0]):
        if node_version[n] == stamps[n]:
            continue
        if node_mask[n]:
            cpu = 1 if cpu_free_milli[n] < req_cpu else 0
            mem = 1 if memory_free_mib[n] < req_mem else 0
            gpu = 0
            if req_gpus > 0 and req_milli >= GPU_MILLI:
                gpu = 1 if gpu_whole_free[n] < req_gpus else 0
            elif req_gpus == 1:
                gpu = 1 if gpu_max_free_milli[n] < req_milli else 0
            if cpu + mem + gpu == 0:
                return False
            old = int(lack[n])
            counts[0] += cpu - (old & 1)
            counts[1] += mem - ((old >> 1) & 1)
            counts[2] += gpu - ((old >> 2) & 1)
            lack[n] = cpu | (mem << 1) | (gpu << 2)
        stamps[n] = node_version[n]
    return True


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def place_gang_kernel(
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
    node_mask: NDArray[np.bool_],
    node_rank: NDArray[np.int64],
    replicas: int,
    req_gpus: int,
    req_milli: int,
    req_cpu: int,
    req_mem: int,
    required_level: int,
    preferred_level: int,
    policy: int,
    typ_cpu: NDArray[np.int64],
    typ_milli: NDArray[np.int64],
    typ_num: NDArray[np.int64],
    typ_model_ok: NDArray[np.bool_],
    typ_weight: NDArray[np.float64],
    rand_base: np.uint64,
    node_version: NDArray[np.int64],
    cached_score: NDArray[np.int64],
    cached_stamp: NDArray[np.int64],
    use_cache: bool,
    out_nodes: NDArray[np.int32],
    out_gpus: NDArray[np.int32],
    diag: NDArray[np.int64],
) -> int:
    """Place one gang; fills `out_nodes[R]`, `out_gpus[R, W]` and `diag[DIAG_SIZE]`; returns STATUS_*.

    The state arrays are unchanged on return (tentative charges are undone).
    """
    n_nodes = gpu_count.shape[0]
    for k in range(diag.shape[0]):
        diag[k] = 0
    diag[DIAG_BEST_LEVEL] = -1
    diag[DIAG_BEST_DOMAIN] = -1
    diag[DIAG_LEVEL_USED] = -1
    diag[DIAG_DOMAIN_USED] = -1
    # 1. replica capacity per node (bottom of the bottom-up counts). First a branch-free necessary
    # test on the per-node aggregates (exact for one replica of a whole-GPU, single-GPU or CPU-only
    # request), then the exact count only on the nodes that pass it.
    capacity = np.zeros(n_nodes, np.int64)
    matching = 0
    labelled = 0
    for n in range(n_nodes):
        m = node_mask[n]
        lab = m
        if required_level >= 0:
            lab = m & (domain[n, required_level] >= 0)
        matching += m
        labelled += lab
        gpu_ok = True
        if req_gpus > 0 and req_milli >= GPU_MILLI:
            gpu_ok = gpu_whole_free[n] >= req_gpus
        elif req_gpus > 0:
            gpu_ok = gpu_max_free_milli[n] >= req_milli
        ok = lab & (cpu_free_milli[n] >= req_cpu) & (memory_free_mib[n] >= req_mem) & gpu_ok
        capacity[n] = ok
    diag[DIAG_MATCHING_NODES] = matching
    diag[DIAG_LABELLED_NODES] = labelled
    # the nodes that pass, compacted without branches; later passes touch only these
    feasible_nodes = np.empty(n_nodes, np.int64)
    n_feasible = 0
    for n in range(n_nodes):
        feasible_nodes[n_feasible] = n
        n_feasible += capacity[n] > 0
    if replicas > 1 or (req_gpus > 1 and req_milli < GPU_MILLI):
        # exact counts, written out with scalar helpers only: passing the state arrays to a helper
        # per node costs reference-count updates (~40 ns a node), even when it is inlined
        for i in range(n_feasible):
            n = feasible_nodes[i]
            k = replicas
            if req_cpu > 0:
                k = _whole_times_upto(cpu_free_milli[n], req_cpu, k)
            if req_mem > 0:
                k = _whole_times_upto(memory_free_mib[n], req_mem, k)
            if k > 0 and req_gpus > 0:
                if req_milli >= GPU_MILLI:
                    k = _whole_times_upto(gpu_whole_free[n], req_gpus, k)
                elif req_gpus == 1:
                    slots = 0
                    for g in range(gpu_count[n]):
                        slots += _whole_times_upto(gpu_free_milli[n, g], req_milli, k - slots)
                        if slots >= k:
                            break
                    if slots < k:
                        k = slots
                else:  # several slices per replica: rare, the general count
                    k = replica_capacity_kernel(
                        n,
                        gpu_free_milli,
                        gpu_count,
                        cpu_free_milli,
                        memory_free_mib,
                        gpu_whole_free,
                        gpu_max_free_milli,
                        req_gpus,
                        req_milli,
                        req_cpu,
                        req_mem,
                        replicas,
                    )
            capacity[n] = k
    total = 0
    for i in range(n_feasible):
        total += capacity[feasible_nodes[i]]
    if total < replicas:
        # why not: count what the labelled matching nodes lack (only on this failing path; local
        # counters and comparisons only, it runs over every node)
        lack_cpu = 0
        lack_mem = 0
        lack_gpu = 0
        for n in range(n_nodes):
            if capacity[n] > 0 or not node_mask[n]:
                continue
            if required_level >= 0 and domain[n, required_level] < 0:
                continue
            lack_cpu += cpu_free_milli[n] < req_cpu
            lack_mem += memory_free_mib[n] < req_mem
            if req_gpus > 0 and req_milli >= GPU_MILLI:
                lack_gpu += gpu_whole_free[n] < req_gpus
            elif req_gpus == 1:
                lack_gpu += gpu_max_free_milli[n] < req_milli
            elif req_gpus > 1:
                fitting = 0
                for g in range(gpu_count[n]):
                    fitting += gpu_free_milli[n, g] >= req_milli
                lack_gpu += fitting < req_gpus
        diag[DIAG_LACK_CPU] = lack_cpu
        diag[DIAG_LACK_MEMORY] = lack_mem
        diag[DIAG_LACK_GPU] = lack_gpu
    diag[DIAG_TOTAL_REPLICAS] = total
    if diag[DIAG_MATCHING_NODES] == 0:
        return STATUS_NO_MATCHING_NODES
    if required_level >= 0 and diag[DIAG_LABELLED_NODES] == 0:
        return STATUS_NO_TOPOLOGY_DOMAIN
    if total < replicas:
        return STATUS_INSUFFICIENT
    # 2. levels, finest first
    level = required_level
    if preferred_level >= 0 and preferred_level > required_level:
        level = preferred_level
    while True:
        fragmented = False
        if level < 0:  # anywhere: one try over all feasible nodes
            return _fill_domain(
                -1,
                -1,
                capacity,
                feasible_nodes,
                n_feasible,
                domain,
                domain_order,
                domain_start,
                node_rank,
                gpu_free_milli,
                gpu_count,
                cpu_free_milli,
                cpu_capacity_milli,
                memory_free_mib,
                gpu_model,
                gpu_whole_free,
                gpu_max_free_milli,
                replicas,
                req_gpus,
                req_milli,
                req_cpu,
                req_mem,
                policy,
                typ_cpu,
                typ_milli,
                typ_num,
                typ_model_ok,
                typ_weight,
                rand_base,
                node_version,
                cached_score,
                cached_stamp,
                use_cache,
                out_nodes,
                out_gpus,
            )
        # 3. bottom-up counts per domain of this level, then the tightest domain that holds the gang
        n_domains = domain_count[level]
        dom_capacity = np.zeros(n_domains, np.int64)
        dom_rank = np.empty(n_domains, np.int64)
        for d in range(n_domains):
            dom_rank[d] = np.iinfo(np.int64).max
        for i in range(n_feasible):
            n = feasible_nodes[i]
            if capacity[n] > 0:
                d = domain[n, level]
                if d >= 0:
                    c = capacity[n]
                    dom_capacity[d] += c if c < replicas else replicas
                    if node_rank[n] < dom_rank[d]:
                        dom_rank[d] = node_rank[n]
        if diag[DIAG_BEST_LEVEL] < 0 or level == required_level:
            largest = -1
            for d in range(n_domains):
                if largest < 0 or dom_capacity[d] > dom_capacity[largest]:
                    largest = d
            diag[DIAG_BEST_LEVEL] = level
            diag[DIAG_BEST_DOMAIN] = largest
            diag[DIAG_BEST_DOMAIN_REPLICAS] = dom_capacity[largest] if largest >= 0 else 0
        for _ in range(MAX_DOMAIN_TRIES):
            best = -1
            for d in range(n_domains):
                if dom_capacity[d] < replicas:
                    continue
                if (
                    best < 0
                    or dom_capacity[d] < dom_capacity[best]
                    or (dom_capacity[d] == dom_capacity[best] and dom_rank[d] < dom_rank[best])
                ):
                    best = d
            if best < 0:
                break
            # 4. node and GPU choice inside the domain
            status = _fill_domain(
                level,
                best,
                capacity,
                feasible_nodes,
                n_feasible,
                domain,
                domain_order,
                domain_start,
                node_rank,
                gpu_free_milli,
                gpu_count,
                cpu_free_milli,
                cpu_capacity_milli,
                memory_free_mib,
                gpu_model,
                gpu_whole_free,
                gpu_max_free_milli,
                replicas,
                req_gpus,
                req_milli,
                req_cpu,
                req_mem,
                policy,
                typ_cpu,
                typ_milli,
                typ_num,
                typ_model_ok,
                typ_weight,
                rand_base,
                node_version,
                cached_score,
                cached_stamp,
                use_cache,
                out_nodes,
                out_gpus,
            )
            if status == STATUS_OK:
                diag[DIAG_LEVEL_USED] = level
                diag[DIAG_DOMAIN_USED] = best
                return STATUS_OK
            if status == STATUS_BAD_POLICY_CHOICE:
                return status
            fragmented = True
            dom_capacity[best] = -1  # 5. all or none: give up this domain, try the next tightest
        if level == required_level:
            return STATUS_FRAGMENTED if fragmented else STATUS_NO_TOPOLOGY_DOMAIN
        level -= 1


_numba_config.CACHE_DIR = _SAVED_CACHE_DIR  # type: ignore[attr-defined]
