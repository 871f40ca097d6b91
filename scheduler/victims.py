"""Topology-aware victim choice: which running jobs to stop so that a waiting gang really fits.

What it holds: `choose_victims`, shared by reclaim, preempt and consolidate. For each candidate
domain (a domain of the gang's required level; each node for a one-replica gang; otherwise the
whole allowed node set) it evicts candidates cheapest first on the cycle's `Statement`, asks
`place_gang` after each one whether the gang now has a valid placement *inside that domain*, then
drops every victim the placement does not need. The cheapest successful set over all domains wins:
lowest highest-priority, then fewest jobs, then fewest GPUs, then youngest. Everything is rolled
back before returning; the caller replays the chosen evictions and the returned placement, so an
eviction is never issued without the preemptor's placement in the same plan.

Why not "cheapest jobs anywhere": peers that pick victims without looking at topology free GPUs the
waiting gang cannot use (Kueue #5243, Volcano reclaim bugs); here freed GPUs are proven useful by an
actual placement in the post-eviction state.

Who calls it: `actions/reclaim.py`, `actions/preempt.py`, `actions/consolidate.py`.
What it must not do: decide whether eviction is allowed at all (the action passes `admissible` and
`accept` for its own rules), or leave anything changed in the statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import GPU_MILLI, EvictionKind, JobId, QueueName, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, place_gang
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.statement import Statement

Admissible = Callable[[RunningJob, Sequence[RunningJob]], bool]
"""May this candidate join the victims already taken? Called with `taken` already evicted on the
statement (state and accounting show them gone). Must be monotone: more victims never make a
candidate admissible again."""
Accept = Callable[[Sequence[RunningJob], GangRequest, GangPlacement], bool]
"""Final check of a set, called with exactly these victims evicted on the statement and the placement
found in that state; must leave the statement as it found it."""

MAX_DOMAINS = 16
"""Candidate domains tried per waiting gang (the most promising first); bounds the cost of a search."""
MAX_SUCCESSES = 3
"""Stop after this many domains yielded a valid victim set and keep the cheapest of them."""


@dataclass(frozen=True, slots=True)
class VictimChoice:
    victims: tuple[RunningJob, ...]
    request: GangRequest
    """The waiting gang's request, restricted to the chosen domain."""
    placement: GangPlacement
    """Valid in the state where exactly `victims` are evicted."""


def victim_cost(running: RunningJob) -> tuple[int, float, int, str]:
    """Sort key, cheapest first: lowest priority, youngest (latest start), fewest GPUs, then id."""
    return (running.job.priority, -running.started_at, running.job.gpu_milli_total, running.job.id)


def _set_cost(victims: Sequence[RunningJob]) -> tuple[int, int, int, float]:
    return (
        max(v.job.priority for v in victims),
        len(victims),
        sum(v.job.gpu_milli_total for v in victims),
        -max(v.started_at for v in victims),
    )


