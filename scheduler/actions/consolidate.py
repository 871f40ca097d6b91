"""Consolidate: move preemptible jobs elsewhere so that a waiting gang fits, losing no one.

Who calls it: `cycle.run_cycle`, last action, when `SchedulerConfig.consolidation` is on. For a
gang that still waits for room (not for a policy reason such as a limit), it looks for at most
`max_consolidation_moves` preemptible running jobs (older than the minimum runtime, not started or
moved in this cycle, any queue) whose eviction gives the gang a valid placement *and* after which
every moved job is placed again somewhere else. Only then are the moves made: each moved job
appears in the plan as an eviction of kind CONSOLIDATE and a new binding. Queue accounting is
unchanged for the moved jobs, so no quota or fair-share rule is touched; the waiting gang passes the
same admission checks as in allocate. Cheapest moves first: fewest GPUs, youngest, lowest priority.

A shape for which no moves were found is not searched again for
`SchedulerConfig.consolidation_retry_seconds` (30 s by default; the times are kept on the
`ClusterState` between cycles): almost every search fails, the same waiting shapes come back cycle
after cycle, and each search costs placement calls in up to 16 domains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from leitstand.scheduler.actions.context import CycleContext, ShapeKey
from leitstand.scheduler.model import EvictionKind, Job, PendingReason, QueueName, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, place_gang
from leitstand.scheduler.victims import VictimPool, choose_victims, move_cost

__all__ = ["run"]

RETRY_CACHE_KEY = "consolidate"
"""Key of the retry times in `ClusterState.cycle_cache` (`SchedulerConfig.consolidation_retry_seconds`)."""
_RETRY_PRUNE = 4096
"""Past this many shapes, those already due are dropped at the start of a cycle."""

MAX_ATTEMPTS = 32
"""Waiting gangs tried per cycle; consolidation is a search, bounded so a deep backlog stays cheap."""


def run(ctx: CycleContext) -> None:
    if not ctx.config.consolidation or ctx.config.max_consolidation_moves <= 0:
        return
    stmt = ctx.stmt
    movable: VictimPool | None = None  # built at the first search (before any move): cycles that never search skip it
    failed: set[ShapeKey] = set()
    # With plain requests (`CycleContext.plain_failed`), the (queue, `Job.request_key`) pairs of
    # failed shapes: a job with such a pair is passed over without its checks or its request (it
    # would be passed over after them, and looking up a plain request changes nothing).
    hopeless: set[tuple[QueueName, tuple[object, ...]]] | None = None if ctx.plain_failed is None else set()
    attempts = 0
    retry = ctx.config.consolidation_retry_seconds
    now = stmt.now
    # Shapes that found no moves in an earlier cycle → when to search them again (kept on the state).
    due: dict[ShapeKey, float] | None = stmt.state.cycle_cache.setdefault(RETRY_CACHE_KEY, {}) if retry > 0 else None
    if due is not None and len(due) > _RETRY_PRUNE:
        for shape in [s for s, at in due.items() if at <= now]:
            del due[shape]
    for waiting in ctx.work_queue():
        job = ctx.at_minimum(waiting)  # an elastic job asks for its minimum here
        pair = (job.queue, job.request_key)
        if hopeless is not None and pair in hopeless:
            continue
        request = ctx.waiting_for_room(job)
        if request is None:
            continue
        shape = ctx.shape_key(job, request)
        if shape in failed:
            if hopeless is not None:
                hopeless.add(pair)
            continue
        if attempts >= MAX_ATTEMPTS:
            break
        attempts += 1  # a shape not due yet takes its turn all the same: the search stays as deep
        at = None if due is None else due.get(shape)
        if at is not None and now < at <= now + retry:  # (an `at` further ahead: the clock went back)
            ctx.count("consolidate_not_due")
            failed.add(shape)
            if hopeless is not None:
                hopeless.add(pair)
            continue
        if movable is None:
            candidates, slots = ctx.victim_candidates()
            movable = VictimPool(stmt, candidates, key=move_cost, kept=stmt.state.cycle_cache, slots=slots)
            if not len(movable):
                return

        def replace_moved(moved: Sequence[RunningJob]) -> bool:
            """Place every moved job again (on the statement); False if one has no home."""
            for m in moved:
                # An elastic job is moved at the size it runs with (it grows later, not by a move).
                again = ctx.request(m.job if m.job.min_replicas is None else replace(m.job, replicas=len(m.placements)))
                if isinstance(again, PendingReason):
                    return False
                home = place_gang(stmt.state, again, ctx.policy)
                if not isinstance(home, GangPlacement):
                    return False
                stmt.bind(m.job, again, home)
            return True

        def accept(moved: Sequence[RunningJob], req: GangRequest, placement: GangPlacement, job: Job = job) -> bool:
            mark = stmt.checkpoint()
            try:
                stmt.bind(job, req, placement)
                return replace_moved(moved)
            finally:
                stmt.rollback(mark)

        tally: dict[str, int] = {}
        choice = choose_victims(
            stmt,
            request,
            movable,
            ctx.policy,
            max_victims=ctx.config.max_consolidation_moves,
            for_job=job.id,
            accept=accept,
            rehome=True,
            tally=tally,
        )
        ctx.count("consolidate_searches")
        ctx.count("consolidate_domains", tally.get("domains", 0))
        ctx.count("consolidate_placements", tally.get("placements", 0))
        ctx.count("consolidate_domains_skipped", tally.get("domains_skipped", 0))
        ctx.count("consolidate_domains_refuted", tally.get("domains_refuted", 0))
        if choice is None:
            ctx.count("consolidate_search_failures")
            failed.add(shape)
            if due is not None:
                due[shape] = now + retry
            if hopeless is not None:
                hopeless.add(pair)
            continue
        mark = stmt.checkpoint()
        for m in choice.victims:
            stmt.evict(
                m, EvictionKind.CONSOLIDATE, job.id, f"moved to make room for job {job.id}; re-placed in this cycle"
            )
        stmt.bind(job, choice.request, choice.placement)
        if not replace_moved(choice.victims):  # cannot happen: same state as accept() saw
            stmt.rollback(mark)
            failed.add(shape)
            if hopeless is not None:
                hopeless.add(pair)
            continue
        if due is not None:
            due.pop(shape, None)
        movable.changed(stmt.nodes_since(mark))
        ctx.bound.add(job.id)
        ctx.bound.update(m.job.id for m in choice.victims)
        ctx.reasons.pop(job.id, None)
        for m in choice.victims:
            movable.remove(m.job.id)
