"""Grow: give running elastic gangs below full size more replicas, from GPUs that are still free.

Who calls it: `cycle.run_cycle`, last action, so growth only takes what every pending job had its
turn at (allocate, reclaim, preempt, consolidate) and left free; it never evicts anyone. A running
job is a candidate when it is elastic (`Job.min_replicas`), holds fewer placements than `replicas`,
and was not started, moved or shrunk in this cycle. Candidates are taken in the order allocate
uses (`WorkQueue`: queues furthest below their fair share first, then job order), each asking for
the replicas it lacks. Per job:

- the limit at every level, the in-quota rule for non-preemptible jobs and, under per-GPU-model
  quotas, the limit of the model the job is charged to, are checked for the added replicas only;
  the most replicas that pass (binary search) is what it may add;
- the new replicas go on nodes of the job's GPU model (that of its first replica) and, with a
  required topology level, inside the domain its replicas already share; then `place_gang` places
  as many as fit (binary search down to one);
- the plan lists them in `Plan.grows` (only the new placements); `Plan.bindings` is untouched.

What it must not do: evict, or move replicas that already run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from leitstand.scheduler.actions.context import CycleContext
from leitstand.scheduler.actions.shares import ModelAccounting
from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import Job, PendingReason, QueueName, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, place_gang

__all__ = ["run"]


def run(ctx: CycleContext) -> None:
    if not ctx.elastic:
        return
    stmt = ctx.stmt
    wanting: dict[QueueName, list[Job]] = {}
    held_by_id: dict[str, RunningJob] = {}
    for held in stmt.running.values():
        job = held.job
        if job.min_replicas is None or not held.placements or len(held.placements) >= job.replicas:
            continue  # rigid, at full size, or holding nothing (no domain or model to grow in)
        if job.id in ctx.bound:
            continue
        if not stmt.accounting.knows(job.queue):
            continue
        held_by_id[job.id] = held
        # The job as it asks: the replicas it lacks (a rigid view, for the admission and order keys).
        wanting.setdefault(job.queue, []).append(
            replace(job, replicas=job.replicas - len(held.placements), min_replicas=None)
        )
    if not wanting:
        return
    for want in ctx.work_queue(wanting):
        held = held_by_id[want.id]
        most = _most_admissible(ctx, held, want.replicas)
        if most == 0:
            continue
        request = _growth_request(ctx, held)
        if request is None:
            continue
        placed = _place_most(ctx, request, most)
        if placed is None:
            continue
        ctx.stmt.grow(held, *placed)
        ctx.bound.add(held.job.id)  # grown in this cycle: not a victim or a move in the same cycle
        ctx.count("grow_replicas", placed[0].replicas)


def _blocked(ctx: CycleContext, held: RunningJob, replicas: int) -> bool:
    """Would `replicas` more replicas of `held` break a limit, the in-quota rule or a model limit?"""
    job = held.job
    acc = ctx.stmt.accounting
    amount = replicas * job.gpu_milli_per_replica
    if acc.limit_block(job.queue, amount) is not None:
        return True
    if not job.is_preemptible and acc.in_quota_block(job.queue, amount) is not None:
        return True
    if isinstance(acc, ModelAccounting):
        model = acc.model_of(job)  # a running job's model is settled: where it runs
        if model is not None and acc.model_limit_block(job.queue, model, amount) is not None:
            return True
    return False


def _most_admissible(ctx: CycleContext, held: RunningJob, wanted: int) -> int:
    """The most replicas in [1, wanted] that `_blocked` lets through (0: none); it only gets harder
    with more replicas, so a binary search finds it."""
    if not _blocked(ctx, held, wanted):
        return wanted
    low, high = 0, wanted - 1
    while low < high:
        mid = (low + high + 1) // 2
        if _blocked(ctx, held, mid):
            high = mid - 1
        else:
            low = mid
    return low


def _growth_request(ctx: CycleContext, held: RunningJob) -> GangRequest | None:
    """The job's request, restricted to nodes of its GPU model and, with a required level, to the
    domain its running replicas share; None when no request can be formed."""
    request = ctx.request(held.job)
    if isinstance(request, PendingReason):
        return None
    state = ctx.stmt.state
    mask = request.node_mask
    first = state.node_index[held.placements[0].node]
    if held.job.gpus > 0:
        mask = mask & (state.gpu_model == state.gpu_model[first])
    level = request.required_level
    if level != NONE:  # the node level is the last column: its "domain" is the node itself
        domain = state.domain[first, level]
        mask = mask & (state.domain[:, level] == domain) if domain != NONE else np.zeros_like(mask)
    return replace(request, node_mask=mask)


def _place_most(ctx: CycleContext, request: GangRequest, most: int) -> tuple[GangRequest, GangPlacement] | None:
    """Place as many of `most` new replicas as fit (binary search down to one), or None."""
    state, policy = ctx.stmt.state, ctx.policy

    def place(replicas: int) -> tuple[GangRequest, GangPlacement] | None:
        sized = replace(request, replicas=replicas)
        result = place_gang(state, sized, policy)
        return (sized, result) if isinstance(result, GangPlacement) else None

    best = place(most)
    if best is not None:
        return best
    best = place(1)
    if best is None:
        return None
    low, high = 1, most - 1
    while low < high:
        mid = (low + high + 1) // 2
        found = place(mid)
        if found is None:
            high = mid - 1
        else:
            low, best = mid, found
    return best
