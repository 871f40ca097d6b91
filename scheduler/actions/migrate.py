"""Migrate: repack the movable jobs of a few nodes with stranded GPU capacity, so waiting jobs fit.

Who calls it: `cycle.run_cycle`, after consolidate (and before grow), when
`SchedulerConfig.migration` is on. Consolidate moves jobs for *one* waiting gang at a time and
rarely finds a move set on a cluster fragmented everywhere by small shares (openb: 1-GPU and
large-slice jobs wait while free capacity is spread as slivers over thousands of GPUs). This action
works the other way round: it repacks the jobs of a few nodes afresh and lets waiting jobs fill the
room that frees, fragmentation repair across many waiting jobs at once.

One try, at most `SchedulerConfig.max_migration_tries` per cycle:

1. Take the next `SchedulerConfig.migration_nodes_per_try` candidate nodes: schedulable, not held
   for a starving gang, some GPU capacity free and some used, holding jobs that may move —
   preemptible, past the minimum runtime and not older than `migration_max_age_seconds`, not bound,
   moved or resized in this cycle, on one node, not elastic (at most `MAX_MOVES_PER_TRY` per node,
   smallest first). Jobs that may not move stay. All free capacity is stranded at this point
   (allocate placed every waiting job that fit), so nodes with the most free GPU milli come first. A
   set on which no waiting job would fit even with all its movable jobs gone is skipped without a
   try (`_may_fit`).
2. Evict the movable jobs of the set (kind CONSOLIDATE) and place each again, largest first, with
   the cycle's policy wherever its request allows (the set included: packed afresh, the jobs often
   need fewer GPUs; or onto slivers elsewhere). A job that finds no place may stay where it was if
   that is still free; otherwise the try is rolled back.
3. Start waiting jobs in the room left on the set, in the order of work (the `WorkQueue` order
   allocate walks, the first `MAX_WAITING` jobs), each after the same admission checks as allocate
   (`CycleContext.admission_block`: limits at every level, non-preemptible within quota) and with
   its own request (`CycleContext.request`: node pools, reservations, labels).
4. Keep the try only if every moved job has a home and waiting jobs with GPUs started, i.e.
   allocated GPU capacity rose (the moved jobs hold what they held; CPU-only jobs started alone do
   not count); else roll back (`Statement.checkpoint` / `rollback`).

Moves appear in the plan as consolidate's do: an eviction of kind CONSOLIDATE (for the first job
started in the room) and a new binding of the same job; a job placed back exactly where it was is
not a move and is left alone. Queue accounting is unchanged for the moved jobs. What must not happen
here: evicting a job that is not placed again in the same plan, or moving a job twice in one cycle.

Cost: one pass over the running jobs to find the candidates, vectorised fit checks of the waiting
jobs against the set (no placement call for a job that cannot fit there), and one placement call
per moved or started job. It returns at once when no node has free and used GPU capacity or no job
waits for room.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions.context import CycleContext, ShapeKey
from leitstand.scheduler.model import GPU_MILLI, EvictionKind, Job, JobId, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, place_gang, replica_placements

__all__ = ["run"]

MAX_WAITING = 2048
"""Waiting jobs considered per cycle, from the head of the order of work: a deep backlog stays cheap,
and the head is who should get the freed room first (8,192 changed nothing on openb)."""

LOOK_FACTOR = 4
"""Node sets examined per cycle, as a multiple of `max_migration_tries` (a set that cannot admit
anyone even with its movable jobs gone is skipped without a try, but still costs a check)."""

MAX_MOVES_PER_TRY = 16
"""Jobs moved off one node in a try at most (its smallest movable ones; the rest stay)."""


@dataclass(slots=True)
class _Waiting:
    """The waiting jobs a try may admit, as arrays for vectorised fit checks against one node."""

    jobs: list[Job]
    requests: list[GangRequest]
    cpu_milli: NDArray[np.int64]
    memory_mib: NDArray[np.int64]
    gpus: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    mask_row: NDArray[np.int64]
    """Row of `masks` holding the job's node mask (equal masks share a row)."""
    masks: NDArray[np.bool_]
    """(distinct masks, nodes)."""

    def fits(
        self, gpu_free_milli: NDArray[np.int32], cpu_free_milli: int, memory_free_mib: int, node: int
    ) -> NDArray[np.bool_]:
        """Which waiting jobs could put one replica on `node` if it had these free resources."""
        free = np.sort(gpu_free_milli)[::-1]  # k-th largest free share per GPU
        width = free.shape[0]
        need = np.clip(self.gpus, 1, width) - 1
        gpu_ok = (self.gpus == 0) | ((self.gpus <= width) & (free[need] >= self.gpu_milli))
        fit: NDArray[np.bool_] = (
            gpu_ok
            & (self.cpu_milli <= cpu_free_milli)
            & (self.memory_mib <= memory_free_mib)
            & self.masks[self.mask_row, node]
        )
        return fit

    def fits_now(self, ctx: CycleContext, node: int) -> NDArray[np.bool_]:
        """`fits` on the node's free resources in the working state."""
        state = ctx.stmt.state
        return self.fits(
            state.gpu_free_milli[node], int(state.cpu_free_milli[node]), int(state.memory_free_mib[node]), node
        )