class VictimPool:
    """The running jobs an action may evict, sorted cheapest first and flattened into arrays once.

    Built once per action (O(candidates × replicas)); each search then selects its candidates with
    a boolean array (`eligible`) instead of walking Python objects, and evicted jobs are dropped
    with `remove`. Row r of the flat arrays is one replica: `row_job[r]` (index into `ordered`),
    `row_node[r]`, `row_gpus[r]` (devices it holds, at least 1).
    """

    def __init__(
        self,
        stmt: Statement,
        candidates: Sequence[RunningJob],
        key: Callable[[RunningJob], tuple[int, float, int, str]] = victim_cost,
    ) -> None:
        state = stmt.state
        self.ordered: list[RunningJob] = sorted(candidates, key=key)
        self.rank = {v.job.id: i for i, v in enumerate(self.ordered)}
        jobs: list[int] = []
        nodes: list[int] = []
        devices: list[int] = []
        for i, v in enumerate(self.ordered):
            for p in v.placements:
                jobs.append(i)
                nodes.append(state.node_index[p.node])
                devices.append(max(v.job.gpus, 1))
        self.row_job = np.array(jobs, dtype=np.int64)
        self.row_node = np.array(nodes, dtype=np.int64)
        self.row_gpus = np.array(devices, dtype=np.int64)
        self.alive = np.ones(len(self.ordered), dtype=np.bool_)
        self.queue_index: dict[QueueName, int] = {}
        for v in self.ordered:
            self.queue_index.setdefault(v.job.queue, len(self.queue_index))
        self.queue_code = np.array([self.queue_index[v.job.queue] for v in self.ordered], dtype=np.int64)
        self.priority = np.array([v.job.priority for v in self.ordered], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.alive.sum())

    def remove(self, job_id: JobId) -> None:
        i = self.rank.get(job_id)
        if i is not None:
            self.alive[i] = False

    def of_queues(self, queues: set[QueueName]) -> NDArray[np.bool_]:
        """Alive candidates of these queues."""
        codes = np.array([self.queue_index[q] for q in queues if q in self.queue_index], dtype=np.int64)
        return self.alive & np.isin(self.queue_code, codes)

    def of_queue(self, queue: QueueName) -> NDArray[np.bool_]:
        """Alive candidates of one queue."""
        same: NDArray[np.bool_] = self.queue_code == self.queue_index.get(queue, -1)
        return self.alive & same


def choose_victims(
    stmt: Statement,
    request: GangRequest,
    pool: VictimPool,
    policy: PolicyContext,
    *,
    max_victims: int,
    for_job: JobId,
    eligible: NDArray[np.bool_] | None = None,
    admissible: Admissible | None = None,
    accept: Accept | None = None,
    tally: dict[str, int] | None = None,
) -> VictimChoice | None:
    """The cheapest victim set whose eviction gives `request` a valid placement, or None.

    `eligible` (per `pool.ordered` entry; default: every alive candidate) narrows the candidates.
    `tally`, when given, counts the domains searched (`domains`) and the placement calls
    (`placements`) of this search.
    """
    chosen = pool.alive if eligible is None else (eligible & pool.alive)
    if max_victims <= 0 or not chosen.any():
        return None
    best: VictimChoice | None = None
    successes = 0
    for domain_mask, local in _candidate_domains(stmt, request, pool, chosen):
        domain_request = replace(request, node_mask=domain_mask)
        found = _search_domain(stmt, domain_request, local, policy, max_victims, for_job, admissible, accept, tally)
        if found is None:
            continue
        successes += 1
        if best is None or _set_cost(found.victims) < _set_cost(best.victims):
            best = found
        if successes >= MAX_SUCCESSES:
            break
    return best


def _candidate_domains(
    stmt: Statement,
    request: GangRequest,
    pool: VictimPool,
    chosen: NDArray[np.bool_],
) -> list[tuple[NDArray[np.bool_], list[RunningJob]]]:
    """(node mask, candidates touching it, cheapest first) per domain worth searching, most free room first.

    Vectorised: free slots per node and freeable GPUs per node are summed per domain with `bincount`,
    so choosing domains costs O(nodes + candidate replicas) array work, not O(domains × candidates).
    """
    state = stmt.state
    level = request.required_level
    if level == NONE and request.replicas == 1:
        level = state.n_levels  # one replica lives on one node: each node is a domain
    mask = request.node_mask if level == NONE else request.node_mask & (state.domain[:, level] != NONE)
    rows = chosen[pool.row_job] & mask[pool.row_node]
    if not rows.any():
        return []
    row_job = pool.row_job[rows]
    if level == NONE:
        return [(mask, [pool.ordered[int(i)] for i in np.unique(row_job)])]
    column = state.domain[:, level]
    row_node = pool.row_node[rows]
    n_domains = int(state.domain_count[level])
    need = request.replicas * max(request.gpus, 1)
    slots = _node_slots(stmt, request)
    ids = column[mask]
    dom_slots = np.bincount(ids, weights=slots[mask], minlength=n_domains)
    row_dom = column[row_node].astype(np.int64)
    dom_freeable = np.bincount(row_dom, weights=pool.row_gpus[rows], minlength=n_domains)
    potential = dom_slots + dom_freeable * _units_per_gpu(request)
    useful = np.unique(row_dom)
    useful = useful[potential[useful] >= need]  # even evicting every candidate there would not make room
    order = useful[np.lexsort((useful, -dom_slots[useful]))][:MAX_DOMAINS]
    out: list[tuple[NDArray[np.bool_], list[RunningJob]]] = []
    for d in order:
        local = np.unique(row_job[row_dom == d])  # sorted indices = cheapest first
        out.append((mask & (column == d), [pool.ordered[int(i)] for i in local]))
    return out


