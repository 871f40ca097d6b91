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
- gets ONE domain: at the tightest topology level that has a domain able to hold the whole gang
  (within its node mask, inside its required level if it has one; the whole allowed node set when
  no labelled domain is large enough), the domain with the fewest replica slots still missing,
  then the fewest GPUs held by jobs it must wait for, then the lowest id. "Missing" counts only
  what the gang has to wait for: running jobs other than backfill (backfill = preemptible jobs
  started at or after the reservation began, `created_at + reserve_after_seconds`; they are
  evicted when the gang can start). No runtime estimates exist in the core, so "how soon it could
  be whole" is measured by what is still in the way, not by when it ends;
- starts at once when nothing but backfill is in the way: the backfill on the nodes the placement
  uses is evicted (kind `PREEMPT`, reason naming the gang) and the gang is bound there;
- else holds the domain: its pending reason becomes `Reserved` (domain, GPUs still busy), and every
  later action of the cycle builds the requests of non-preemptible jobs without the held nodes
  (`CycleContext.held_nodes`), so only preemptible jobs backfill them. A non-preemptible job that
  would have fitted on held nodes waits with `HeldForGang` (set by allocate).

The hold is recomputed every cycle from the snapshot (no state between cycles, like Slurm's
backfill pass): the domain held keeps its lead because nothing new that the gang must wait for can
start there, while other domains keep filling. Cost when on: one pass over the running jobs and a
bincount per topology level per starving gang; off: one attribute read.
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
        pinned = _pinned(ctx, start)
        choice = _choose_domain(ctx, request, request.node_mask & ~held, pinned)
        if choice is None:
            continue
        where, nodes, missing = choice
        if missing == 0 and _start(ctx, job, request, nodes, start, where):
            continue
        held |= nodes
        holders.append(job)
        busy = int(pinned[nodes].sum())
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


def _backfill(held: RunningJob, start: float) -> bool:
    """Started on capacity that may be held (at or after the reservation began) and evictable."""
    return held.job.is_preemptible and held.started_at >= start


def _pinned(ctx: CycleContext, start: float) -> NDArray[np.int64]:
    """Per node: GPUs used by running jobs the gang must wait for (everything except backfill)."""
    state = ctx.stmt.state
    used = np.zeros(state.gpu_free_milli.shape, dtype=np.bool_)
    index = state.node_index
    for held in ctx.stmt.running.values():
        if _backfill(held, start):
            continue
        for p in held.placements:
            if p.gpu_indices:
                used[index[p.node], list(p.gpu_indices)] = True
    return used.sum(axis=1).astype(np.int64)


def _choose_domain(
    ctx: CycleContext, request: GangRequest, mask: NDArray[np.bool_], pinned: NDArray[np.int64]
) -> tuple[str, NDArray[np.bool_], int] | None:
    """(description, node mask, replica slots still missing) of the domain to hold, or None."""
    state = ctx.stmt.state
    units = max(GPU_MILLI // max(request.gpu_milli, 1), 1)  # replicas' devices per GPU (slices share)
    count = state.gpu_count.astype(np.int64)
    capacity = np.where(mask, count * units // request.gpus, 0)
    ready = np.where(mask, np.maximum(count - pinned, 0) * units // request.gpus, 0)
    levels = state.domain.shape[1]  # labelled levels, then the node level
    lowest = 0 if request.required_level == NONE else request.required_level
    for level in range(levels - 1, lowest - 1, -1):  # tightest first
        ids = state.domain[:, level]
        valid = mask & (ids >= 0)
        if not valid.any():
            continue
        n = int(state.domain_count[level])
        cap = np.bincount(ids[valid], weights=capacity[valid], minlength=n)
        fits = cap >= request.replicas
        if not fits.any():
            continue
        rdy = np.bincount(ids[valid], weights=ready[valid], minlength=n)
        busy = np.bincount(ids[valid], weights=pinned[valid], minlength=n)
        missing = np.maximum(request.replicas - rdy, 0)
        candidates = np.flatnonzero(fits)
        best = int(candidates[np.lexsort((candidates, busy[candidates], missing[candidates]))[0]])
        name = state.topology.levels[level] if level < levels - 1 else "node"
        where = f"{name} {state.domain_names[level][best]}"
        return where, valid & (ids == best), int(missing[best])
    if request.required_level != NONE or int(capacity.sum()) < request.replicas:
        return None
    missing = max(request.replicas - int(ready.sum()), 0)
    return "the whole cluster (no single topology domain holds it)", mask.copy(), missing


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
        and _backfill(held, start)
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
        f"backfill on capacity held for gang {job.id} ({where}); the gang starts there now "
        f"({gpus(job.gpu_milli_total)} GPUs)"
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