@dataclass(slots=True)
class _Candidate:
    """A node with stranded GPU capacity and the jobs a try would move off it."""

    node: int
    moves: list[RunningJob]
    free_milli: int
    """Free GPU milli on the node now (stranded: no waiting job fits it)."""
    moved_milli: int


def run(ctx: CycleContext) -> None:
    config = ctx.config
    if not config.migration or config.max_migration_tries <= 0:
        return
    state = ctx.stmt.state
    free_milli = state.gpu_free_milli.sum(axis=1, dtype=np.int64)
    used_milli = state.gpu_count.astype(np.int64) * GPU_MILLI - free_milli
    stranded = state.schedulable & (free_milli > 0) & (used_milli > 0)
    if ctx.held_nodes is not None:
        stranded &= ~ctx.held_nodes
    if not stranded.any():
        return
    waiting = _waiting_jobs(ctx)
    if waiting is None:
        return
    candidates = _candidate_nodes(ctx, stranded)
    ctx.count("migrate_candidates", len(candidates))
    heads = deque(candidates)
    stale: set[int] = set()  # nodes an accepted try changed: their job lists are out of date
    tried = looked = 0
    while tried < config.max_migration_tries and looked < LOOK_FACTOR * config.max_migration_tries:
        looked += 1
        chosen: list[_Candidate] = []
        while heads and len(chosen) < config.migration_nodes_per_try:
            candidate = heads.popleft()
            if candidate.node not in stale:
                chosen.append(candidate)
        if not chosen:
            return
        if not _may_fit(ctx, chosen, waiting):
            continue
        tried += 1
        ctx.count("migrate_tries")
        touched = _try(ctx, [c.node for c in chosen], [m for c in chosen for m in c.moves], waiting)
        if touched:
            ctx.count("migrate_accepted")
            stale |= touched


def _waiting_jobs(ctx: CycleContext) -> _Waiting | None:
    """The first `MAX_WAITING` jobs still waiting for room (not for a policy reason), in the order
    of work; None when there are none."""
    jobs: list[Job] = []
    requests: list[GangRequest] = []
    for job in ctx.work_queue():
        if job.min_replicas is not None:
            continue  # elastic jobs start through allocate (at the size that fits) and grow
        request = ctx.waiting_for_room(job)
        if request is None:
            continue
        jobs.append(job)
        requests.append(request)
        if len(jobs) >= MAX_WAITING:
            break
    if not jobs:
        return None
    rows: dict[int, int] = {}
    masks: list[NDArray[np.bool_]] = []
    mask_row = np.empty(len(jobs), dtype=np.int64)
    for i, request in enumerate(requests):
        row = rows.get(id(request.node_mask))
        if row is None:
            row = rows[id(request.node_mask)] = len(masks)
            masks.append(request.node_mask)
        mask_row[i] = row
    return _Waiting(
        jobs=jobs,
        requests=requests,
        cpu_milli=np.fromiter((r.cpu_milli for r in requests), dtype=np.int64, count=len(jobs)),
        memory_mib=np.fromiter((r.memory_mib for r in requests), dtype=np.int64, count=len(jobs)),
        gpus=np.fromiter((r.gpus for r in requests), dtype=np.int64, count=len(jobs)),
        gpu_milli=np.fromiter((r.gpu_milli for r in requests), dtype=np.int64, count=len(jobs)),
        mask_row=mask_row,
        masks=np.stack(masks),
    )


