"""Allocate: place pending gangs on free resources, in the order of work. No evictions.

Who calls it: `cycle.run_cycle`, first action. Per job, in order: cheap admission checks (limit at
every level, non-preemptible within quota), then `place_gang` on the working state, then a bind.
Failed shapes are remembered for the rest of the action: the state only fills up while allocate
runs, so a shape that did not fit once will not fit later (identical gangs cost one placement call).
Where requests are plain (no per-model quotas, no held nodes), a job whose queue and request fields
(`Job.request_key`) match one that failed gets that failure at once, without its request being
looked up: most of a deep backlog waits behind a few shapes, and this visit is what it costs.
A queue whose limit has no headroom left has the rest of its jobs marked at once. When queues set
per-GPU-model quotas, a job that names no single model is tried per model option in turn
(`CycleContext.model_choices`); the first that fits is the model it is charged to.

Every job that stays pending gets a reason here; later actions may overwrite it with a better one.
Elastic gangs (`Job.min_replicas`): a job whose full size is blocked or does not fit starts with
the most replicas in [min_replicas, replicas] that pass the same checks and fit (binary searches,
`_largest_admissible` and `_place_smaller`); the rest it gets later from `grow`.

It first runs `reserve` (holds for starving gangs; part of the allocate phase); gangs that capacity
is held for are skipped and keep `Reserved`; a
non-preemptible job that fails only because held nodes are left out of its request waits with
`HeldForGang`.
"""

from __future__ import annotations

from dataclasses import replace

from leitstand.scheduler.actions import reserve
from leitstand.scheduler.actions.context import Code, CycleContext, ShapeKey
from leitstand.scheduler.actions.shares import ModelAccounting
from leitstand.scheduler.model import Job, PendingReason, QueueName
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, place_gang

__all__ = ["run"]


def run(ctx: CycleContext) -> None:
    reserve.run(ctx)  # holds for starving gangs first (returns at once unless reserve_after_seconds is set)
    failed: dict[ShapeKey, Unplaceable] = {}
    acc = ctx.stmt.accounting
    # Plain requests: a job's request follows from its queue and `request_key` alone, so equal pairs
    # fail alike (a finer key than `shape_key`, known before the request is looked up).
    same: _Same | None = None if isinstance(acc, ModelAccounting) or ctx.held_nodes is not None else {}
    ctx.plain_failed = same  # `_place` records there; later actions read it
    # Pairs of `same` whose admission was found sure since the last bind, with the job's
    # preemptibility (the rest of what `surely_admitted` reads follows from the queue and the
    # request key): only a bind charges the accounting here, so each bind clears it.
    sure: dict[tuple[QueueName, tuple[object, ...], bool], Unplaceable] = {}
    budget = ctx.config.max_jobs_per_cycle
    work = ctx.work_queue()
    reasons, holders = ctx.reasons, ctx.holders
    visited: list[Job] = []  # in the order of work; the part before the last bind may need a re-check
    last_bind = 0
    for job in work:
        visited.append(job)
        if budget <= 0:
            ctx.wait(job, Code.CYCLE_BUDGET, "not considered this cycle (max_jobs_per_cycle reached); next cycle")
            continue
        budget -= 1
        if same and job.min_replicas is None:
            # A rigid job whose pair already failed and that no admission check can block gets that
            # failure at once: what the full visit below gives it, without the rest of its checks.
            key = (job.queue, job.request_key, job.is_preemptible)
            failure = sure.get(key)
            if failure is None:
                failure = same.get((job.queue, job.request_key))
                if failure is not None and ctx.surely_admitted(job):
                    sure[key] = failure
                else:
                    failure = None
            if failure is not None and job.id not in holders:
                reasons[job.id] = failure  # the shape's failure itself: its reason is made when read
                continue
        if job.id in holders:
            continue  # capacity is held for it (`reserve`): it keeps its `Reserved` reason
        block = ctx.admission_block(job)
        size = job  # the size tried: the job itself, or an elastic job at the most replicas admissible
        if block is not None and job.is_elastic:
            smaller = _largest_admissible(ctx, job)
            if smaller is not None:
                block, size = None, smaller
        if block is not None:
            ctx.reasons[job.id] = block
            if block.code == Code.QUEUE_AT_LIMIT and acc.limit_block(job.queue, 1) is not None:
                # No headroom at all: nothing else in this queue can start by allocation.
                for rest in work.drain(job.queue):
                    visited.append(rest)
                    ctx.reasons[rest.id] = ctx.admission_block(rest) or PendingReason(
                        rest.id, block.code, block.message
                    )
            continue
        known = None if same is None else same.get((size.queue, size.request_key))
        if known is not None:
            reasons[job.id] = known
            placed = None
        else:
            placed = _place(ctx, size, failed)
        if placed is None and size.is_elastic:
            placed = _place_smaller(ctx, size, failed)
        if placed is None:
            continue
        request, result = placed
        ctx.stmt.bind(job, request, result)  # an elastic job with `request.replicas` of its replicas
        sure.clear()
        ctx.bound.add(job.id)
        ctx.reasons.pop(job.id, None)
        last_bind = len(visited)
    # Jobs visited after the last bind saw the accounting every later action starts from: their
    # admission was checked against it already, so reclaim's reason refresh passes over them.
    ctx.visited_before_last_bind = visited[:last_bind]


