"""Allocate: place pending gangs on free resources, in the order of work. No evictions.

Who calls it: `cycle.run_cycle`, first action. Per job, in order: cheap admission checks (limit at
every level, non-preemptible within quota), then `place_gang` on the working state, then a bind.
Failed shapes are remembered for the rest of the action: the state only fills up while allocate
runs, so a shape that did not fit once will not fit later (identical gangs cost one placement call).
Where requests are plain (no per-model quotas, no held nodes), a job whose queue and request fields
(`Job.request_key`) match one that failed gets that failure at once, without its request being
looked up: most of a deep backlog waits behind a few shapes, and this visit is what it costs.
A queue whose limit has no headroom left has the rest of its jobs marked at once. Once only one
queue has jobs left, its rest is gone through by FIFO of equal jobs instead of job by job, with the
same decisions (`_lone_queue`: a failed FIFO's jobs wait with its failure, no entry per job).
When queues set per-GPU-model quotas, a job that names no single model is tried per model option
in turn (`CycleContext.model_choices`); the first that fits is the model it is charged to.

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

import heapq
from dataclasses import replace
from operator import attrgetter

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions import reserve
from leitstand.scheduler.actions.context import Code, CycleContext, ShapeKey, Visited
from leitstand.scheduler.actions.shares import ModelAccounting
from leitstand.scheduler.model import Job, PendingReason, QueueName
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, place_gang

__all__ = ["run"]


def run(ctx: CycleContext) -> None:
    reserve.run(ctx)  # holds for starving gangs first (returns at once unless reserve_after_seconds is set)
    walk = _Walk(ctx)
    same, sure, reasons, holders, visited = walk.same, walk.sure, ctx.reasons, ctx.holders, walk.visited
    work = walk.work
    lone = same is not None and not holders and _LONE_QUEUE  # see `_lone_queue`
    limited = ctx.stmt.accounting.limited
    for job in work:
        if lone and not limited[job.queue]:
            rest = work.lone_rest(job.queue)
            if rest is not None:
                _lone_queue(walk, job.queue, rest)
                break
        visited.append(job)
        if walk.budget <= 0:
            ctx.wait(job, Code.CYCLE_BUDGET, _BUDGET_MESSAGE)
            continue
        walk.budget -= 1
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
        if walk.visit(job):
            walk.last_bind = len(visited)
    # Jobs visited after the last bind saw the accounting every later action starts from: their
    # admission was checked against it already, so reclaim's reason refresh passes over them.
    lone_visit = walk.lone
    ctx.visited_before_last_bind = lone_visit if lone_visit is not None else Visited(walked=visited[: walk.last_bind])


_LONE_QUEUE = True
"""Go through a lone queue's jobs by fifo key (`_lone_queue`); False: job by job (the tests compare)."""

_BUDGET_MESSAGE = "not considered this cycle (max_jobs_per_cycle reached); next cycle"

_Same = dict[tuple[QueueName, tuple[object, ...]], Unplaceable]
"""Failures by (queue, `Job.request_key`), for plain requests only (see `run`)."""


class _Walk:
    """What allocate keeps while it goes through the order of work."""

    def __init__(self, ctx: CycleContext) -> None:
        self.ctx = ctx
        self.failed: dict[ShapeKey, Unplaceable] = {}
        # Plain requests: a job's request follows from its queue and `request_key` alone, so equal
        # pairs fail alike (a finer key than `shape_key`, known before the request is looked up).
        acc = ctx.stmt.accounting
        plain = not isinstance(acc, ModelAccounting) and ctx.held_nodes is None
        self.same: _Same | None = {} if plain else None
        ctx.plain_failed = self.same  # `_place` records there; later actions read it
        # Pairs of `same` whose admission was found sure since the last bind, with the job's
        # preemptibility (the rest of what `surely_admitted` reads follows from the queue and the
        # request key): only a bind charges the accounting here, so each bind clears it.
        self.sure: dict[tuple[QueueName, tuple[object, ...], bool], Unplaceable] = {}
        self.budget = ctx.config.max_jobs_per_cycle
        self.work = ctx.work_queue()
        self.visited: list[Job] = []  # in the order of work; the part before the last bind may need a re-check
        self.last_bind = 0
        self.lone: Visited | None = None
        """Set when the last bind was made by `_lone_queue`: the jobs visited before it."""

    def visit(self, job: Job) -> bool:
        """The full visit of one job (counted against the budget, and not a holder's or a sure
        failure's short cut): admission checks, placement, bind. True when it was bound."""
        ctx = self.ctx
        if job.id in ctx.holders:
            return False  # capacity is held for it (`reserve`): it keeps its `Reserved` reason
        block = ctx.admission_block(job)
        size = job  # the size tried: the job itself, or an elastic job at the most replicas admissible
        if block is not None and job.is_elastic:
            smaller = _largest_admissible(ctx, job)
            if smaller is not None:
                block, size = None, smaller
        if block is not None:
            ctx.reasons[job.id] = block
            if block.code == Code.QUEUE_AT_LIMIT and ctx.stmt.accounting.limit_block(job.queue, 1) is not None:
                # No headroom at all: nothing else in this queue can start by allocation.
                for rest in self.work.drain(job.queue):
                    self.visited.append(rest)
                    ctx.reasons[rest.id] = ctx.admission_block(rest) or PendingReason(
                        rest.id, block.code, block.message
                    )
            return False
        known = None if self.same is None else self.same.get((size.queue, size.request_key))
        if known is not None:
            ctx.reasons[job.id] = known
            placed = None
        else:
            placed = _place(ctx, size, self.failed)
        if placed is None and size.is_elastic:
            placed = _place_smaller(ctx, size, self.failed)
        if placed is None:
            return False
        request, result = placed
        ctx.stmt.bind(job, request, result)  # an elastic job with `request.replicas` of its replicas
        self.sure.clear()
        ctx.bound.add(job.id)
        ctx.reasons.pop(job.id, None)
        return True