def _candidate_nodes(ctx: CycleContext, stranded: NDArray[np.bool_]) -> list[_Candidate]:
    """Nodes with stranded GPU capacity and jobs that may move, most stranded milli first (fewest
    moved milli on a tie).

    A job may move if it is preemptible, past its minimum runtime (and not past
    `migration_max_age_seconds`), not touched in this cycle, on one node and not elastic; at most
    `MAX_MOVES_PER_TRY` of a node's (smallest first). Jobs that may not move stay where they are."""
    state = ctx.stmt.state
    index = state.node_index
    max_age = ctx.config.migration_max_age_seconds
    born_after = -np.inf if max_age is None else ctx.snapshot.now - max_age
    on_node: dict[int, list[RunningJob]] = {}
    for held in ctx.stmt.running.values():
        if len(held.placements) != 1:
            continue
        node = index[held.placements[0].node]
        if not stranded[node]:
            continue
        job = held.job
        if not job.is_preemptible or job.min_replicas is not None or not ctx.is_victim_age(held):
            continue
        if held.started_at < born_after:  # ran too long to lose it all in a move
            continue
        on_node.setdefault(node, []).append(held)
    free_milli = state.gpu_free_milli.sum(axis=1, dtype=np.int64)
    out: list[_Candidate] = []
    for node, moves in on_node.items():
        moves = sorted(moves, key=lambda h: (h.gpu_milli_total, str(h.job.id)))[:MAX_MOVES_PER_TRY]
        out.append(_Candidate(node, moves, int(free_milli[node]), sum(m.gpu_milli_total for m in moves)))
    out.sort(key=lambda c: (-c.free_milli, c.moved_milli, c.node))
    return out


def _may_fit(ctx: CycleContext, chosen: list[_Candidate], waiting: _Waiting) -> bool:
    """A cheap necessary condition for a try to admit anyone: some waiting job fits one of the nodes
    as it would be with nothing that may move on it (the moved jobs come back, so this is generous)."""
    state = ctx.stmt.state
    for candidate in chosen:
        node = candidate.node
        free = state.gpu_free_milli[node].astype(np.int64)
        cpu = int(state.cpu_free_milli[node])
        memory = int(state.memory_free_mib[node])
        for held in candidate.moves:
            for g in held.placements[0].gpu_indices:
                free[g] += held.job.gpu_milli
            cpu += held.job.cpu_milli
            memory += held.job.memory_mib
        if waiting.fits(free, cpu, memory, node).any():
            return True
    return False


def _try(ctx: CycleContext, chosen: list[int], moved: list[RunningJob], waiting: _Waiting) -> set[int]:
    """Evict `moved` from `chosen`, place them again (largest first, anywhere their request allows,
    the chosen nodes included: packed afresh they often need fewer GPUs), admit waiting jobs into the
    room left on `chosen`; keep it only if every moved job found a home and a waiting job started.

    Pruned before it is kept (`SchedulerConfig.migration_prune_moves` times at most): the moved job
    with the most progress to lose is left where it is and the try redone; the redone try replaces
    it if it starts at least as much GPU milli and loses less. Most tries move more jobs than the
    room they make needs; a job left in place is a restart saved.

    Returns the nodes the kept try changed (empty when it was rolled back)."""
    stmt = ctx.stmt
    mark = stmt.checkpoint()
    outcome = _attempt(ctx, chosen, moved, waiting)
    stmt.rollback(mark)
    if outcome is None:
        return set()
    now = ctx.snapshot.now
    stays: set[JobId] = set()  # left in place by pruning
    asked: set[JobId] = set()
    for _ in range(ctx.config.migration_prune_moves):
        costly = [
            (progress, held.job.id)
            for held, _, _ in outcome.changed
            if held.job.id not in asked and (progress := _progress(now, held)) > 0
        ]
        if not costly:
            break
        _, worst = max(costly)  # the most progress; the larger id on a tie
        asked.add(worst)
        fewer = [held for held in moved if held.job.id not in stays and held.job.id != worst]
        pruned = _attempt(ctx, chosen, fewer, waiting) if fewer else None
        stmt.rollback(mark)
        ctx.count("migrate_prune_tries")
        if pruned is not None and pruned.gained >= outcome.gained and pruned.lost < outcome.lost:
            ctx.count("migrate_pruned")
            stays.add(worst)
            outcome = pruned
    admitted, changed = outcome.admitted, outcome.changed
    # Kept: redo it with the eviction records naming who the room was made for. A job placed again
    # exactly where it was is left alone (no move). Evictions first, then binds: every state on the
    # way holds a subset of the final one, which fitted, so no placement over-commits.
    first = admitted[0][0].id
    for held, _, _ in changed:
        stmt.evict(
            held,
            EvictionKind.CONSOLIDATE,
            first,
            f"moved to free stranded GPU capacity for job {first}; re-placed in this cycle",
        )
    for held, request, home in changed:
        stmt.bind(held.job, request, home)
        ctx.bound.add(held.job.id)
    for job, request, placement in admitted:
        stmt.bind(job, request, placement)
        ctx.bound.add(job.id)
        ctx.reasons.pop(job.id, None)
    return stmt.nodes_since(mark) | set(chosen)


@dataclass(slots=True)
class _Outcome:
    """What a try did, before it is kept or rolled back."""

    changed: list[tuple[RunningJob, GangRequest, GangPlacement]]
    """The moved jobs that really move (one placed again exactly where it was does not)."""
    admitted: list[tuple[Job, GangRequest, GangPlacement]]
    gained: int
    """GPU milli the admitted jobs hold: how much allocated capacity rose."""
    lost: float
    """Progress the really moved jobs have made (milli-GPU seconds; what a restarting move loses)."""