def _units_per_gpu(request: GangRequest) -> int:
    # Upper bound on how many more slots of the gang's size one freed GPU can add: ceil(1000 / milli).
    return -(-GPU_MILLI // request.gpu_milli) if request.gpu_milli > 0 else 1


def _node_slots(stmt: Statement, request: GangRequest) -> NDArray[np.int64]:
    """Per node: free device-slots of the gang's per-GPU size (replicas for a CPU-only gang)."""
    state = stmt.state
    if request.gpus == 0 or request.gpu_milli <= 0:
        return np.full(state.n_nodes, request.replicas, dtype=np.int64)
    slots: NDArray[np.int64] = (state.gpu_free_milli // request.gpu_milli).sum(axis=1).astype(np.int64)
    return slots


def _fit_units(stmt: Statement, request: GangRequest, mask: NDArray[np.bool_]) -> int:
    """How many device-slots of the gang's size are free inside `mask` (a necessary condition)."""
    if request.gpus == 0 or request.gpu_milli <= 0:
        return request.replicas
    free = stmt.state.gpu_free_milli[mask]
    return int((free // request.gpu_milli).sum())


def _search_domain(
    stmt: Statement,
    request: GangRequest,
    local: Sequence[RunningJob],
    policy: PolicyContext,
    max_victims: int,
    for_job: JobId,
    admissible: Admissible | None,
    accept: Accept | None,
    tally: dict[str, int] | None = None,
) -> VictimChoice | None:
    """Greedy in cost order until the gang fits, then prune victims it does not need."""
    calls = 0

    def place(req: GangRequest) -> GangPlacement | Unplaceable:
        nonlocal calls
        calls += 1
        return place_gang(stmt.state, req, policy)

    mark = stmt.checkpoint()
    need = request.replicas * max(request.gpus, 1)
    taken: list[RunningJob] = []
    placement: GangPlacement | None = None
    try:
        for victim in local:
            if len(taken) >= max_victims:
                break
            if admissible is not None and not admissible(victim, taken):
                continue
            stmt.evict(victim, EvictionKind.PREEMPT, for_job, "what-if")
            taken.append(victim)
            if request.gpus > 0 and _fit_units(stmt, request, request.node_mask) < need:
                continue
            result = place(request)
            if isinstance(result, GangPlacement) and (accept is None or accept(taken, request, result)):
                placement = result
                break
        if placement is None:
            return None
        # Prune: drop the most expensive victims the placement can do without.
        for victim in reversed(list(taken)):
            if len(taken) == 1:
                break
            trial = [v for v in taken if v is not victim]
            stmt.rollback(mark)
            for v in trial:
                stmt.evict(v, EvictionKind.PREEMPT, for_job, "what-if")
            result = place(request)
            if isinstance(result, GangPlacement) and (accept is None or accept(trial, request, result)):
                taken, placement = trial, result
        # Recompute the placement for exactly the final set (the state the caller will replay).
        stmt.rollback(mark)
        for v in taken:
            stmt.evict(v, EvictionKind.PREEMPT, for_job, "what-if")
        final = place(request)
        if not isinstance(final, GangPlacement) or (accept is not None and not accept(taken, request, final)):
            return None
        return VictimChoice(victims=tuple(taken), request=request, placement=final)
    finally:
        stmt.rollback(mark)
        if tally is not None:
            tally["domains"] = tally.get("domains", 0) + 1
            tally["placements"] = tally.get("placements", 0) + calls