_FIFO_KEY = attrgetter("fifo_key")


def _lone_queue(walk: _Walk, queue: QueueName, rest: list[Job]) -> None:
    """The rest of the order when one queue is left (`WorkQueue.lone_rest`: its jobs in job order,
    no other queue to interleave), with plain requests, no holds and no limit on the queue's path.

    Decides exactly what the job-by-job walk in `run` decides, without visiting the jobs that wait
    behind a failed request. The jobs are grouped by `Job.fifo_key` (one FIFO per key, in job
    order, `_fifos`); the heads of the FIFOs are merged by position. When a head is a rigid job whose pair
    already failed and whose admission is sure (`surely_admitted`), the walk would give it and every
    later job of its FIFO that failure without a look — for a preemptible job whatever is bound
    meanwhile (with no limit on the path, its admission is sure for good), for a non-preemptible one
    as long as its queue's in-quota room holds its GPUs (which only shrinks as jobs bind: each bind
    checks the suspended FIFO that asks most first) — so the FIFO is suspended, and its jobs are
    left without an entry in `ctx.reasons`: a rigid job without one waits with its pair's failure
    (`CycleContext.reason_of`; `PendingReasons` reads it into the plan), so a suspended FIFO costs
    nothing per job. Every other head gets the walk's full visit (`_Walk.visit`).
    The first failure of a pair is kept for the whole action (`_place`), so a suspended FIFO's
    failure is what the walk would have read. Jobs past the cycle's budget wait as in the walk.
    Cost: O(jobs) in C (grouping) plus O(FIFOs · log FIFOs) and the full visits in Python; the walk
    costs a Python visit per job."""
    ctx, same, acc = walk.ctx, walk.same, walk.ctx.stmt.accounting
    assert same is not None
    cut = rest[walk.budget :] if walk.budget < len(rest) else []
    if cut:
        rest = rest[: walk.budget]
    walk.budget -= len(rest)
    fifos = _fifos(rest)
    heads = [(int(f[0]), g, 0) for g, f in enumerate(fifos)]
    heapq.heapify(heads)
    # Suspended non-preemptible FIFOs, most GPUs first: (-GPUs, FIFO).
    held: list[tuple[int, int]] = []
    last_bind = -1
    while heads:
        position, fifo, index = heapq.heappop(heads)
        job = rest[position]
        if job.min_replicas is None and (job.queue, job.request_key) in same and ctx.surely_admitted(job):
            # The FIFO's jobs from here on wait with the pair's failure: no entry in `reasons`
            # (`CycleContext.reason_of`, `PendingReasons`), as long as it stays suspended.
            if not job.is_preemptible:
                heapq.heappush(held, (-job.gpu_milli_total, fifo))
            continue  # (a preemptible FIFO for good)
        if walk.visit(job):
            last_bind = position
            while held and acc.in_quota_block(queue, -held[0][0]) is not None:
                lost = heapq.heappop(held)[1]
                at = int(np.searchsorted(fifos[lost], position))  # its first job after this bind
                if at < len(fifos[lost]):
                    heapq.heappush(heads, (int(fifos[lost][at]), lost, at))
        index += 1
        if index < len(fifos[fifo]):
            heapq.heappush(heads, (int(fifos[fifo][index]), fifo, index))
    if last_bind >= 0:  # (the jobs walked before all precede the last bind then)
        walk.lone = Visited(walked=walk.visited, rest=rest, fifos=fifos, end=last_bind + 1)
    for job in cut:  # (never before the last bind: not listed as visited)
        ctx.wait(job, Code.CYCLE_BUDGET, _BUDGET_MESSAGE)


def _fifos(rest: list[Job]) -> list[NDArray[np.intp]]:
    """Per FIFO of `rest` (equal `Job.fifo_key`), the positions of its jobs in ascending order; the
    FIFOs in the order of their first jobs. One stable sort of the keys: a radix sort when they span
    fewer than 2^16 numbers, as a factory's few hundred shapes do."""
    if not rest:
        return []
    keys = np.fromiter(map(_FIFO_KEY, rest), dtype=np.int64, count=len(rest))
    low = int(keys.min())
    if int(keys.max()) - low < 1 << 16:
        keys = (keys - low).astype(np.uint16)  # (numpy sorts 16-bit integers stably by radix)
    order = np.argsort(keys, kind="stable")  # positions grouped by key, in job order inside each
    ranked = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    bounds = [*starts.tolist(), len(rest)]
    return [order[bounds[k] : bounds[k + 1]] for k in np.argsort(order[starts]).tolist()]


def _place(
    ctx: CycleContext, job: Job, failed: dict[ShapeKey, Unplaceable]
) -> tuple[GangRequest, GangPlacement] | None:
    """Where `job` fits on the working state, or None with its reason recorded (and, with plain
    requests, its placement failure in `ctx.plain_failed`)."""
    placed = _place_any(ctx, job, failed)
    if isinstance(placed, Unplaceable):
        if ctx.plain_failed is not None:
            # The first failure of a pair stays (capacity only shrinks while allocate runs): a job
            # that takes its pair's failure gets the same object whenever it is visited.
            ctx.plain_failed.setdefault((job.queue, job.request_key), placed)
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
