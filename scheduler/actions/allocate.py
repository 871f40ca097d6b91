"""Allocate: place pending gangs on free resources, in the order of work. No evictions.

Who calls it: `cycle.run_cycle`, first action. Per job, in order: cheap admission checks (limit at
every level, non-preemptible within quota), then `place_gang` on the working state, then a bind.
Failed shapes are remembered for the rest of the action: the state only fills up while allocate
runs, so a shape that did not fit once will not fit later (identical gangs cost one placement call).
A queue whose limit has no headroom left has the rest of its jobs marked at once. When queues set
per-GPU-model quotas, a job that names no single model is tried per model option in turn
(`CycleContext.model_choices`); the first that fits is the model it is charged to.

Every job that stays pending gets a reason here; later actions may overwrite it with a better one.
It first runs `reserve` (holds for starving gangs; part of the allocate phase); gangs that capacity
is held for are skipped and keep `Reserved`; a
non-preemptible job that fails only because held nodes are left out of its request waits with
`HeldForGang`.
"""

from __future__ import annotations

from leitstand.scheduler.actions import reserve
from leitstand.scheduler.actions.context import Code, CycleContext, ShapeKey
from leitstand.scheduler.model import Job, PendingReason
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, place_gang

__all__ = ["run"]


def run(ctx: CycleContext) -> None:
    reserve.run(ctx)  # holds for starving gangs first (returns at once unless reserve_after_seconds is set)
    failed: dict[ShapeKey, Unplaceable] = {}
    acc = ctx.stmt.accounting
    budget = ctx.config.max_jobs_per_cycle
    work = ctx.work_queue()
    for job in work:
        if budget <= 0:
            ctx.wait(job, Code.CYCLE_BUDGET, "not considered this cycle (max_jobs_per_cycle reached); next cycle")
            continue
        budget -= 1
        if job.id in ctx.holders:
            continue  # capacity is held for it (`reserve`): it keeps its `Reserved` reason
        block = ctx.admission_block(job)
        if block is not None:
            ctx.reasons[job.id] = block
            if block.code == Code.QUEUE_AT_LIMIT and acc.limit_block(job.queue, 1) is not None:
                # No headroom at all: nothing else in this queue can start by allocation.
                for rest in work.drain(job.queue):
                    ctx.reasons[rest.id] = ctx.admission_block(rest) or PendingReason(
                        rest.id, block.code, block.message
                    )
            continue
        placed = _place(ctx, job, failed)
        if placed is None:
            continue
        request, result = placed
        ctx.stmt.bind(job, request, result)
        ctx.bound.add(job.id)
        ctx.reasons.pop(job.id, None)


def _place(
    ctx: CycleContext, job: Job, failed: dict[ShapeKey, Unplaceable]
) -> tuple[GangRequest, GangPlacement] | None:
    """Where `job` fits on the working state, or None with its reason recorded."""
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
            ctx.wait(job, known.code, known.message)
            continue
        result = place_gang(ctx.stmt.state, request, ctx.policy)
        if isinstance(result, Unplaceable):
            if job.id in ctx.unheld:  # non-preemptible, kept off nodes held for a starving gang
                why = reserve.held_reason(ctx, job, PendingReason(job.id, result.code, result.message))
                result = Unplaceable(why.code, why.message)
            failed[shape] = result
            ctx.wait(job, result.code, result.message)
            continue
        assert isinstance(result, GangPlacement)
        if model is not None:
            ctx.resolve(job, model, request)
        return request, result
    return None
