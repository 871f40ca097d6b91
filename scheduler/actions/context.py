"""What every action of one cycle shares: the snapshot, the fair shares, the working statement, and
the per-job bookkeeping (requests, pending reasons, failure memo).

Built once by `cycle.run_cycle` ("open the snapshot"); the actions read and update it in turn;
`cycle.run_cycle` turns it into a `Plan` ("close"). Nothing here decides who runs: the admission
rules every action shares (limits, non-preemptible in quota, reservations) live here so that their
pending messages read the same whichever action found them.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, compress
from typing import Any, overload

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.actions.shares import OTHER_MODELS, ModelAccounting, model_options, other_models
from leitstand.scheduler.codes import NONE
from leitstand.scheduler.fairshare import FairShares, QueueTree
from leitstand.scheduler.model import (
    EvictionKind,
    Job,
    JobId,
    PendingReason,
    QueueName,
    RunningJob,
    SchedulerConfig,
    Snapshot,
    Why,
    pending_reason,
    waits_behind,
)
from leitstand.scheduler.ordering import WorkQueue
from leitstand.scheduler.placement import NEVER_FITS, GangRequest
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.running import RunningSums, VictimSlots
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import Statement, gpus
from leitstand.scheduler.victims import Accept, Admissible, VictimChoice, VictimPool, choose_victims, search_tiers


@dataclass(frozen=True)
class Visited:
    """The jobs allocate visited before its last bind (`CycleContext.visited_before_last_bind`):
    those it walked one by one (`walked`, in the order of work), then those of a lone queue it went
    through by FIFO (`actions/allocate.py`, `_lone_queue`): `fifos` holds, per FIFO, the positions
    in `rest` of its jobs (every job of a FIFO shares its `Job.fifo_key`), of which those before
    `end` were visited before the last bind."""

    walked: Sequence[Job] = ()
    rest: Sequence[Job] = ()
    fifos: Sequence[NDArray[np.int64]] = ()
    end: int = 0

    def by_fifo(self) -> Iterator[tuple[Job, Callable[[], list[Job]]]]:
        """Per FIFO of the lone queue with a job before `end`: its first job, and a call that lists
        its jobs before `end`."""
        rest, end = self.rest, self.end
        for positions in self.fifos:
            if positions[0] < end:
                yield rest[int(positions[0])], partial(_take, rest, positions, end)


class _FromSlots(Sequence[RunningJob]):
    """Victim candidates as slots (`CycleContext.victim_candidates`): the jobs at `where` in the
    slots' job list, then `extra`; an entry is read from the list when asked for, so a victim pool
    kept from the last cycle (`victims._kept_columns`), which asks only for the candidates it did
    not hold, does not list them all."""

    __slots__ = ("_extra", "_jobs", "_where")

    def __init__(self, jobs: Sequence[RunningJob | None], where: NDArray[np.int64], extra: list[RunningJob]) -> None:
        self._jobs, self._where, self._extra = jobs, where, extra

    def __len__(self) -> int:
        return len(self._where) + len(self._extra)

    @overload
    def __getitem__(self, i: int) -> RunningJob: ...
    @overload
    def __getitem__(self, i: slice) -> list[RunningJob]: ...
    def __getitem__(self, i: int | slice) -> RunningJob | list[RunningJob]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < len(self._where):
            held = self._jobs[int(self._where[i])]
            assert held is not None
            return held
        return self._extra[i - len(self._where)]

    def __iter__(self) -> Iterator[RunningJob]:
        return chain(map(self._jobs.__getitem__, self._where.tolist()), self._extra)  # type: ignore[arg-type]


def _take(jobs: Sequence[Job], positions: NDArray[np.int64], end: int) -> list[Job]:
    return list(map(jobs.__getitem__, positions[: int(np.searchsorted(positions, end))].tolist()))


class Code:
    """Stable pending-reason codes the cycle itself emits (placement adds its own, e.g. NoTopologyDomain;
    `NEVER_FITS` is placement's, listed here because the actions treat it as a block)."""

    QUEUE_AT_LIMIT = "QueueAtLimit"
    NON_PREEMPTIBLE_OVER_QUOTA = "NonPreemptibleOverQuota"
    OVER_FAIR_SHARE = "OverFairShare"
    UNKNOWN_QUEUE = "UnknownQueue"
    INVALID_REQUEST = "InvalidRequest"
    POOL_NOT_ALLOWED = "PoolNotAllowed"
    CYCLE_BUDGET = "CycleBudget"
    SEARCH_BUDGET = "SearchBudgetExhausted"
    """A victim search (reclaim or preempt) could have helped, but the action's searches per cycle
    (`VICTIM_SEARCHES_PER_ACTION`) ran out before the job's turn; it is searched again next cycle."""
    NEVER_FITS = NEVER_FITS
    """Not even an empty cluster could hold the gang (`placement.never_fits`); no victim search."""


POLICY_BLOCKS = frozenset(
    {
        Code.QUEUE_AT_LIMIT,
        Code.NON_PREEMPTIBLE_OVER_QUOTA,
        Code.UNKNOWN_QUEUE,
        Code.INVALID_REQUEST,
        Code.POOL_NOT_ALLOWED,
        Code.CYCLE_BUDGET,
        Code.NEVER_FITS,
    }
)
"""Reasons that no eviction can cure (other than preemption inside the queue for QueueAtLimit)."""

ShapeKey = tuple[object, ...]

_SCHEDULABLE, _PREVIOUS, _CURRENT = "schedulable", "previous", "current"
"""Keys of the request memo (`ClusterState.request_cache`, see `_request_memo`)."""

MAX_BESIDE = 512
"""Whole jobs the combined shrink-and-evict search considers beside an elastic job's spare replicas
(`CycleContext._whole_beside`): its pool is built per search, so it stays small."""

VICTIM_SEARCHES_PER_ACTION = 128
"""Victim searches (each a few placement calls per candidate domain) per action per cycle. Jobs not
reached keep their reason and are tried again next cycle; bounds a cycle with a deep backlog."""


@dataclass(slots=True)
class CycleContext:
    snapshot: Snapshot
    config: SchedulerConfig
    tree: QueueTree
    shares: FairShares
    policy: PolicyContext
    stmt: Statement
    pending_by_queue: dict[QueueName, list[Job]]
    """Pending jobs of known leaf queues (others already have a reason), each list in `job_order_key` order."""
    reserved_pools: dict[QueueName, str | None]
    """Effective reservation of each queue (its own `node_pool` or its nearest ancestor's)."""
    all_reserved: frozenset[str]
    reasons: dict[JobId, Why] = field(default_factory=dict)
    """What each waiting job waits for, by id — except the jobs of a lone queue's FIFO that allocate
    suspended behind its pair's failure (`actions/allocate.py`, `_lone_queue`): those are left out
    and wait with `plain_failed[(queue, request_key)]`. Read a job's reason with `reason_of`."""
    bound: set[JobId] = field(default_factory=set)
    """Jobs bound, moved, shrunk or grown in this cycle: never victims in the same cycle."""
    stats: dict[str, int] = field(default_factory=dict)
    """Counters of what the actions did (`<action>_searches`, `_search_failures`, `_placements`,
    `_budget_cut`, ...), handed to the caller of `run_cycle` on request."""
    search_budget: int = field(default_factory=lambda: VICTIM_SEARCHES_PER_ACTION)
    """Victim searches per action in this cycle (the module constant, read when the cycle opens)."""
    held_nodes: NDArray[np.bool_] | None = None
    """Nodes held for starving gangs this cycle (`actions/reserve.py`); None when nothing is held.
    Requests of non-preemptible jobs other than `holders` leave them out (kept in `unheld`)."""
    holders: frozenset[JobId] = frozenset()
    unheld: dict[JobId, GangRequest] = field(default_factory=dict)
    """The request a non-preemptible job would have without the hold (for its pending reason)."""
    plain_failed: dict[tuple[QueueName, tuple[object, ...]], Any] | None = None
    """Set by allocate when requests are plain (no per-model quotas, no held nodes; else None): the
    placement failures by (queue, `Job.request_key`). A job whose pair is listed has a request (the
    same as the job that failed), so later actions need not look it up to know that."""
    visited_before_last_bind: Visited | None = None
    """Set by allocate: the jobs it visited before its last bind, in the order of work (every other
    still-pending job was visited after it, so its admission checks saw the accounting allocate left
    behind). None before allocate ran."""
    running_priorities: dict[QueueName, dict[int, int]] = field(default_factory=dict)
    """Per queue: how many preemptible jobs of the snapshot run at each priority (the jobs this
    cycle started are not counted; they are no victims in it)."""
    elastic: bool = False
    """Some pending or running job of this cycle is elastic (`Job.min_replicas`); False lets the
    shrink search and the grow action return at once."""
    running_sums: RunningSums | None = None
    """The snapshot's running jobs as `cycle.run_cycle` opened them (`running.open_running`); the
    victim pools take their candidates from its `VictimSlots`. None: taken from `stmt.running`."""
    _requests: dict[JobId, GangRequest | PendingReason] = field(default_factory=dict)
    _victim_pool: VictimPool | None = None
    _request_memo_checked: tuple[dict[Any, Any], dict[Any, Any]] | None = None
    """(this cycle's, the previous cycle's) requests by (`Job.request_key`, queue, reservation)
    (`_request_memo`; set at the first request)."""
    _model_requests: dict[tuple[JobId, str], GangRequest | PendingReason] = field(default_factory=dict)
    _cuts: dict[JobId, tuple[tuple[str, ...], Why | None]] = field(default_factory=dict)

    # -- bookkeeping --------------------------------------------------------------------------------

    def count(self, key: str, amount: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + amount

    def budget_cut(self, job: Job, action: str, current: Why | None) -> None:
        """Record that `action`'s victim-search budget ran out before `job` was searched.

        The job's reason before the first cut (e.g. `Insufficient` from allocate) is kept in the
        message, so a tenant still sees what it waits for."""
        self.count(f"{action}_budget_cut")
        actions, first = self._cuts.get(job.id, ((), current))
        actions = (*actions, action)
        self._cuts[job.id] = (actions, first)
        before = f"; it waits for: {first.code}: {first.message}" if first is not None else ""
        self.wait(
            job,
            Code.SEARCH_BUDGET,
            f"not searched for {' or '.join(actions)} victims this cycle: the budget of {self.search_budget} "
            f"victim searches per action ran out before this job's turn; searched again next cycle{before}",
        )

    def reason_of(self, job: Job) -> Why | None:
        """What `job` waits for so far in this cycle (None: nothing recorded, or bound): its entry
        in `reasons`, else, for a rigid job not bound, its pair's placement failure when allocate
        recorded one (`plain_failed`). Exact: every still-pending job allocate went through gets an
        entry, except those a suspended FIFO passed over, whose failure is their pair's (only rigid
        jobs are suspended); the plan's `PendingReasons` reads them the same way."""
        why = self.reasons.get(job.id)
        if why is None and job.id not in self.bound:
            why = waits_behind(self.plain_failed, job)
        return why

    def wait(self, job: Job, code: str, message: str) -> None:
        self.reasons[job.id] = pending_reason(job.id, code, message)

    def still_pending(self) -> Iterator[Job]:
        """The pending jobs not bound in this cycle, leaf queue by leaf queue, each in job order
        (`bound` is read as the jobs are handed out)."""
        bound = self.bound
        return (job for jobs in self.pending_by_queue.values() for job in jobs if job.id not in bound)

    def work_queue(self, jobs_by_queue: Mapping[QueueName, Sequence[Job]] | None = None) -> WorkQueue:
        if jobs_by_queue is None:
            # The still-pending jobs, already in job order: the sorted lists with the jobs bound so
            # far passed over as they are reached (an action that stops early, as consolidation
            # does after its attempts, never filters the rest of a deep backlog).
            skip = frozenset(self.bound)
            return WorkQueue(self.pending_by_queue, self.stmt.accounting, self.shares, presorted=True, skip=skip)
        return WorkQueue(jobs_by_queue, self.stmt.accounting, self.shares)

    def queues_waiting(self) -> list[QueueName]:
        """The leaf queues with a pending job not bound in this cycle, in `pending_by_queue` order
        (each found at its first unbound job)."""
        bound = self.bound
        return [q for q, jobs in self.pending_by_queue.items() if any(job.id not in bound for job in jobs)]

    def victim_pool(self) -> VictimPool:
        """Reclaim's and preempt's candidates: preemptible running jobs of known queues past their
        minimum runtime, flattened once per cycle (`VictimPool`) and shared by both actions.

        It stays exact between them: victims leave it as `evict_for` commits them, jobs bound in this
        cycle were never in it, and its memo of hopeless domains is invalidated by every commit.
        Code that evicts a job outside `evict_for` must call `remove` and `changed` on it."""
        if self._victim_pool is None:
            known = self.stmt.accounting.paths
            candidates, slots = self.victim_candidates(known)
            self._victim_pool = VictimPool(self.stmt, candidates, kept=self.stmt.state.cycle_cache, slots=slots)
        return self._victim_pool

    def is_victim_age(self, running: RunningJob) -> bool:
        """Old enough to be evicted (minimum runtime protection) and not started in this cycle."""
        return (
            running.job.id not in self.bound
            and self.snapshot.now - running.started_at >= self.config.min_runtime_seconds
        )

    def victim_candidates(
        self, queues: Container[QueueName] | None = None
    ) -> tuple[Sequence[RunningJob], tuple[VictimSlots, NDArray[np.int64]] | None]:
        """The running preemptible jobs of victim age (`is_victim_age`) in `stmt.running` (of
        `queues` when given), and, when they come from the `VictimSlots` of `running_sums`, those
        slots and each candidate's slot there (-1: none) for `VictimPool`.

        From the slots: the statement's `running` started as the snapshot's running jobs, which the
        slots hold, so every job no operation of this cycle `touched` is a candidate exactly when
        its slot is live and of age (one array comparison); a touched or bound one is judged from
        `stmt.running` as `is_victim_age` would judge it. Without `running_sums`: a pass over
        `stmt.running`."""
        bound, now, least = self.bound, self.snapshot.now, self.config.min_runtime_seconds

        def candidate(held: RunningJob) -> bool:
            return (
                held.job.is_preemptible
                and held.job.id not in bound
                and now - held.started_at >= least
                and (queues is None or held.job.queue in queues)
            )

        if self.running_sums is None:
            return [held for held in self.stmt.running.values() if candidate(held)], None
        slots = self.running_sums.slots
        chosen = slots.aged(now, least)
        extra: list[RunningJob] = []
        running = self.stmt.running
        for job_id in self.stmt.touched | bound:
            at = slots.slot.get(job_id)
            held = running.get(job_id)
            now_candidate = held is not None and candidate(held)
            if at is not None and held is slots.jobs[at]:
                chosen[at] = now_candidate
                continue
            if at is not None:  # not the job its slot holds (gone, or another object for the id)
                chosen[at] = False
            if now_candidate:
                extra.append(held)  # type: ignore[arg-type]
        where = np.flatnonzero(chosen)
        candidates: Sequence[RunningJob]
        if queues is not None:
            picked: list[RunningJob] = list(map(slots.jobs.__getitem__, where.tolist()))  # type: ignore[arg-type]
            of = [held.job.queue in queues for held in picked]
            where, picked = where[np.array(of, dtype=np.bool_)], list(compress(picked, of))
            candidates = picked + extra
        else:  # not listed: a pool kept from the last cycle reads only the candidates it did not hold
            candidates = _FromSlots(slots.jobs, where, extra)
        return candidates, (slots, np.concatenate((where, np.full(len(extra), -1, dtype=np.int64))))

    def evict_for(
        self,
        job: Job,
        request: GangRequest,
        pool: VictimPool,
        eligible: NDArray[np.bool_],
        kind: EvictionKind,
        why: Callable[[RunningJob], str],
        *,
        admissible: Admissible | None = None,
        accept: Accept | None = None,
    ) -> bool:
        """One victim search for `job` among `eligible` of `pool` (`victims.choose_victims`).

        On success the victims are evicted (`why(victim)` is the eviction message) and leave the pool,
        the job is bound where the search placed it, and True is returned; else nothing changes.
        """
        if self.elastic:
            if self._shrink_for(job, request, pool, eligible, kind, why, admissible, accept):
                return True
            if pool.shrunk.any():  # shrunk this cycle: its pool entry is stale, so it is not evicted whole now
                eligible = eligible & ~pool.shrunk
        tally: dict[str, int] = {}
        choice = choose_victims(
            self.stmt,
            request,
            pool,
            self.policy,
            max_victims=self.config.max_victims,
            for_job=job.id,
            eligible=eligible,
            admissible=admissible,
            accept=accept,
            tally=tally,
        )
        self.count(f"{kind.value}_searches")
        self.count(f"{kind.value}_domains", tally.get("domains", 0))
        self.count(f"{kind.value}_placements", tally.get("placements", 0))
        self.count(f"{kind.value}_domains_skipped", tally.get("domains_skipped", 0))
        if choice is None:
            self.count(f"{kind.value}_search_failures")
            return False
        mark = self.stmt.checkpoint()
        for victim in choice.victims:
            self.stmt.evict(victim, kind, job.id, why(victim))
            pool.remove(victim.job.id)
        self.stmt.bind(job, choice.request, choice.placement)
        pool.changed(self.stmt.nodes_since(mark))
        self.bound.add(job.id)
        self.reasons.pop(job.id, None)
        return True

    def _shrink_for(
        self,
        job: Job,
        request: GangRequest,
        pool: VictimPool,
        eligible: NDArray[np.bool_],
        kind: EvictionKind,
        why: Callable[[RunningJob], str],
        admissible: Admissible | None,
        accept: Accept | None,
    ) -> bool:
        """Shrink before evict: one victim search among the replicas that elastic candidates hold
        above their minimum (each replica a candidate of its own, so the search picks replicas where
        the gang can use them); when that is not enough, one more among those replicas together with
        the nearest whole jobs (`_whole_beside`), so that an elastic job gives up a replica next to a
        rigid victim instead of stopping whole. On success the replicas stop (`Statement.evict`
        of a part), the jobs keep running with the rest, whole victims are evicted, and `job` is bound;
        else nothing changes and False.

        The action's own rules (`admissible`, `accept`) judge each replica as they judge a job."""
        chosen = eligible & pool.alive & pool.shrinkable
        if self.config.max_victims <= 0 or not chosen.any():
            return False
        running = self.stmt.running
        pieces: list[RunningJob] = []
        spare: dict[JobId, int] = {}
        for i in np.flatnonzero(chosen).tolist():
            held = running.get(pool.ordered[i].job.id)
            low = None if held is None else held.job.min_replicas
            if held is None or low is None or len(held.placements) <= low:
                continue
            spare[held.job.id] = len(held.placements) - low
            # Latest replicas first (a tie in victim cost keeps this order).
            pieces.extend(RunningJob(held.job, (p,), held.started_at) for p in reversed(held.placements))
        if not pieces:
            return False
        piece_ids = {id(piece) for piece in pieces}

        def capped(victim: RunningJob, taken: Sequence[RunningJob]) -> bool:
            # Never below the minimum: at most `spare` replicas of one job (monotone, as required).
            if id(victim) in piece_ids and sum(1 for t in taken if t.job.id == victim.job.id) >= spare[victim.job.id]:
                return False
            return admissible is None or admissible(victim, taken)

        def search(candidates: list[RunningJob]) -> VictimChoice | None:
            tally: dict[str, int] = {}
            found = choose_victims(
                self.stmt,
                request,
                VictimPool(self.stmt, candidates),
                self.policy,
                max_victims=min(len(candidates), len(pieces) + self.config.max_victims),
                for_job=job.id,
                admissible=capped,
                accept=accept,
                tally=tally,
            )
            self.count(f"{kind.value}_shrink_searches")
            self.count(f"{kind.value}_placements", tally.get("placements", 0))
            return found

        choice = search(pieces)
        if choice is None:
            beside = self._whole_beside(
                pool, eligible & pool.alive & ~pool.shrinkable & ~pool.shrunk, pieces, request
            )
            choice = search(pieces + beside) if beside else None
            if choice is None or not any(id(v) in piece_ids for v in choice.victims):
                return False  # no set that shrinks anyone: the plain search (whole jobs) decides
        mark = self.stmt.checkpoint()
        parts: dict[JobId, list[RunningJob]] = {}
        for victim in choice.victims:
            if id(victim) in piece_ids:
                parts.setdefault(victim.job.id, []).append(victim)
            else:
                self.stmt.evict(victim, kind, job.id, why(victim))
                pool.remove(victim.job.id)
        for job_id, taken in parts.items():
            held = running[job_id]
            left = len(held.placements) - len(taken)
            reason = (
                f"{why(taken[0])}; shrunk from {len(held.placements)} to {left} replicas "
                f"(its minimum is {held.job.min_replicas}, full size {held.job.replicas})"
            )
            for piece in taken:
                self.stmt.evict(piece, kind, job.id, reason)
            pool.shrink(job_id)
            self.bound.add(job_id)  # shrunk in this cycle: not grown, moved or evicted whole in it
        self.stmt.bind(job, choice.request, choice.placement)
        pool.changed(self.stmt.nodes_since(mark))
        self.bound.add(job.id)
        self.reasons.pop(job.id, None)
        return True

    def _whole_beside(
        self, pool: VictimPool, chosen: NDArray[np.bool_], pieces: Sequence[RunningJob], request: GangRequest
    ) -> list[RunningJob]:
        """The `chosen` candidates of `pool` that could share a victim set with `pieces`, nearest
        first and at most `MAX_BESIDE`: those on the pieces' nodes, then those in the pieces' domains
        of the levels the victim search looks in (`victims.search_tiers`: the node for one replica,
        the required level, else the preferred one, else the tightest level that holds the gang), then,
        when the search also looks anywhere (a gang with no required level), the rest. Inside each
        group in cost order. A set that shrinks a job in one rack and evicts a whole job on a node of
        another rack is found for a gang with no topology rule; the cap keeps the extra pool (built
        per search) small on large clusters."""
        if not chosen.any():
            return []
        state = self.stmt.state
        index = state.node_index
        nodes = np.fromiter({index[p.node] for piece in pieces for p in piece.placements}, dtype=np.int64)
        tiers = search_tiers(state, request)
        distance = np.full(state.n_nodes, 2 if NONE in tiers else 3, dtype=np.int64)  # 3: never
        for level in tiers:
            if level != NONE:
                column = state.domain[:, level]
                shared = column[nodes]
                distance[np.isin(column, shared[shared != NONE])] = 1
        distance[nodes] = 0
        rows = pool.rows_of(chosen)
        job_distance = np.full(len(pool.ordered), 3, dtype=np.int64)
        np.minimum.at(job_distance, pool.row_job[rows], distance[pool.row_node[rows]])
        candidates = np.flatnonzero(job_distance < 3)
        nearest = candidates[np.lexsort((candidates, job_distance[candidates]))][:MAX_BESIDE]
        return [pool.ordered[i] for i in nearest.tolist()]

    # -- requests and reservations ------------------------------------------------------------------

    def at_minimum(self, job: Job) -> Job:
        """The job as reclaim and preempt search for it: an elastic job at its minimum size (they
        evict no more than it needs to start; it grows later from free GPUs), any other unchanged."""
        low = job.min_replicas
        return job if low is None or low >= job.replicas else replace(job, replicas=low)

    def request(self, job: Job) -> GangRequest | PendingReason:
        """The job's gang request in array terms (memoised), or why no request can be formed.

        Memoised per job id; a view of the job with another replica count (an elastic job tried at
        a smaller size) gets the same request with that count (nothing else depends on it)."""
        cached = self._requests.get(job.id)
        if cached is not None:
            if isinstance(cached, GangRequest) and cached.replicas != job.replicas:
                return replace(cached, replicas=job.replicas)
            return cached
        acc = self.stmt.accounting
        if isinstance(acc, ModelAccounting) and len(job.gpu_models) != 1:
            # Per-model quotas are counted: the job is tried as one model (the one it was resolved to,
            # else its best option; allocate tries every option in turn, see `model_choices`).
            model = acc.resolved.get(job.id)
            if model is None:
                options = model_options(acc, self.shares, self.stmt.state, job)
                if not options:
                    return PendingReason(job.id, Code.QUEUE_AT_LIMIT, _all_models_at_limit(job))
                model = acc.resolved[job.id] = options[0]
            result = self.model_request(job, model)
        else:
            result = self._build_request(job)
        self._requests[job.id] = result
        return result

    # -- GPU models (docs/fairshare.md, "Quota per GPU model") ----------------------------------------

    def model_choices(self, job: Job) -> tuple[tuple[str | None, Job], ...]:
        """(model, the job as if it named that model) per option, best first; `((None, job),)` when
        no model needs choosing (no per-model quotas in the cluster, or the job names one model)."""
        acc = self.stmt.accounting
        if not isinstance(acc, ModelAccounting) or len(job.gpu_models) == 1:
            return ((None, job),)
        return tuple((m, self._model_view(job, m)) for m in model_options(acc, self.shares, self.stmt.state, job))

    def model_request(self, job: Job, model: str) -> GangRequest | PendingReason:
        """The job's request restricted to `model` (`OTHER_MODELS`: to models nobody sets a quota for)."""
        key = (job.id, model)
        cached = self._model_requests.get(key)
        if cached is None:
            cached = self._model_requests[key] = self._build_request(self._model_view(job, model))
        if isinstance(cached, GangRequest) and cached.replicas != job.replicas:
            return replace(cached, replicas=job.replicas)
        return cached

    def resolve(self, job: Job, model: str, request: GangRequest) -> None:
        """Charge `job` to `model` from now on (before it is bound with `request`)."""
        acc = self.stmt.accounting
        if isinstance(acc, ModelAccounting):
            acc.resolved[job.id] = model
        self._requests[job.id] = request

    def reclaim_view(
        self, job: Job
    ) -> tuple[str | None, dict[QueueName, float], dict[QueueName, float], dict[QueueName, int]]:
        """The division reclaim judges `job` by: (model, fair share, deserved, allocated) per queue.

        The GPU model's division when the job is charged to a model some queue sets a quota for
        (per-model quotas refine the totals: a model's GPUs are taken back by that model's shares
        and quotas), else the totals (model None)."""
        acc = self.stmt.accounting
        if isinstance(acc, ModelAccounting):
            model = acc.model_of(job)
            by_model = None if model is None else self.shares.by_model.get(model)
            if model is not None and by_model is not None:
                return model, by_model.share_milli, by_model.deserved_milli, acc.model_allocated[model]
        return None, self.shares.share_milli, self.shares.deserved_milli, acc.allocated_milli

    def _model_view(self, job: Job, model: str) -> Job:
        if model != OTHER_MODELS:
            return replace(job, gpu_models=frozenset({model}))
        acc = self.stmt.accounting
        named = acc.model_allocated if isinstance(acc, ModelAccounting) else {}
        return replace(job, gpu_models=other_models(self.stmt.state, named, job))

    def _build_request(self, job: Job) -> GangRequest | PendingReason:
        # Requests outlive the cycle and are shared by jobs of one shape: with a backlog of thousands
        # of jobs, rebuilding each one's node mask and request every cycle was the largest cost of
        # the openb replay. A request depends on the job's request fields (`Job.request_key`), its
        # queue's reservation, the reserved pools and the nodes' schedulability; the memo (on the
        # state, shared by its copies) is keyed by the first two and the queue (a reason built
        # instead of a request names the queue) and checked against the others.
        own = self.reserved_pools.get(job.queue)
        memos = self._request_memo_checked
        if memos is None:
            memos = self._request_memo_checked = _request_memo(self.stmt.state)
        current, previous = memos
        pools = self.all_reserved
        key = (job.request_key, job.queue, own)
        known = current.get(key)
        if known is None:
            known = previous.get(key)
            if known is not None:
                current[key] = known
        if known is not None and (known[0] is pools or known[0] == pools):
            request: GangRequest | PendingReason = known[1]
            if isinstance(request, PendingReason) and request.job_id != job.id:
                request = replace(request, job_id=job.id)  # the same reason, for this job
        else:
            request = self._new_request(job, own)
            current[key] = (pools, request)
        held = self.held_nodes
        if held is not None and isinstance(request, GangRequest) and self._kept_off_held(job):
            self.unheld[job.id] = request
            request = replace(request, node_mask=request.node_mask & ~held)
        return request

    def _kept_off_held(self, job: Job) -> bool:
        """A non-preemptible job other than the gangs capacity is held for stays off held nodes."""
        return not job.is_preemptible and job.id not in self.holders

    def _new_request(self, job: Job, own: str | None) -> GangRequest | PendingReason:
        if own is not None:
            if job.node_pool is not None and job.node_pool != own:
                return PendingReason(
                    job.id,
                    Code.POOL_NOT_ALLOWED,
                    f"queue {job.queue} is reserved to node pool {own}; the job asks for pool {job.node_pool}",
                )
            job = replace(job, node_pool=own)
        excluded = tuple(sorted(p for p in self.all_reserved if p != own))
        if job.node_pool is not None and job.node_pool in excluded:
            return PendingReason(
                job.id,
                Code.POOL_NOT_ALLOWED,
                f"node pool {job.node_pool} is reserved for other queues; queue {job.queue} may not use it",
            )
        try:
            return GangRequest.for_job(self.stmt.state, job, excluded_pools=excluded)
        except ValueError as err:
            return PendingReason(job.id, Code.INVALID_REQUEST, str(err))

    def hold(self, nodes: NDArray[np.bool_], holders: frozenset[JobId]) -> None:
        """Hold `nodes` for the gangs `holders` (`actions/reserve.py`): from now on the requests of
        other non-preemptible jobs leave them out (requests cached before are dropped and rebuilt)."""
        self.held_nodes = nodes
        self.holders = holders
        self._requests = {j: r for j, r in self._requests.items() if j in holders}
        self._model_requests = {k: r for k, r in self._model_requests.items() if k[0] in holders}

    def running_request(self, running: RunningJob) -> GangRequest | PendingReason:
        """The request of a running job, for re-placing it elsewhere (consolidation)."""
        return self.request(running.job)

    # -- shared admission rules ------------------------------------------------------------------------

    def waiting_for_room(self, job: Job) -> GangRequest | None:
        """The request of `job` when it waits for room only — no policy block as its reason, admissible
        (limits, the in-quota rule) and a request can be formed — else None. Consolidate and migrate
        make room only for such jobs."""
        current = self.reason_of(job)
        if current is not None and current.code in POLICY_BLOCKS:
            return None
        if self.admission_block(job) is not None:
            return None
        request = self.request(job)
        return None if isinstance(request, PendingReason) else request

    def surely_admitted(self, job: Job) -> bool:
        """A cheap test that implies `admission_block(job) is None` (False: ask that): no per-model
        quotas, no limit on the job's path, and a preemptible job or one within the in-quota GPUs.
        Lets allocate and reclaim pass over a deep backlog behind failed shapes; keep it in step
        with `admission_block`."""
        acc = self.stmt.accounting
        return (
            not isinstance(acc, ModelAccounting)
            and not acc.limited[job.queue]
            and (job.is_preemptible or acc.in_quota_block(job.queue, job.gpu_milli_total) is None)
        )

    def admission_block(self, job: Job, freed: Mapping[QueueName, int] | None = None) -> PendingReason | None:
        """Limit at every level, and non-preemptible jobs within quota; None when admissible."""
        acc = self.stmt.accounting
        amount = job.gpu_milli_total
        hit = acc.limit_block(job.queue, amount, freed)
        if hit is not None:
            name, allocated, limit = hit
            return PendingReason(
                job.id,
                Code.QUEUE_AT_LIMIT,
                f"waiting: queue {name} at limit {gpus(allocated)}/{gpus(limit)} GPUs (this job needs {gpus(amount)})",
            )
        if not job.is_preemptible:
            over = acc.in_quota_block(job.queue, amount)
            if over is not None:
                name, used, quota = over
                return PendingReason(
                    job.id,
                    Code.NON_PREEMPTIBLE_OVER_QUOTA,
                    f"non-preemptible jobs may only use in-quota GPUs: {name} has "
                    f"{gpus(used)}/{gpus(quota)} in quota (this job needs {gpus(amount)})",
                )
        if isinstance(acc, ModelAccounting):
            return self._model_block(acc, job)
        return None

    def _model_block(self, acc: ModelAccounting, job: Job) -> PendingReason | None:
        """Per-model limits: the job's one model must have room at every level; a job naming no single
        model needs one option with room (its tentative model moves to the best such option)."""
        amount = job.gpu_milli_total
        if len(job.gpu_models) == 1:
            model = next(iter(job.gpu_models))
            hit = acc.model_limit_block(job.queue, model, amount)
            if hit is None:
                return None
            name, allocated, limit = hit
            return PendingReason(
                job.id,
                Code.QUEUE_AT_LIMIT,
                f"waiting: queue {name} at its {model} limit {gpus(allocated)}/{gpus(limit)} GPUs "
                f"(this job needs {gpus(amount)})",
            )
        options = model_options(acc, self.shares, self.stmt.state, job)
        if not options:
            return PendingReason(job.id, Code.QUEUE_AT_LIMIT, _all_models_at_limit(job))
        if acc.resolved.get(job.id) not in options:
            acc.resolved[job.id] = options[0]
            self._requests.pop(job.id, None)
        return None

    def shape_key(self, job: Job, request: GangRequest) -> ShapeKey:
        """Jobs with equal keys succeed or fail placement alike on the same state."""
        return (
            job.replicas,
            job.gpus,
            request.gpu_milli,
            job.cpu_milli,
            job.memory_mib,
            request.gpu_models,  # the models it is tried with (one, when per-model quotas resolve it)
            job.required_level,
            job.preferred_level,
            job.node_pool,
            job.jurisdictions,
            job.allowed_nodes,  # hashed once per frozenset; equal sets share a memo entry
            self.reserved_pools.get(job.queue),
        )


def _all_models_at_limit(job: Job) -> str:
    return (
        f"waiting: queue {job.queue} is at its limit for every GPU model this job may use "
        f"(this job needs {gpus(job.gpu_milli_total)})"
    )


def _request_memo(state: ClusterState) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """A new cycle's (current, previous) request memos from `state.request_cache`.

    The memo keeps the requests of the last cycle that built any, and of this one, by (request
    fields, queue, reservation): each cycle's requests move on to the next cycle's "previous", so shapes no
    pending job has any more are forgotten after one cycle and the memo stays about the size of the
    backlog's distinct shapes. All of it is dropped when any node's schedulability changed since
    (requests carry a mask of schedulable nodes)."""
    memo = state.request_cache
    stamp = state.schedulable.tobytes()
    if memo.get(_SCHEDULABLE) != stamp:
        memo.clear()
        memo[_SCHEDULABLE] = stamp
        memo[_CURRENT] = {}
    memo[_PREVIOUS], memo[_CURRENT] = memo[_CURRENT], {}
    return memo[_CURRENT], memo[_PREVIOUS]
