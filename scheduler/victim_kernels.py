"""Compiled steps of the victim search: which nodes are worth searching for a one-node gang.

What it holds: `node_candidates_kernel`, the node-level part of `victims._candidate_domains` (where a
topology domain is one node): per node, the device-slots its candidates would free; the nodes that
could then hold the gang, most free room first; and each such node's candidates, cheapest first.
And `moves_refuted_kernel`: for consolidation, whether a node's search is sure to find no moves
because some job it would move has nowhere to go (`victims.choose_victims` with `rehome`).

Who calls it: `victims._candidate_domains` at the node level — every victim search of a gang that
fits on one node (a one-replica job, or a gang whose required level is the node), the common case
of reclaim, preemption and consolidation. The numpy version it replaced made ~25 array passes per
search (~0.1 ms at a factory's size); this makes two passes over the pool's rows and one over the
nodes. `tests/property/test_victim_bound_oracle.py` holds the search exact; the arithmetic below is
the numpy version's, step for step.

What it must not do: hold Python objects, or write anything but its `out_*` arguments.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from leitstand.scheduler.model import GPU_MILLI as _MODEL_GPU_MILLI

GPU_MILLI = int(_MODEL_GPU_MILLI)


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def node_candidates_kernel(
    row_job: NDArray[np.int64],
    row_node: NDArray[np.int64],
    row_gpus: NDArray[np.int64],
    row_bits: NDArray[np.int64],
    job_milli: NDArray[np.int64],
    job_cpu: NDArray[np.int64],
    job_memory: NDArray[np.int64],
    chosen: NDArray[np.bool_],
    mask: NDArray[np.bool_],
    slots_now: NDArray[np.int64],
    gpu_count: NDArray[np.int32],
    gpu_free_milli: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    by_devices: bool,
    units: int,
    width: int,
    replicas: int,
    req_milli: int,
    req_cpu: int,
    req_memory: int,
    max_nodes: int,
    cap: int,
    out_nodes: NDArray[np.int64],
    out_jobs: NDArray[np.int64],
    out_bounds: NDArray[np.int64],
    out_viable: NDArray[np.bool_],
) -> int:
    """Nodes worth searching and their candidates; returns how many nodes were written.

    Rows are the pool's replicas in row order (`VictimPool.row_job` ascends: a job's rows are
    adjacent); a row counts when its job is `chosen` and its node is in `mask`. Per node, the
    replicas it holds now are `slots_now // width` (`slots_now` itself when the gang asks for no
    device slots, `by_devices` False), and with its candidates gone
    `min(slots_now + freed devices · units, GPUs · units) // width`. A node with candidates where
    that reaches `replicas` is worth searching; they are ranked by the replicas they hold now
    (more first), then by node index, and the first `max_nodes` are written to `out_nodes`. Their
    candidates, per node in ascending entry order without repeats, are `out_jobs[out_bounds[k] :
    out_bounds[k + 1]]` for the k-th node (`out_bounds` has `max_nodes + 1` entries).

    With `cap` > 0 (a gang of GPU shares or whole GPUs, `req_milli` each), `out_viable[k]` says
    whether the k-th node could hold the gang with its first `cap` candidates gone: what they hold
    there (every row of theirs on that node: milli per GPU index from `row_bits` and `job_milli`,
    CPU milli and memory MiB per row) is added to the node's free resources, and the replicas that
    then fit — device-slots of `req_milli` per GPU (whole GPUs: GPUs fully free) over `width`,
    no more than CPU and memory allow — must reach `replicas`. A node none of whose GPUs they free
    counts its slots as they are (`slots_now`)."""
    n_nodes = mask.shape[0]
    freed = np.zeros(n_nodes, np.int64)
    has = np.zeros(n_nodes, np.bool_)
    for r in range(row_job.shape[0]):
        node = row_node[r]
        if chosen[row_job[r]] and mask[node]:
            has[node] = True
            freed[node] += row_gpus[r]
    count = 0
    useful = np.empty(n_nodes, np.int64)
    for node in range(n_nodes):
        if not has[node]:
            continue
        if by_devices:
            room = min(slots_now[node] + freed[node] * units, np.int64(gpu_count[node]) * units) // width
        else:
            room = slots_now[node]
        if room >= replicas:
            useful[count] = node
            count += 1
    if count == 0:
        return 0
    # The `max_nodes` smallest keys in order, by insertion into a short sorted list (no sort of all
    # `count` keys: most one-node searches find hundreds of nodes and list 16).
    n_out = min(count, max_nodes)
    best = np.empty(n_out, np.int64)
    ranked = np.empty(n_out, np.int64)
    filled = 0
    for k in range(count):
        node = useful[k]
        now = slots_now[node] // width if by_devices else slots_now[node]
        key = -now * (n_nodes + 1) + node  # more room first, then the lower index (keys are unique)
        if filled < n_out:
            j = filled
            filled += 1
        elif key < best[n_out - 1]:
            j = n_out - 1
        else:
            continue
        while j > 0 and best[j - 1] > key:
            best[j] = best[j - 1]
            ranked[j] = ranked[j - 1]
            j -= 1
        best[j] = key
        ranked[j] = k
    position = np.full(n_nodes, -1, np.int64)
    for k in range(n_out):
        node = useful[ranked[k]]
        out_nodes[k] = node
        position[node] = k
    # Each chosen node's candidates: counted, then written in row order (entries ascend per node).
    size = np.zeros(n_out, np.int64)
    last = np.full(n_out, -1, np.int64)
    for r in range(row_job.shape[0]):
        k = position[row_node[r]]
        job = row_job[r]
        if k >= 0 and chosen[job] and job != last[k]:
            size[k] += 1
            last[k] = job
    out_bounds[0] = 0
    for k in range(n_out):
        out_bounds[k + 1] = out_bounds[k] + size[k]
    fill = out_bounds[:n_out].copy()
    last[:] = -1
    n_gpus = gpu_free_milli.shape[1]
    held = np.zeros((n_out, n_gpus), np.int64)
    cpu_freed = np.zeros(n_out, np.int64)
    memory_freed = np.zeros(n_out, np.int64)
    for r in range(row_job.shape[0]):
        k = position[row_node[r]]
        job = row_job[r]
        if k < 0 or not chosen[job]:
            continue
        if job != last[k]:
            out_jobs[fill[k]] = job
            fill[k] += 1
            last[k] = job
        if fill[k] - out_bounds[k] <= cap:  # the job is among the node's first `cap` (its rank < cap)
            bits = row_bits[r]
            g = 0
            while bits:
                if bits & 1:
                    held[k, g] += job_milli[job]
                bits >>= 1
                g += 1
            cpu_freed[k] += job_cpu[job]
            memory_freed[k] += job_memory[job]
    if cap > 0:
        for k in range(n_out):
            node = out_nodes[k]
            touched = False
            for g in range(n_gpus):
                if held[k, g] != 0:
                    touched = True
            if touched:
                slots = 0
                for g in range(n_gpus):
                    free = min(np.int64(gpu_free_milli[node, g]) + held[k, g], GPU_MILLI)
                    if req_milli >= GPU_MILLI:
                        if free >= GPU_MILLI:
                            slots += 1
                    else:
                        slots += free // req_milli
                room = slots // width
            else:
                room = slots_now[node] // width
            if req_cpu > 0:
                room = min(room, (cpu_free_milli[node] + cpu_freed[k]) // req_cpu)
            if req_memory > 0:
                room = min(room, (memory_free_mib[node] + memory_freed[k]) // req_memory)
            out_viable[k] = room >= replicas
    return n_out


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _fits_elsewhere(
    node: int,
    gpus: int,
    milli: int,
    cpu: int,
    memory: int,
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
) -> bool:
    """Could one replica of (gpus × milli, CPU, memory) fit on some node other than `node` as the
    state is? Node masks, models and schedulability are not looked at: an over-estimate."""
    for x in range(cpu_free_milli.shape[0]):
        if x == node or cpu_free_milli[x] < cpu or memory_free_mib[x] < memory:
            continue
        if gpus == 0:
            return True
        if milli >= GPU_MILLI:
            if gpu_whole_free[x] >= gpus:
                return True
        elif gpu_max_free_milli[x] >= milli:
            return True
    return False


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def _fits_beside(
    free: NDArray[np.int64], w_gpus: int, w_milli: int, m_gpus: int, m_milli: int
) -> bool:
    """Could a replica of `m_gpus` × `m_milli` fit on a node whose GPUs have `free` milli beside one
    of `w_gpus` × `w_milli`, for some choice of GPUs for both (whole GPUs: milli 1000; at most one
    GPU when a share is less)? Exact for those shapes; the caller checks that the waiting replica
    fits by itself."""
    if m_gpus == 0:
        return True
    full = 0
    for g in range(free.shape[0]):
        if free[g] >= GPU_MILLI:
            full += 1
    if w_gpus == 0:
        if m_milli >= GPU_MILLI:
            return full >= m_gpus
        best = 0
        for g in range(free.shape[0]):
            best = max(best, free[g])
        return best >= m_milli
    if w_milli >= GPU_MILLI:  # the waiting replica takes `w_gpus` whole GPUs (all alike)
        if m_milli >= GPU_MILLI:
            return full >= w_gpus + m_gpus
        enough = 0
        for g in range(free.shape[0]):
            if free[g] >= m_milli:
                enough += 1
        return enough >= w_gpus + 1  # (whole GPUs are among them)
    # The waiting replica takes a share of one GPU a (free[a] >= w_milli).
    if m_milli >= GPU_MILLI:
        spare = False  # a GPU that is not whole but holds the waiting share: it keeps the whole ones
        for g in range(free.shape[0]):
            if w_milli <= free[g] < GPU_MILLI:
                spare = True
        return (full if spare else full - 1) >= m_gpus
    first_w = -1
    count_w = 0
    count_m = 0
    for g in range(free.shape[0]):
        if free[g] >= w_milli + m_milli:
            return True  # both shares on one GPU
        if free[g] >= w_milli:
            count_w += 1
            first_w = g
        if free[g] >= m_milli:
            count_m += 1
    if count_w == 0 or count_m == 0:
        return False
    if count_w >= 2 or count_m >= 2:
        return True
    return not free[first_w] >= m_milli  # one GPU each: they must differ


@njit(cache=True, nogil=True)  # type: ignore[misc,unused-ignore]
def moves_refuted_kernel(
    node: int,
    entries: NDArray[np.int64],
    max_victims: int,
    row_start: NDArray[np.int64],
    row_count: NDArray[np.int64],
    row_node: NDArray[np.int64],
    row_bits: NDArray[np.int64],
    job_milli: NDArray[np.int64],
    job_cpu: NDArray[np.int64],
    job_memory: NDArray[np.int64],
    gpu_free_milli: NDArray[np.int32],
    gpu_count: NDArray[np.int32],
    cpu_free_milli: NDArray[np.int64],
    memory_free_mib: NDArray[np.int64],
    gpu_whole_free: NDArray[np.int32],
    gpu_max_free_milli: NDArray[np.int32],
    w_gpus: int,
    w_milli: int,
    w_cpu: int,
    w_memory: int,
    home: NDArray[np.int8],
) -> bool:
    """Is a consolidation search of one node sure to find no moves? True only when it is.

    The search evicts the node's candidates `entries` cheapest first, at most `max_victims`; each
    time the waiting replica (`w_*`: one replica, whole GPUs or a share of one) fits on the node,
    the moves are accepted only if every evicted job is placed again somewhere. Here, for every such
    prefix, each evicted job needs a possible home: another node that could hold it as the state is
    (the search changes no other node when every candidate has its one replica here), or this node
    beside the waiting replica with the prefix gone (`_fits_beside`, any choice of GPUs); and the
    jobs with no other home must all fit back at once (their CPU, memory and GPU milli summed with
    the waiting replica's within what the node has free, their whole GPUs within its fully free
    ones). If some job has no home, or those that must come back do not fit together, that prefix's
    moves are refused for sure; if every prefix is refused, so is the search. Only necessary
    conditions are tested (homes elsewhere are over-estimated, and jobs competing for them are not
    counted against each other), so True never drops a search that could succeed. False (search as
    usual) for what it does not model: a candidate with several replicas or several GPU shares, a
    waiting replica with several GPU shares.

    `home[e]`, per pool entry, remembers whether another node could hold entry e (1), could not
    (-1), or was not asked yet (0); the caller keeps it while the state is unchanged (the answer
    does not depend on the waiting job), so searches of one cycle ask each candidate once."""
    if w_gpus > 1 and w_milli < GPU_MILLI:
        return False
    width = gpu_count[node]
    free = np.empty(width, np.int64)
    for g in range(width):
        free[g] = gpu_free_milli[node, g]
    cpu = cpu_free_milli[node]
    memory = memory_free_mib[node]
    n = min(max_victims, entries.shape[0])
    gpus = np.zeros(n, np.int64)
    for k in range(n):
        e = entries[k]
        if row_count[e] != 1:
            return False
        r = row_start[e]
        if row_node[r] != node:
            return False
        bits = row_bits[r]
        g = 0
        while bits:
            if bits & 1:
                if g >= width:
                    return False
                free[g] += job_milli[e]
                gpus[k] += 1
            bits >>= 1
            g += 1
        if gpus[k] > 1 and job_milli[e] < GPU_MILLI:
            return False
        cpu += job_cpu[e]
        memory += job_memory[e]
        # Does the waiting replica fit now (the placement's test of one node for one replica)?
        if cpu < w_cpu or memory < w_memory:
            continue
        if w_gpus > 0:
            if w_milli >= GPU_MILLI:
                whole = 0
                for d in range(width):
                    if free[d] >= GPU_MILLI:
                        whole += 1
                if whole < w_gpus:
                    continue
            else:
                best = 0
                for d in range(width):
                    if free[d] > best:
                        best = free[d]
                if best < w_milli:
                    continue
        refused = False
        # What the jobs that can only come back here need beside the waiting replica, together.
        back_cpu = w_cpu
        back_memory = w_memory
        back_milli = w_gpus * w_milli
        back_whole = w_gpus if w_milli >= GPU_MILLI else 0
        for j in range(k + 1):
            m = entries[j]
            if home[m] == 0:
                away = _fits_elsewhere(
                    node, gpus[j], job_milli[m], job_cpu[m], job_memory[m],
                    cpu_free_milli, memory_free_mib, gpu_whole_free, gpu_max_free_milli,
                )
                home[m] = 1 if away else -1
            if home[m] == 1:
                continue
            if not (
                cpu - w_cpu >= job_cpu[m]
                and memory - w_memory >= job_memory[m]
                and _fits_beside(free, w_gpus, w_milli, gpus[j], job_milli[m])
            ):
                refused = True
                break
            back_cpu += job_cpu[m]
            back_memory += job_memory[m]
            back_milli += gpus[j] * job_milli[m]
            if job_milli[m] >= GPU_MILLI:
                back_whole += gpus[j]
        if not refused:
            # Each fits beside the waiting replica alone; all of them at once need at least their
            # CPU, memory and GPU milli summed, and their whole GPUs fully free.
            total = 0
            whole = 0
            for d in range(width):
                total += free[d]
                if free[d] >= GPU_MILLI:
                    whole += 1
            if back_cpu > cpu or back_memory > memory or back_milli > total or back_whole > whole:
                refused = True
        if not refused:
            return False
    return True