_Same = dict[tuple[QueueName, tuple[object, ...]], Unplaceable]
"""Failures by (queue, `Job.request_key`), for plain requests only (see `run`)."""


def _place(
    ctx: CycleContext, job: Job, failed: dict[ShapeKey, Unplaceable]
) -> tuple[GangRequest, GangPlacement] | None:
    """Where `job` fits on the working state, or None with its reason recorded (and, with plain
    requests, its placement failure in `ctx.plain_failed`)."""
    placed = _place_any(ctx, job, failed)
    if isinstance(placed, Unplaceable):
        if ctx.plain_failed is not None:
            ctx.plain_failed[(job.queue, job.request_key)] = placed
        return None
    return placed


def _place_any(
    ctx: CycleContext, job: Job, failed: dict[ShapeKey, Unplaceable]
) -> tuple[GangRequest, GangPlacement] | Unplaceable | None:
    """Where `job` fits on the working state; else its reason is recorded and the placement failure
    returned when the job's one request failed to fit (None for other reasons)."""
    outcome: Unplaceable | None = None
    for model, view in ctx.model_choices(job):
        request = ctx.request(job) if model is None else ctx.model_request(job, model)
        if isinstance(request, PendingReason):
            ctx.reasons[job.id] = request
            continue
        shape = ctx.shape_key(view, request)
        if job.id in ctx.unheld:  # its mask leaves out held nodes: not the shape of preemptible peers
            shape = (*shape, "unheld")
        known = failed.get(shape)
        if known is not None:
            ctx.reasons[job.id] = known
            outcome = known
            continue
        result = place_gang(ctx.stmt.state, request, ctx.policy, remember_failure=True)
        if isinstance(result, Unplaceable):
            if job.id in ctx.unheld:  # non-preemptible, kept off nodes held for a starving gang
                why = reserve.held_reason(ctx, job, PendingReason(job.id, result.code, result.message))
                result = Unplaceable(why.code, why.message)
            failed[shape] = outcome = result
            ctx.reasons[job.id] = result
            continue
        assert isinstance(result, GangPlacement)
        if model is not None:
            ctx.resolve(job, model, request)
        return request, result
    return outcome


def _sized(job: Job, replicas: int) -> Job:
    """`job` with `replicas` replicas (an elastic job tried at a smaller size; same id)."""
    return replace(job, replicas=replicas)


def _largest_admissible(ctx: CycleContext, job: Job) -> Job | None:
    """An elastic job whose full size is blocked by a limit or by the in-quota rule: the job at the
    most replicas in [min_replicas, replicas) that pass the same checks, or None when even its
    minimum does not (the reason recorded is then the full size's). The checks only get harder with
    more replicas, so a binary search finds it."""
    low, high = job.min_replicas or job.replicas, job.replicas - 1
    if low > high or ctx.admission_block(_sized(job, low)) is not None:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if ctx.admission_block(_sized(job, mid)) is None:
            low = mid
        else:
            high = mid - 1
    return _sized(job, low)


def _place_smaller(
    ctx: CycleContext, job: Job, failed: dict[ShapeKey, Unplaceable]
) -> tuple[GangRequest, GangPlacement] | None:
    """An elastic job that did not fit at `job.replicas`: the most replicas down to its minimum that
    fit (binary search over placement calls; fewer replicas never fit worse). None, with the reason
    of its minimum size recorded, when even that does not fit."""
    low = job.min_replicas or job.replicas
    high = job.replicas - 1
    if low > high:
        return None
    best = _place(ctx, _sized(job, low), failed)
    if best is None:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        placed = _place(ctx, _sized(job, mid), failed)
        if placed is None:
            high = mid - 1
        else:
            low, best = mid, placed
    ctx.reasons.pop(job.id, None)
    return best
