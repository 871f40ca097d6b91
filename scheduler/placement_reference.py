"""Pure-Python twin of `placement_kernels.py`: the same placement decision, written to be read.

What it holds: `place_gang_reference` and `replica_capacity_reference`, step-for-step equivalents of
the compiled kernels (same arguments, same outputs, same tie-breaks, same undo of tentative charges).
The policy's score and GPU choice come from `policy_reference.py` (the policies' own pure-Python
twin), so the whole reference path is interpreted.

Who calls it: `placement.place_gang(..., engine="reference")`, the parity tests (kernel result ==
reference result exactly) and `leitstand bench core` (the speed-up of compiled over reference).

What it must not do: drift from the kernels. Any change to one is made to the other in the same
commit; `tests/parity/test_placement_parity.py` fails otherwise.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler import codes as K
from leitstand.scheduler import policy_reference
from leitstand.scheduler.model import GPU_MILLI

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def mix64(x: int) -> int:
    """splitmix64 finaliser on a 64-bit unsigned integer (Python int, masked)."""
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def node_rand(rand_base: int, n: int) -> int:
    return mix64(rand_base ^ ((n * _GOLDEN) & _MASK64))


def replica_capacity_reference(
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
    """min(limit, replicas node `n` holds now): the minimum over CPU, memory and GPUs."""
    k = limit
    if req_cpu > 0:
        k = min(k, int(cpu_free_milli[n]) // req_cpu)
    if req_mem > 0:
        k = min(k, int(memory_free_mib[n]) // req_mem)
    if k <= 0:
        return 0
    if req_gpus > 0:
        if req_milli >= GPU_MILLI:
            c = int(gpu_whole_free[n]) // req_gpus
        elif gpu_max_free_milli[n] < req_milli:
            c = 0
        else:
            slots = [int(gpu_free_milli[n, g]) // req_milli for g in range(int(gpu_count[n]))]
            c = sum(slots) // req_gpus
            # c replicas on req_gpus distinct GPUs each fit iff sum_g min(slots_g, c) >= c * req_gpus
            while req_gpus > 1 and c > 0 and sum(min(s, c) for s in slots) < c * req_gpus:
                c -= 1
        k = min(k, c)
    return int(k)


def _refresh_node(
    n: int,
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
) -> None:
    row = [int(gpu_free_milli[n, g]) for g in range(int(gpu_count[n]))]
    gpu_whole_free[n] = sum(1 for free in row if free == GPU_MILLI)
    gpu_max_free_milli[n] = max([*row, 0])


def place_gang_reference(
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
    """Same contract as `placement_kernels.place_gang_kernel`."""
    score = policy_reference.node_score
    choose = policy_reference.choose_gpus
    base = int(rand_base)
    n_nodes = gpu_count.shape[0]

    def capacity_of(n: int, cpu: int = req_cpu, mem: int = req_mem, limit: int = replicas) -> int:
        return replica_capacity_reference(
            n,
            gpu_free_milli,
            gpu_count,
            cpu_free_milli,
            memory_free_mib,
            gpu_whole_free,
            gpu_max_free_milli,
            req_gpus,
            req_milli,
            cpu,
            mem,
            limit,
        )

    def score_of(n: int) -> int:
        return int(
            score(
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
                node_rand(base, n),
            )
        )

    def committed_score_of(n: int) -> int:
        """Score on the committed state: from the cache while the node's stamp is unchanged."""
        if use_cache and cached_stamp[n] == node_version[n]:
            return int(cached_score[n])
        value = score_of(n)
        if use_cache:
            cached_score[n] = value
            cached_stamp[n] = node_version[n]
        return value

    def undo(placed: int) -> None:
        for r in range(placed):
            n = int(out_nodes[r])
            for j in range(req_gpus):
                gpu_free_milli[n, out_gpus[r, j]] += req_milli
            cpu_free_milli[n] += req_cpu
            memory_free_mib[n] += req_mem
            if req_gpus > 0:
                _refresh_node(n, gpu_free_milli, gpu_count, gpu_whole_free, gpu_max_free_milli)

    def fill(level: int, dom: int) -> int:
        """Every replica inside `dom` of `level` (level < 0: anywhere), or none; no charge stays."""
        members = (
            range(n_nodes)
            if level < 0
            else domain_order[level, domain_start[level, dom] : domain_start[level, dom + 1]]
        )
        cand = [int(n) for n in members if capacity[n] > 0]
        feasible = [True] * len(cand)
        scores = [committed_score_of(n) for n in cand]
        for r in range(replicas):
            best = -1
            for i, n in enumerate(cand):
                if not feasible[i]:
                    continue
                if (
                    best < 0
                    or scores[i] > scores[best]
                    or (scores[i] == scores[best] and node_rank[n] < node_rank[cand[best]])
                ):
                    best = i
            if best < 0:
                undo(r)
                return int(K.STATUS_FRAGMENTED)
            n = cand[best]
            if req_gpus > 0:
                chosen = np.full(req_gpus, -1, dtype=np.int32)
                choose(
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
                    int(cpu_free_milli[n]),
                    int(gpu_model[n]),
                    req_cpu,
                )
                picks = [int(g) for g in chosen]
                if len(set(picks)) != len(picks) or any(
                    g < 0 or g >= gpu_count[n] or gpu_free_milli[n, g] < req_milli for g in picks
                ):
                    undo(r)
                    return int(K.STATUS_BAD_POLICY_CHOICE)
                for j, g in enumerate(picks):
                    gpu_free_milli[n, g] -= req_milli
                    out_gpus[r, j] = g
                _refresh_node(n, gpu_free_milli, gpu_count, gpu_whole_free, gpu_max_free_milli)
            cpu_free_milli[n] -= req_cpu
            memory_free_mib[n] -= req_mem
            out_nodes[r] = n
            if capacity_of(n, limit=1) > 0:
                scores[best] = score_of(n)
            else:
                feasible[best] = False
        undo(replicas)  # the choice is in out_nodes / out_gpus; the tentative charges go back
        return int(K.STATUS_OK)

    diag[:] = 0
    diag[K.DIAG_BEST_LEVEL] = diag[K.DIAG_BEST_DOMAIN] = -1
    diag[K.DIAG_LEVEL_USED] = diag[K.DIAG_DOMAIN_USED] = -1
    # 1. replica capacity per node
    capacity = [0] * n_nodes
    total = 0
    for n in range(n_nodes):
        if not node_mask[n]:
            continue
        diag[K.DIAG_MATCHING_NODES] += 1
        if required_level >= 0 and domain[n, required_level] < 0:
            continue
        diag[K.DIAG_LABELLED_NODES] += 1
        capacity[n] = capacity_of(n)
        total += capacity[n]
    if total < replicas:  # why not: what the labelled matching nodes lack
        for n in range(n_nodes):
            if capacity[n] > 0 or not node_mask[n] or (required_level >= 0 and domain[n, required_level] < 0):
                continue
            diag[K.DIAG_LACK_CPU] += int(req_cpu > 0 and cpu_free_milli[n] < req_cpu)
            diag[K.DIAG_LACK_MEMORY] += int(req_mem > 0 and memory_free_mib[n] < req_mem)
            diag[K.DIAG_LACK_GPU] += int(req_gpus > 0 and capacity_of(n, 0, 0, 1) == 0)
    diag[K.DIAG_TOTAL_REPLICAS] = total
    if diag[K.DIAG_MATCHING_NODES] == 0:
        return int(K.STATUS_NO_MATCHING_NODES)
    if required_level >= 0 and diag[K.DIAG_LABELLED_NODES] == 0:
        return int(K.STATUS_NO_TOPOLOGY_DOMAIN)
    if total < replicas:
        return int(K.STATUS_INSUFFICIENT)
    # 2. levels, finest first: preferred, upwards to required (or to the top, then anywhere)
    level = preferred_level if preferred_level >= 0 and preferred_level > required_level else required_level
    while True:
        fragmented = False
        if level < 0:
            return fill(-1, -1)
        # 3. bottom-up counts per domain, then the tightest domain holding the gang
        n_domains = int(domain_count[level])
        dom_capacity = [0] * n_domains
        dom_rank = [int(np.iinfo(np.int64).max)] * n_domains
        for n in range(n_nodes):
            d = int(domain[n, level])
            if capacity[n] > 0 and d >= 0:
                dom_capacity[d] += min(capacity[n], replicas)
                dom_rank[d] = min(dom_rank[d], int(node_rank[n]))
        if diag[K.DIAG_BEST_LEVEL] < 0 or level == required_level:
            largest = -1
            for d in range(n_domains):
                if largest < 0 or dom_capacity[d] > dom_capacity[largest]:
                    largest = d
            diag[K.DIAG_BEST_LEVEL] = level
            diag[K.DIAG_BEST_DOMAIN] = largest
            diag[K.DIAG_BEST_DOMAIN_REPLICAS] = dom_capacity[largest] if largest >= 0 else 0
        for _ in range(K.MAX_DOMAIN_TRIES):
            holding = [d for d in range(n_domains) if dom_capacity[d] >= replicas]
            if not holding:
                break
            best = min(holding, key=lambda d: (dom_capacity[d], dom_rank[d], d))
            # 4. node and GPU choice inside the domain
            status = fill(level, best)
            if status == K.STATUS_OK:
                diag[K.DIAG_LEVEL_USED] = level
                diag[K.DIAG_DOMAIN_USED] = best
                return int(K.STATUS_OK)
            if status == K.STATUS_BAD_POLICY_CHOICE:
                return status
            fragmented = True
            dom_capacity[best] = -1  # 5. all or none: give up this domain, try the next tightest
        if level == required_level:
            return int(K.STATUS_FRAGMENTED) if fragmented else K.STATUS_NO_TOPOLOGY_DOMAIN
        level -= 1
