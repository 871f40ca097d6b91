"""Preempt: inside one leaf queue, stop lower-priority preemptible jobs so a higher-priority one runs.

Who calls it: `cycle.run_cycle`, after reclaim. Rules:
- victims: preemptible running jobs of the *same* leaf queue with strictly lower priority, older
  than the minimum runtime, not started or moved in this cycle;
- the queue's limit holds at every level once the victims are gone and the job runs (so a queue
  at its limit can still swap a low-priority job for a high-priority one);
- preemption never grows a queue beyond its fair share (it may stay where it is);
- shrink before evict: replicas that elastic victims hold above their minimum are tried first
  (`CycleContext.evict_for`); an elastic job that waits asks for its minimum here;
- victims are chosen topology-aware (`victims.choose_victims`) and the job is bound in the same plan.
A non-preemptible job over its queue's quota is not helped by stopping preemptible jobs, so it is
left with its `NonPreemptibleOverQuota` reason. A job that never fits (`NeverFits`, see
`placement.never_fits`) gets no victim search; one blocked by its queue's limit is checked here,
since allocate did not try to place it, and then waits with `NeverFits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions.context import (
    POLICY_BLOCKS,
    Code,
    CycleContext,
    ShapeKey,
)
from leitstand.scheduler.model import EvictionKind, Job, PendingReason, QueueName, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, never_fits

__all__ = ["run"]

_EPS = 1e-6
_CURABLE = frozenset({Code.QUEUE_AT_LIMIT})
"""Policy blocks that evicting jobs of the same queue can cure."""


def run(ctx: CycleContext) -> None:
    acc = ctx.stmt.accounting
    if not _outranked_victim_exists(ctx):
        return  # Early exit: no pending job has a lower-priority job of its own queue to stop.
    pool = ctx.victim_pool()
    if not len(pool):
        return
    failed: set[tuple[QueueName, int, ShapeKey]] = set()
    eligible_cache: dict[tuple[QueueName, int], tuple[int, NDArray[np.bool_] | None]] = {}

    searches = 0
    for waiting in ctx.work_queue():
        job = ctx.at_minimum(waiting)  # an elastic job asks for its minimum here
        current = ctx.reason_of(job)
        if current is not None and current.code in POLICY_BLOCKS and current.code not in _CURABLE:
            continue
        # The candidates of (queue, priority) change only when a search commits (the pool's epoch).
        cached = eligible_cache.get((job.queue, job.priority))
        if cached is not None and cached[0] == pool.epoch:
            eligible = cached[1]
        else:
            mask = pool.of_queue(job.queue) & (pool.priority < job.priority)
            eligible = mask if mask.any() else None
            eligible_cache[(job.queue, job.priority)] = (pool.epoch, eligible)
        if eligible is None:
            continue
        request = ctx.request(job)
        if isinstance(request, PendingReason):
            ctx.reasons[job.id] = request
            continue
        if current is not None and current.code in _CURABLE:
            # Allocate never placed this job (its queue was at its limit), so nobody has asked yet
            # whether it fits at all; a gang no empty cluster could hold gets no victim search.
            never = never_fits(ctx.stmt.state, request)  # memoised per shape and mask
            if never is not None:
                ctx.wait(job, never.code, never.message)
                continue
        memo = (job.queue, job.priority, ctx.shape_key(job, request))
        if memo in failed:
            continue

        before = acc.allocated_milli[job.queue]

        def accept(
            taken: Sequence[RunningJob],
            _request: GangRequest,
            _placement: GangPlacement,
            job: Job = job,
            before: int = before,
        ) -> bool:
            # `taken` is already evicted on the statement: the accounting shows the queue without them.
            if ctx.admission_block(job) is not None:
                return False
            after = acc.allocated_milli[job.queue] + job.gpu_milli_total
            return after <= max(before, ctx.shares.share_milli[job.queue]) + _EPS

        def why(victim: RunningJob, job: Job = job) -> str:
            return f"preempted by job {job.id} (priority {job.priority} > {victim.job.priority}) in queue {job.queue}"

        if searches >= ctx.search_budget:
            ctx.budget_cut(job, "preempt", current)
            continue
        searches += 1
        if not ctx.evict_for(job, request, pool, eligible, EvictionKind.PREEMPT, why, accept=accept):
            failed.add(memo)


def _outranked_victim_exists(ctx: CycleContext) -> bool:
    """Does some pending job outrank a preemptible running job of its own leaf queue?

    If not, every job's `eligible` set below is empty and preempt changes nothing (not even a
    reason), so the victim pool need not be built. Reads the priorities the snapshot's preemptible
    jobs run at per queue (`CycleContext.running_priorities`): jobs bound in this cycle are no
    victims in it, and a job reclaim evicted only makes the answer yes where the full pass finds
    nothing to do. O(queues + the jobs bound this cycle at the head of each queue).
    """
    bound = ctx.bound
    for queue, jobs in ctx.pending_by_queue.items():
        running = ctx.running_priorities.get(queue)
        if not running:
            continue
        top = next((job.priority for job in jobs if job.id not in bound), None)  # jobs are in job order
        if top is not None and min(running) < top:
            return True
    return False
