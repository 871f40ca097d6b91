"""Reserve: hold capacity for gangs that have waited too long, so a stream of small jobs cannot
starve them (backfill with reservations, as Slurm's backfill scheduler and KAI's and Volcano's
reservation proposals do it).

Who calls it: `allocate.run`, before it places anything (its time counts in the allocate phase),
and only when `config.reserve_after_seconds` is set (otherwise it returns at once). Per cycle, for
at most `config.max_reserved_gangs` starving gangs (a pending job of at least `reserve_min_gpus`
GPUs that has waited `reserve_after_seconds`; higher priority first, then older, then id), each of
which:
- is admissible (limits, non-preemptible in quota: `CycleContext.admission_block`), could fit the
  empty cluster (`placement.never_fits`), and whose queue is not above its fair share at any level;
- gets ONE set of nodes: at the tightest topology level that has a domain able to hold the whole
  gang (within its node mask, inside its required level if it has one; the whole allowed node set
  when no labelled domain is large enough), per domain the nodes that will be whole soonest, taken
  until they hold every replica; of those sets, the one with the fewest replica slots still
  missing, then the fewest GPUs pinned, then the lowest domain id. "Pinned" is what the gang has to
  wait for: GPUs of running jobs its start may not evict (`_evictable`: it may evict backfill, i.e.
  preemptible jobs started at or after the reservation began at `created_at +
  reserve_after_seconds`; and, once the reservation is `reserve_after_seconds` old, preemptible
  jobs that were running before it began, of its own queue or of queues above their fair share).
  No runtime estimates exist in the core, so "how soon it could be whole" is measured by what is
  still in the way, not by when it ends;
- starts at once when nothing pinned is in the way: the evictable jobs on the nodes the placement
  uses are evicted (kind `PREEMPT`, the reason names the gang; the minimum runtime does not
  protect them, they ran on held capacity at their own risk) and the gang is bound there;
- else holds the nodes: its pending reason becomes `Reserved` (domain, GPUs still pinned), and every
  later action of the cycle builds the requests of non-preemptible jobs without the held nodes
  (`CycleContext.hold`), so only preemptible jobs backfill them. A non-preemptible job that would
  have fitted on held nodes waits with `HeldForGang` (set by allocate).

The hold is recomputed every cycle from the snapshot (no state between cycles, like Slurm's
backfill pass): the set held keeps its lead because nothing new that the gang must wait for can
start there. Jobs started after the reservation began are evictable wherever they run, so the hold
may move to another domain when that one is nearer to whole; the gang loses nothing by the move.

Cost when on: one pass over the running jobs and one sort per topology level per starving gang;
off: one attribute read.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions.context import CycleContext
from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import GPU_MILLI, EvictionKind, Job, PendingReason, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, never_fits, place_gang
from leitstand.scheduler.statement import gpus

__all__ = ["HELD_FOR_GANG", "RESERVED", "run"]

RESERVED = "Reserved"
"""Pending reason of a gang that capacity is held for (the message names the domain and what is busy)."""
HELD_FOR_GANG = "HeldForGang"
"""Pending reason of a non-preemptible job that would fit only on nodes held for a starving gang."""

_EPS = 1e-6


def run(ctx: CycleContext) -> None:
    after = ctx.config.reserve_after_seconds
    if after is None:
        return
    config = ctx.config
    now = ctx.snapshot.now
    starving = sorted(
        (
            job
            for jobs in ctx.pending_by_queue.values()
            for job in jobs
            if now - job.created_at >= after and job.gpus > 0 and job.replicas * job.gpus >= config.reserve_min_gpus
        ),
        key=lambda j: (-j.priority, j.created_at, j.id),
    )
    if not starving or config.max_reserved_gangs <= 0:
        return
    state = ctx.stmt.state
    held = np.zeros(state.gpu_count.shape[0], dtype=np.bool_)
    holders: list[Job] = []
    for job in starving:
        if len(holders) >= config.max_reserved_gangs:
            break
        if job.id in ctx.bound or ctx.admission_block(job) is not None or _above_fair_share(ctx, job):
            continue
        request = ctx.request(job)
        if isinstance(request, PendingReason) or never_fits(state, request) is not None:
            continue
        placed = place_gang(state, request, ctx.policy)
        if isinstance(placed, GangPlacement):  # fits on free GPUs now: starving, so it goes first
            ctx.stmt.bind(job, request, placed)
            ctx.bound.add(job.id)
            ctx.reasons.pop(job.id, None)
            ctx.count("reserve_started")
            continue
        start = job.created_at + after
        pinned = _pinned(ctx, job, start)
        choice = _choose_domain(ctx, request, request.node_mask & ~held, pinned)
        if choice is None:
            continue
        where, nodes, missing = choice
        if missing == 0 and _start(ctx, job, request, nodes, start, where):
            continue
        held |= nodes
        holders.append(job)
        busy = int(pinned[nodes].sum())  # on the held nodes
        ctx.wait(
            job,
            RESERVED,
            f"waited {now - job.created_at:.0f} s (reserve_after_seconds {after:g}): {where} "
            f"({int(nodes.sum())} nodes, {int(state.gpu_count[nodes].sum())} GPUs) is held for this gang; "
            f"{busy} GPUs there are still used by running jobs it waits for, so {missing} of its "
            f"{job.replicas} replicas cannot be placed yet; meanwhile only preemptible jobs may use the held "
            "nodes, and they are evicted when the gang can start",
        )
    ctx.count("reserve_holds", len(holders))
    if holders:
        ctx.hold(held, frozenset(j.id for j in holders))


def held_reason(ctx: CycleContext, job: Job, failed: PendingReason) -> PendingReason:
    """`HeldForGang` when `job` (non-preemptible, its request built without the held nodes) would
    fit with them; else `failed` unchanged. Called by allocate when such a job did not fit."""
    unheld = ctx.unheld.get(job.id)
    if unheld is None or ctx.held_nodes is None:
        return failed
    if isinstance(place_gang(ctx.stmt.state, unheld, ctx.policy), Unplaceable):
        return failed
    names = ", ".join(sorted(ctx.holders))
    return PendingReason(
        job.id,
        HELD_FOR_GANG,
        f"the free GPUs that would fit this job are held for starving gang {names}; only preemptible jobs "
        f"may use held nodes (this job is not); it waits for: {failed.code}: {failed.message}",
    )


def _above_fair_share(ctx: CycleContext, job: Job) -> bool:
    """A queue already above its fair share at some level gets no reservation (it waits as usual)."""
    acc = ctx.stmt.accounting
    share = ctx.shares.share_milli
    return any(acc.allocated_milli[q] > share[q] + _EPS for q in acc.paths[job.queue])


def _evictable(ctx: CycleContext, gang: Job, held: RunningJob, start: float) -> bool:
    """May the gang's start evict `held`? Preemptible jobs only: backfill (started at or after the
    reservation began), and, once the reservation is `reserve_after_seconds` old, preemptible jobs
    that were already running when it began, if they belong to the gang's queue or to a queue above
    its fair share (they had that long as notice; in-quota work of other queues stays protected,
    as in reclaim). Without that notice rule one long job would pin a held domain for as long as
    it runs (the core knows no run times to plan around, unlike Slurm's time limits)."""
    job = held.job
    if not job.is_preemptible:
        return False
    if held.started_at >= start:
        return True
    after = ctx.config.reserve_after_seconds or 0.0
    if ctx.snapshot.now < start + after:
        return False
    if job.queue == gang.queue:
        return True
    acc = ctx.stmt.accounting
    return acc.knows(job.queue) and acc.allocated_milli[job.queue] > ctx.shares.share_milli[job.queue] + _EPS


def _pinned(ctx: CycleContext, gang: Job, start: float) -> NDArray[np.int64]:
    """Per node: GPUs used by running jobs the gang must wait for (those it may not evict)."""
    state = ctx.stmt.state
    used = np.zeros(state.gpu_free_milli.shape, dtype=np.bool_)
    index = state.node_index
    for held in ctx.stmt.running.values():
        if _evictable(ctx, gang, held, start):
            continue
        for p in held.placements:
            if p.gpu_indices:
                used[index[p.node], list(p.gpu_indices)] = True
    counts: NDArray[np.int64] = used.sum(axis=1).astype(np.int64)
    return counts


def _choose_domain(
    ctx: CycleContext, request: GangRequest, mask: NDArray[np.bool_], pinned: NDArray[np.int64]
) -> tuple[str, NDArray[np.bool_], int] | None:
    """(description, nodes to hold, replica slots still missing on them), or None.

    Per domain of the tightest level that can hold the gang, the nodes that will be whole soonest
    (fewest pinned GPUs, then lowest index) are taken until their capacity holds every replica; the
    domain whose such set misses the fewest replica slots, then has the fewest pinned GPUs, then the
    lowest id, is held (only that set of nodes, not the whole domain)."""
    state = ctx.stmt.state
    units = max(GPU_MILLI // max(request.gpu_milli, 1), 1)  # replicas' devices per GPU (slices share)
    count = state.gpu_count.astype(np.int64)
    capacity = count * units // request.gpus
    ready = np.maximum(count - pinned, 0) * units // request.gpus
    levels = state.domain.shape[1]  # labelled levels, then the node level
    lowest = 0 if request.required_level == NONE else request.required_level
    for level in range(levels - 1, lowest - 1, -1):  # tightest first
        ids = state.domain[:, level]
        chosen = _best_set(ids, mask & (ids >= 0), capacity, ready, pinned, request.replicas)
        if chosen is not None:
            best, nodes, missing = chosen
            name = state.topology.levels[level] if level < levels - 1 else "node"
            return f"{name} {state.domain_names[level][best]}", nodes, missing
    if request.required_level != NONE:
        return None
    chosen = _best_set(np.zeros_like(state.domain[:, 0]), mask, capacity, ready, pinned, request.replicas)
    if chosen is None:
        return None
    return "the whole cluster (no single topology domain holds it)", chosen[1], chosen[2]


def _best_set(
    ids: NDArray[np.int32],
    valid: NDArray[np.bool_],
    capacity: NDArray[np.int64],
    ready: NDArray[np.int64],
    pinned: NDArray[np.int64],
    replicas: int,
) -> tuple[int, NDArray[np.bool_], int] | None:
    """(domain id, node mask, missing slots) of the best domain's soonest-whole node set (above)."""
    idx = np.flatnonzero(valid & (capacity > 0))
    if idx.size == 0:
        return None
    order = idx[np.lexsort((idx, pinned[idx], ids[idx]))]
    d = ids[order]
    first = np.empty(d.size, dtype=np.bool_)
    first[0] = True
    first[1:] = d[1:] != d[:-1]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)

    def in_group(x: NDArray[np.int64]) -> NDArray[np.int64]:
        total: NDArray[np.int64] = np.cumsum(x)
        within: NDArray[np.int64] = total - (total[starts] - x[starts])[group]
        return within

    cap, rdy, pin = in_group(capacity[order]), in_group(ready[order]), in_group(pinned[order])
    crossing = np.flatnonzero((cap >= replicas) & (cap - capacity[order] < replicas))
    if crossing.size == 0:
        return None
    missing = np.maximum(replicas - rdy[crossing], 0)
    pick = int(crossing[np.lexsort((d[crossing], pin[crossing], missing))[0]])
    nodes = np.zeros(valid.shape, dtype=np.bool_)
    nodes[order[starts[group[pick]] : pick + 1]] = True
    return int(d[pick]), nodes, int(max(replicas - rdy[pick], 0))


def _start(
    ctx: CycleContext, job: Job, request: GangRequest, nodes: NDArray[np.bool_], start: float, where: str
) -> bool:
    """Evict the backfill in the way and bind the gang in `nodes`; False (nothing changed) when it
    does not fit even with all the domain's backfill gone (CPU, memory or fragmentation)."""
    stmt = ctx.stmt
    state = stmt.state
    index = state.node_index
    backfill = [
        held
        for held in stmt.running.values()
        if held.job.id not in ctx.bound
        and _evictable(ctx, job, held, start)
        and any(nodes[index[p.node]] for p in held.placements)
    ]
    backfill.sort(key=lambda h: h.job.id)
    local = replace(request, node_mask=request.node_mask & nodes)
    mark = stmt.checkpoint()
    for held in backfill:
        stmt.evict(held, EvictionKind.PREEMPT, job.id, "")
    result = place_gang(state, local, ctx.policy)
    stmt.rollback(mark)
    if isinstance(result, Unplaceable):
        return False
    assert isinstance(result, GangPlacement)
    used = {state.node_names[int(i)] for i in result.nodes}
    reason = (
        f"preemptible job on capacity held for gang {job.id} ({where}) since {start:.0f} s; the gang "
        f"starts there now ({gpus(job.gpu_milli_total)} GPUs)"
    )
    evicted = 0
    for held in backfill:
        if any(p.node in used for p in held.placements):
            stmt.evict(held, EvictionKind.PREEMPT, job.id, reason)
            evicted += 1
    stmt.bind(job, request, result)
    ctx.bound.add(job.id)
    ctx.reasons.pop(job.id, None)
    ctx.count("reserve_started")
    ctx.count("reserve_evicted", evicted)
    return True
