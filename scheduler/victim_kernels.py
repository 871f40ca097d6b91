"""Compiled step of the victim search: which nodes are worth searching for a one-node gang.

What it holds: `node_candidates_kernel`, the node-level part of `victims._candidate_domains` (where a
topology domain is one node): per node, the device-slots its candidates would free; the nodes that
could then hold the gang, most free room first; and each such node's candidates, cheapest first.

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
    by_devices: bool,
    units: int,
    width: int,
    replicas: int,
    max_nodes: int,
    cap: int,
    out_nodes: NDArray[np.int64],
    out_jobs: NDArray[np.int64],
    out_bounds: NDArray[np.int64],
    out_held: NDArray[np.int64],
    out_cpu: NDArray[np.int64],
    out_memory: NDArray[np.int64],
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

    With `cap` > 0, also what the k-th node's first `cap` candidates hold there (every row of
    theirs on that node): milli per GPU index added to `out_held[k]` (`row_bits` says which GPUs a
    row holds, `job_milli` how much of each), CPU milli and memory MiB per row to `out_cpu[k]` and
    `out_memory[k]`; the caller passes them zeroed."""
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
                    out_held[k, g] += job_milli[job]
                bits >>= 1
                g += 1
            out_cpu[k] += job_cpu[job]
            out_memory[k] += job_memory[job]
    return n_out