def _attempt(ctx: CycleContext, chosen: list[int], moved: list[RunningJob], waiting: _Waiting) -> _Outcome | None:
    """One try on the working state, left there for the caller to roll back; None when a moved job
    found no home or no job holding GPUs started."""
    stmt = ctx.stmt
    state = stmt.state
    for held in moved:
        stmt.evict(held, EvictionKind.CONSOLIDATE, held.job.id, "")  # provisional; redone on accept
    homes: list[tuple[RunningJob, GangRequest, GangPlacement]] = []
    for held in sorted(moved, key=lambda h: (-h.gpu_milli_total, -h.job.cpu_milli, str(h.job.id))):
        request = ctx.request(held.job)
        if not isinstance(request, GangRequest):
            return None
        placed = place_gang(state, request, ctx.policy)
        ctx.count("migrate_placements")
        # Packed afresh it found no place: it may still stay where it was.
        home = placed if isinstance(placed, GangPlacement) else _where_it_was(ctx, held, request)
        if home is None:
            ctx.count("migrate_fail_move")
            return None
        stmt.bind(held.job, request, home)
        homes.append((held, request, home))
    admitted = _admit(ctx, chosen, waiting)
    gained = sum(job.gpu_milli_total for job, _, _ in admitted)
    if gained <= 0:  # allocated GPU capacity must rise
        ctx.count("migrate_fail_admit")
        return None
    changed = [(held, req, home) for held, req, home in homes if replica_placements(state, home) != held.placements]
    now = ctx.snapshot.now
    return _Outcome(changed, admitted, gained, sum(_progress(now, held) for held, _, _ in changed))


def _progress(now: float, held: RunningJob) -> float:
    """What a job has run so far, in milli-GPU seconds: what a move that restarts it throws away."""
    return max(0.0, now - held.started_at) * held.gpu_milli_total


def _where_it_was(ctx: CycleContext, held: RunningJob, request: GangRequest) -> GangPlacement | None:
    """The job's old placement, if it is still free in the working state (then it does not move)."""
    state = ctx.stmt.state
    index = state.node_index
    nodes = np.array([index[p.node] for p in held.placements], dtype=np.int32)
    width = max(request.gpus, 1)
    gpus = np.full((len(nodes), width), -1, dtype=np.int32)
    for r, p in enumerate(held.placements):
        n = int(nodes[r])
        if state.cpu_free_milli[n] < request.cpu_milli or state.memory_free_mib[n] < request.memory_mib:
            return None
        for k, g in enumerate(p.gpu_indices):
            if state.gpu_free_milli[n, g] < request.gpu_milli:
                return None
            gpus[r, k] = g
    return GangPlacement(nodes=nodes, gpus=gpus)


def _admit(ctx: CycleContext, chosen: list[int], waiting: _Waiting) -> list[tuple[Job, GangRequest, GangPlacement]]:
    """Start waiting jobs in the room on `chosen`, in the order of work; what was started.

    Only a job with a replica's worth of room on one of `chosen` is tried (nothing else fits: the
    rest of the cluster only filled up since allocate). The fit check is redone only after a job
    started (nothing else changes the state here), and a shape that found no placement is not placed
    again in the same try (the state only fills up): gangs whose one replica fits but whose whole
    does not used to cost a fit check of every waiting job and a placement call each."""
    stmt = ctx.stmt
    open_ = np.fromiter((job.id not in ctx.bound for job in waiting.jobs), dtype=np.bool_, count=len(waiting.jobs))
    started: list[tuple[Job, GangRequest, GangPlacement]] = []
    failed: set[ShapeKey] = set()
    hits: list[int] = []
    position = 0
    fresh = True
    while True:
        if fresh:
            fit = np.zeros(len(waiting.jobs), dtype=np.bool_)
            for node in chosen:
                fit |= waiting.fits_now(ctx, node)
            hits, position, fresh = np.flatnonzero(fit & open_).tolist(), 0, False
        if position >= len(hits):
            return started
        i = hits[position]
        position += 1
        open_[i] = False
        job = waiting.jobs[i]
        if ctx.admission_block(job) is not None:  # an earlier admission may have used up a limit
            continue
        request = waiting.requests[i]
        shape = ctx.shape_key(job, request)
        if shape in failed:
            continue
        placement = place_gang(stmt.state, request, ctx.policy)
        ctx.count("migrate_placements")
        if not isinstance(placement, GangPlacement):
            failed.add(shape)
            continue
        stmt.bind(job, request, placement)
        started.append((job, request, placement))
        fresh = True
