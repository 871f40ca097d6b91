"""Reclaim: take GPUs back from queues above their fair share for a queue below its own.

Who calls it: `cycle.run_cycle`, after allocate, for the gangs allocate could not place. The rules
(Run:ai / KAI, `docs/semantics.md`), checked at every level of the queue tree where the
reclaimer's path and the victim's path differ (the split level and every level below it):

- the reclaimer, with the job added, stays within its fair share — or within its quota;
- victims are preemptible running jobs, older than the minimum runtime, of queues above their fair
  share (above their quota is enough when the reclaimer is still within its quota);
- in-quota work is never reclaimed: a victim queue never drops below its deserved (in-quota) share;
- no ping-pong: unless the reclaimer is still within quota, it must not end up more saturated
  (allocated / fair share) than any queue it took from;
- shrink before evict: replicas that elastic victims hold above their minimum are tried first, each
  judged by the rules above as a victim of its own (`CycleContext.evict_for`); an elastic job that
  waits asks for its minimum here;
- victims are chosen topology-aware (`victims.choose_victims`): only a set whose freed GPUs give the
  gang a valid placement is evicted, and the gang is bound in the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions.context import (
    POLICY_BLOCKS,
    Code,
    CycleContext,
    ShapeKey,
)
from leitstand.scheduler.fairshare import saturation
from leitstand.scheduler.model import EvictionKind, Job, PendingReason, QueueName, RunningJob, Why
from leitstand.scheduler.placement import GangRequest
from leitstand.scheduler.statement import gpus

__all__ = ["run"]

_EPS = 1e-6

Pairs = tuple[tuple[QueueName, QueueName], ...]


def run(ctx: CycleContext) -> None:
    acc = ctx.stmt.accounting
    share = ctx.shares.share_milli
    deserved = ctx.shares.deserved_milli

    def candidate(held: RunningJob) -> bool:
        return held.job.is_preemptible and acc.knows(held.job.queue) and ctx.is_victim_age(held)

    if not ctx.shares.by_model and not _victim_queue_possible(ctx):
        # Early exit: no pending job has a queue to take from, so the loop below would evict nothing
        # and only refresh admission reasons (when there are candidates at all); do just that.
        if any(candidate(held) for held in ctx.stmt.running.values()):
            _refresh_reasons(ctx)
        return
    pool = ctx.victim_pool()
    if not len(pool):
        return
    pairs_cache: dict[tuple[QueueName, QueueName], Pairs] = {}
    failed: set[tuple[QueueName, ShapeKey]] = set()
    victims_cache: dict[tuple[QueueName, str | None, tuple[bool, ...]], tuple[int, NDArray[np.bool_] | None]] = {}

    def pairs(reclaimer: QueueName, victim: QueueName) -> Pairs:
        key = (reclaimer, victim)
        if key not in pairs_cache:
            p, v = acc.paths[reclaimer], acc.paths[victim]
            split = 0
            while split < min(len(p), len(v)) and p[split] == v[split]:
                split += 1
            pairs_cache[key] = tuple(zip(p[split:], v[split:], strict=False))
        return pairs_cache[key]

    # Victim queues, vectorised: per reclaimer, one row per (victim queue, level pair) below the
    # split; a victim queue qualifies when every one of its rows holds (see the loop below).
    names = list(ctx.tree.order)
    queue_id = {name: i for i, name in enumerate(names)}
    n_codes = len(pool.queue_index)
    level_rows: dict[QueueName, tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]] = {}
    over_cache: dict[str | None, tuple[int, NDArray[np.bool_], NDArray[np.bool_]]] = {}

    # Each victim code's path from the top as queue ids (padded with -1), built once per action.
    depth = max(len(path) for path in acc.paths.values())
    victim_paths = np.full((n_codes, depth), -1, dtype=np.int64)
    victim_depth = np.zeros(n_codes, dtype=np.int64)
    for queue, code in pool.queue_index.items():
        path = acc.paths[queue]
        victim_paths[code, : len(path)] = [queue_id[name] for name in path]
        victim_depth[code] = len(path)
    position = np.arange(depth)

    def rows_of(
        reclaimer: QueueName,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
        """(victim code, position of q on the reclaimer's path, id of v) per level pair below the
        split, and which victim codes have levels at all (not the reclaimer's own leaf); the same
        pairs as `pairs`, for every live victim queue at once."""
        known = level_rows.get(reclaimer)
        if known is None:
            path = acc.paths[reclaimer]
            own = np.full(depth, -2, dtype=np.int64)
            own[: len(path)] = [queue_id[name] for name in path]
            common = np.minimum(victim_depth, len(path))
            same = (victim_paths == own[None, :]) & (position[None, :] < common[:, None])
            split = np.cumprod(same, axis=1).sum(axis=1)
            code, q_pos, v_id = [], [], []
            for k in range(depth):
                at = np.flatnonzero((k >= split) & (k < common))
                code.append(at)
                q_pos.append(np.full(at.size, k, dtype=np.int64))
                v_id.append(victim_paths[at, k])
            known = (np.concatenate(code), np.concatenate(q_pos), np.concatenate(v_id), split < common)
            level_rows[reclaimer] = known
        return known

    def over_flags(
        model: str | None,
        share: Mapping[QueueName, float],
        deserved: Mapping[QueueName, float],
        allocated: Mapping[QueueName, int],
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Per queue of the tree: above its deserved share, above its fair share (this epoch)."""
        known = over_cache.get(model)
        if known is None or known[0] != pool.epoch:
            above_deserved = np.array(
                [n in allocated and allocated[n] > deserved[n] + _EPS for n in names], dtype=np.bool_
            )
            above_share = np.array([n in allocated and allocated[n] > share[n] + _EPS for n in names], dtype=np.bool_)
            known = (pool.epoch, above_deserved, above_share)
            over_cache[model] = known
        return known[1], known[2]

    searches = 0
    for waiting in ctx.work_queue():
        job = ctx.at_minimum(waiting)  # an elastic job asks for its minimum here
        current = ctx.reason_of(job)
        request = _admitted_request(ctx, job, current)
        if request is None:
            continue
        amount = job.gpu_milli_total
        model, share, deserved, allocated = ctx.reclaim_view(job)  # the totals, or the job's GPU model's
        memo = (job.queue, ctx.shape_key(job, request))
        if memo in failed:
            continue

        def in_quota_after(
            q: QueueName,
            amount: int = amount,
            allocated: Mapping[QueueName, int] = allocated,
            deserved: Mapping[QueueName, float] = deserved,
        ) -> bool:
            return allocated[q] + amount <= deserved[q] + _EPS

        # Victim candidates depend on the queue, the amount and the accounting, which changes only
        # when a search commits (the pool's epoch): cached for the epoch.
        # Within an epoch the amount matters only through in_quota_after on the reclaimer's path.
        cache_key = (job.queue, model, tuple([in_quota_after(q) for q in acc.paths[job.queue]]))
        cached = victims_cache.get(cache_key)
        if cached is not None and cached[0] == pool.epoch:
            eligible = cached[1]
        else:
            # Per level of the reclaimer's path: is it in quota with the job? Then a victim's level
            # must be above its deserved share, else above its fair share.
            row_code, q_pos, v_id, has = rows_of(job.queue)
            above_deserved, above_share = over_flags(model, share, deserved, allocated)
            in_quota = np.array(cache_key[2], dtype=np.bool_)
            holds = np.where(in_quota[q_pos], above_deserved[v_id], above_share[v_id])
            qualifies = has & (np.bincount(row_code[~holds], minlength=n_codes) == 0)
            chosen = pool.alive & qualifies[pool.queue_code]
            eligible = chosen if chosen.any() else None
            victims_cache[cache_key] = (pool.epoch, eligible)
        if eligible is None or not eligible.any():
            failed.add(memo)
            continue
        over = _over_fair_share(ctx, job)
        if over is not None:
            # Only said when reclaim was the way out: someone else borrows GPUs this job could use.
            ctx.reasons[job.id] = over
            continue

        def admissible(
            victim: RunningJob,
            taken: Sequence[RunningJob],
            job: Job = job,
            allocated: Mapping[QueueName, int] = allocated,
            deserved: Mapping[QueueName, float] = deserved,
            share: Mapping[QueueName, float] = share,
            in_quota_after: Callable[[QueueName], bool] = in_quota_after,
        ) -> bool:
            # `taken` is already evicted on the statement, so the accounting reflects it.
            for q, v in pairs(job.queue, victim.job.queue):
                after = allocated[v] - victim.gpu_milli_total  # the replicas it holds (or gives up)
                if after < deserved[v] - _EPS:
                    return False  # in-quota work is never reclaimed
                reclaimer_after = allocated[q] + job.gpu_milli_total
                if not in_quota_after(q) and saturation(reclaimer_after, share[q]) > saturation(after, share[v]) + _EPS:
                    return False  # would leave the reclaimer more saturated: ping-pong
            return True

        def why(victim: RunningJob, job: Job = job) -> str:
            return (
                f"reclaimed for job {job.id} of queue {job.queue} (below its fair share); "
                f"queue {victim.job.queue} is above its fair share"
            )

        if searches >= ctx.search_budget:
            # The budget is spent: say so (the cheap checks above still ran, so only jobs a search
            # could have helped get this reason); next cycle they are searched again.
            ctx.budget_cut(job, "reclaim", current)
            continue
        searches += 1
        if not ctx.evict_for(job, request, pool, eligible, EvictionKind.RECLAIM, why, admissible=admissible):
            failed.add(memo)
            if current is not None:
                ctx.wait(
                    job,
                    current.code,
                    f"{current.message}; no preemptible jobs of queues above their fair share "
                    "would free a valid placement",
                )


def _victim_queue_possible(ctx: CycleContext) -> bool:
    """Could any pending job find a victim queue? (If not, reclaim evicts nothing this cycle.)

    A victim queue's levels start at the split level, where its path leaves the reclaimer's; that
    queue is not on the reclaimer's path and must hold more than its deserved share or more than its
    fair share — so more than the smaller of the two. So a job whose path contains every such "over"
    queue has no victim queue. Nothing changes the accounting while no job reclaims, so checking
    once before the loop is exact. O(queues + pending queues × depth).
    """
    acc = ctx.stmt.accounting
    share = ctx.shares.share_milli
    deserved = ctx.shares.deserved_milli
    over = {q for q in ctx.tree.order if acc.allocated_milli[q] > min(deserved[q], share[q]) + _EPS}
    waiting = ctx.queues_waiting()
    return any(not over.issubset(acc.paths[q]) for q in waiting)


def _refresh_reasons(ctx: CycleContext) -> None:
    """What the reclaim loop does to a job it cannot help: record a block that appeared since allocate.

    Only jobs allocate visited before its last bind can have one (nothing was charged after the
    others' visits), and capacity holders, which allocate passes over (`reserve`)."""
    plain = ctx.plain_failed
    # Per (queue, request key, preemptible): whether allocate saw the pair fail (so it has a request)
    # and its admission is sure — all that is read of a rigid job below. Nothing is charged during
    # the refresh, so it is asked once per key.
    passed: dict[tuple[QueueName, tuple[object, ...], bool], bool] = {}

    def passing(job: Job) -> bool:
        key = (job.queue, job.request_key, job.is_preemptible)
        sure = passed.get(key)
        if sure is None:
            known = plain is not None and (job.queue, job.request_key) in plain
            sure = passed[key] = known and ctx.surely_admitted(job)
        return sure

    jobs: Iterable[Job]
    visited = ctx.visited_before_last_bind
    if visited is not None and not ctx.holders:
        bound = ctx.bound
        jobs = [job for job in visited.walked if job.id not in bound]
        for head, fifo in visited.by_fifo():  # a FIFO's jobs share the key: one look at its first job
            if head.min_replicas is None and passing(head):
                continue
            jobs.extend(job for job in fifo() if job.id not in bound)
    else:
        jobs = ctx.still_pending()
    for job in jobs:
        if job.min_replicas is None:
            if passing(job):
                continue  # no block can have appeared, and its request is known: nothing to record
        else:  # an elastic job is checked at its minimum size
            job = ctx.at_minimum(job)
        # A pair allocate saw fail has a request: only a block can be new (no lookup needed).
        known = plain is not None and (job.queue, job.request_key) in plain
        _admitted_request(ctx, job, ctx.reason_of(job), has_request=known)


def _admitted_request(
    ctx: CycleContext, job: Job, current: Why | None, *, has_request: bool = False
) -> GangRequest | None:
    """The job's request if reclaim may act for it; else None, with a new block or request reason
    recorded (a reason in POLICY_BLOCKS is kept as it is). `has_request`: the caller knows the job
    has a request and does not want it (None is returned without looking it up)."""
    if current is not None and current.code in POLICY_BLOCKS:
        return None
    block = ctx.admission_block(job)
    if block is not None:
        ctx.reasons[job.id] = block
        return None
    if has_request:
        return None
    request = ctx.request(job)
    if isinstance(request, PendingReason):
        ctx.reasons[job.id] = request
        return None
    return request


def _over_fair_share(ctx: CycleContext, job: Job) -> PendingReason | None:
    """Why this job may not reclaim: its queue would go above both its fair share and its quota."""
    acc = ctx.stmt.accounting
    amount = job.gpu_milli_total
    _, share, deserved, allocated = ctx.reclaim_view(job)
    for q in acc.paths[job.queue]:
        after = allocated[q] + amount
        if after > share[q] + _EPS and after > deserved[q] + _EPS:
            return PendingReason(
                job.id,
                Code.OVER_FAIR_SHARE,
                f"waiting for free GPUs: with this job queue {q} would hold {gpus(after)} GPUs, above "
                f"its fair share of {gpus(share[q])}; only queues within their fair "
                "share take GPUs back from others",
            )
    return None
