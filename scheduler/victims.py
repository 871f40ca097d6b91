"""Topology-aware victim choice: which running jobs to stop so that a waiting gang really fits.

What it holds: `choose_victims`, shared by reclaim, preempt and consolidate. Candidate domains come
in tiers (`search_tiers`): first the domains of the gang's preferred level (for a gang without one and
without a required level: of the tightest level that could hold it), then those of its required
level (each node for a one-replica gang; the whole allowed node set for a gang without a required
level). In each domain it evicts candidates cheapest first on the cycle's `Statement`, asks
`place_gang` after each one whether the gang now has a valid placement *inside that domain*, then
un-evicts every victim the placement does not need. The cheapest successful set wins: lowest
highest-priority, then landing in one preferred domain, then fewest jobs, fewest GPUs, youngest.
Everything is rolled back before returning; the caller replays the chosen evictions and the returned
placement, so an eviction is never issued without the preemptor's placement in the same plan.

Cost (see `docs/cycle.md`): domains are chosen by the replicas their nodes could hold with every
candidate gone (per node, not per domain sum of GPUs); a domain where evicting every admissible
candidate did not make room is remembered per request shape in the `VictimPool` until a committed
move touches it, so other queues' jobs of the same shape skip it; pruning un-evicts one victim per
trial.

Why not "cheapest jobs anywhere": peers that pick victims without looking at topology free GPUs the
waiting gang cannot use (Kueue #5243, Volcano reclaim bugs); here freed GPUs are proven useful by an
actual placement in the post-eviction state.

Who calls it: `actions/reclaim.py`, `actions/preempt.py`, `actions/consolidate.py`.
What it must not do: decide whether eviction is allowed at all (the action passes `admissible` and
`accept` for its own rules), or leave anything changed in the statement.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import attrgetter, is_
from typing import Any

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import GPU_MILLI, EvictionKind, JobId, NodeName, QueueName, RunningJob
from leitstand.scheduler.placement import GangPlacement, GangRequest, Unplaceable, place_gang
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.running import VictimSlots
from leitstand.scheduler.state import ClusterState
from leitstand.scheduler.statement import Statement
from leitstand.scheduler.victim_kernels import moves_refuted_kernel, node_candidates_kernel

Admissible = Callable[[RunningJob, Sequence[RunningJob]], bool]
"""May this candidate join the victims already taken? Called with `taken` already evicted on the
statement (state and accounting show them gone). Must be monotone: more victims never make a
candidate admissible again."""
Accept = Callable[[Sequence[RunningJob], GangRequest, GangPlacement], bool]
"""Final check of a set, called with exactly these victims evicted on the statement and the placement
found in that state; must leave the statement as it found it."""

_Held = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]

MAX_DOMAINS = 16
"""Candidate domains tried per tier per waiting gang (the most promising first); bounds a search."""
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


def move_cost(running: RunningJob) -> tuple[int, float, int, str]:
    """Sort key of consolidation moves, cheapest first: fewest GPUs, youngest, lowest priority, id."""
    return (running.job.gpu_milli_total, -running.started_at, running.job.priority, running.job.id)


_JOB_ID = attrgetter("job.id")

_CostKey = Callable[[RunningJob], tuple[int, float, int, str]]
"""`victim_cost` or `move_cost` (a pool sorts by either in numpy; any other key in Python)."""


@dataclass(frozen=True, slots=True)
class _Columns:
    """A pool's candidates flattened: one entry per job, its replicas' nodes as consecutive rows."""

    ordered: list[RunningJob]
    counts: NDArray[np.int64]
    """Replicas per job (rows)."""
    nodes: NDArray[np.int64]
    """Per row: the node index of the replica."""
    devices: NDArray[np.int64]
    """Per job: devices one replica holds (at least 1)."""
    priority: NDArray[np.int64]
    started: NDArray[np.float64]
    milli: NDArray[np.int64]
    slot: NDArray[np.int64]
    """Per job: its slot in the `VictimSlots` the pool was built from, -1 when it has none."""
    gpu_bits: NDArray[np.int64]
    """Per row: the GPU indices the replica holds, as bits (bit g: GPU g of its node)."""
    gpu_milli: NDArray[np.int64]
    """Per job: the milli it holds on each of its devices (`Job.gpu_milli`)."""
    cpu: NDArray[np.int64]
    """Per job: CPU milli per replica."""
    memory: NDArray[np.int64]
    """Per job: memory MiB per replica."""


def _columns(
    candidates: Sequence[RunningJob], index: Mapping[NodeName, int], slot: NDArray[np.int64] | None = None
) -> tuple[_Columns, NDArray[np.str_]]:
    """Every per-candidate column in one pass over the jobs, in the given order, and the job ids
    (only sorting reads them: `_sorted`). (Separate generator passes cost ~60 ms a pool at 25,000
    candidates, and a contended cycle builds two pools.)"""
    count_list: list[int] = []
    node_list: list[int] = []
    device_list: list[int] = []
    priority_list: list[int] = []
    started_list: list[float] = []
    milli_list: list[int] = []
    id_list: list[str] = []
    bits_list: list[int] = []
    per_gpu_list: list[int] = []
    cpu_list: list[int] = []
    memory_list: list[int] = []
    for v in candidates:
        job = v.job
        placements = v.placements
        count_list.append(len(placements))
        if len(placements) == 1:
            node_list.append(index[placements[0].node])
            bits_list.append(_bits(placements[0].gpu_indices))
        else:
            node_list.extend([index[p.node] for p in placements])
            bits_list.extend([_bits(p.gpu_indices) for p in placements])
        gpus = job.gpus
        device_list.append(gpus if gpus > 1 else 1)
        priority_list.append(job.priority)
        started_list.append(v.started_at)
        milli_list.append(job.gpu_milli_total)
        id_list.append(job.id)
        per_gpu_list.append(job.gpu_milli)
        cpu_list.append(job.cpu_milli)
        memory_list.append(job.memory_mib)
    cols = _Columns(
        ordered=list(candidates),
        counts=np.array(count_list, dtype=np.int64),
        nodes=np.array(node_list, dtype=np.int64),
        devices=np.array(device_list, dtype=np.int64),
        priority=np.array(priority_list, dtype=np.int64),
        started=np.array(started_list, dtype=np.float64),
        milli=np.array(milli_list, dtype=np.int64),
        slot=np.full(len(candidates), -1, dtype=np.int64) if slot is None else slot,
        gpu_bits=np.array(bits_list, dtype=np.int64),
        gpu_milli=np.array(per_gpu_list, dtype=np.int64),
        cpu=np.array(cpu_list, dtype=np.int64),
        memory=np.array(memory_list, dtype=np.int64),
    )
    return cols, np.array(id_list, dtype=str)


def _bits(gpu_indices: Sequence[int]) -> int:
    """GPU indices as bits (`_Columns.gpu_bits`)."""
    bits = 0
    for g in gpu_indices:
        bits |= 1 << g
    return bits


def _permute(cols: _Columns, perm: NDArray[np.int64]) -> _Columns:
    """The columns with jobs in `perm` order (each job's rows follow it)."""
    counts = cols.counts[perm]
    given_start = np.cumsum(cols.counts) - cols.counts
    row_start = np.cumsum(counts) - counts
    # row r of the new order is row (given_start[job] + offset in its job) of the given order
    rows = np.arange(int(counts.sum()), dtype=np.int64)
    given_rows = np.repeat(given_start[perm] - row_start, counts) + rows
    order = perm.tolist()
    return _Columns(
        ordered=list(map(cols.ordered.__getitem__, order)),
        counts=counts,
        nodes=cols.nodes[given_rows],
        devices=cols.devices[perm],
        priority=cols.priority[perm],
        started=cols.started[perm],
        milli=cols.milli[perm],
        slot=cols.slot[perm],
        gpu_bits=cols.gpu_bits[given_rows],
        gpu_milli=cols.gpu_milli[perm],
        cpu=cols.cpu[perm],
        memory=cols.memory[perm],
    )


_Key = tuple[int, float, int, str]
"""A candidate's cost key as `victim_cost` or `move_cost` gives it."""


def _key_fields(cols: _Columns, key: _CostKey) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    """The columns of the key's first three fields, in its order (`victim_cost` or `move_cost`)."""
    if key is victim_cost:
        return cols.priority, -cols.started, cols.milli
    return cols.milli, -cols.started, cols.priority


def _sort_keys(cols: _Columns, ids: NDArray[np.str_], key: _CostKey) -> list[_Key]:
    """Per job, its key (`victim_cost` or `move_cost`) as the tuple the key function gives, built
    from the columns (a kept pool finds where new jobs go among its sorted keys by `bisect`)."""
    first, second, third = _key_fields(cols, key)
    return list(zip(first.tolist(), second.tolist(), third.tolist(), ids.tolist(), strict=True))


def _sorted(cols: _Columns, ids: NDArray[np.str_], key: _CostKey) -> tuple[_Columns, NDArray[np.str_]]:
    """The columns and ids in the order `sorted(key=key)` gives, for the two keys above: one
    `lexsort` over the key's fields, last field first (ids are unique; numpy compares str by code
    point as Python does)."""
    first, second, third = _key_fields(cols, key)
    perm = np.lexsort((ids, third, second, first)).astype(np.int64)
    return _permute(cols, perm), ids[perm]


def _spliced(kept: list[Any], fresh: list[Any], at: list[int]) -> list[Any]:
    """`kept` with fresh item i inserted before kept item `at[i]` (`at` ascending; items with the
    same `at` in fresh order), by slices (C-level copies, one Python step per fresh item)."""
    out: list[Any] = []
    start = 0
    for item, position in zip(fresh, at, strict=True):
        out += kept[start:position]
        out.append(item)
        start = position
    out += kept[start:]
    return out


def _merged(
    kept: _Columns, keep: NDArray[np.bool_], keep_list: list[bool], fresh: _Columns, at: list[int]
) -> _Columns:
    """The `keep` entries of `kept` (`keep_list`: the same mask as a list) in their order, with
    fresh entry i inserted before kept entry `at[i]` of them (`at` ascending; entries with the same
    `at` in fresh order). Each column is written once by where its entries go (kept entry j goes
    `j` plus the fresh entries at or before it further; fresh entry i goes to `at[i] + i`); each
    fresh job's rows are inserted before the rows of the kept job it precedes."""
    n_kept, n_fresh = int(np.count_nonzero(keep)), len(at)
    at_array = np.array(at, dtype=np.int64)
    fresh_to = at_array + np.arange(n_fresh, dtype=np.int64)
    kept_to = np.arange(n_kept, dtype=np.int64) + np.searchsorted(at_array, np.arange(n_kept), side="right")

    def column(old: NDArray[Any], new: NDArray[Any]) -> NDArray[Any]:
        out = np.empty(n_kept + n_fresh, dtype=old.dtype)
        out[kept_to] = old[keep]
        out[fresh_to] = new
        return out

    counts = kept.counts[keep]
    row_at = np.concatenate(([0], np.cumsum(counts)))[at_array]  # the first row of the kept job each precedes
    kept_rows = np.repeat(keep, kept.counts)
    fresh_at = np.repeat(row_at, fresh.counts)

    def rows(old: NDArray[np.int64], new: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.insert(old[kept_rows], fresh_at, new)

    return _Columns(
        ordered=_spliced(list(compress(kept.ordered, keep_list)), fresh.ordered, at),
        counts=column(kept.counts, fresh.counts),
        nodes=rows(kept.nodes, fresh.nodes),
        devices=column(kept.devices, fresh.devices),
        priority=column(kept.priority, fresh.priority),
        started=column(kept.started, fresh.started),
        milli=column(kept.milli, fresh.milli),
        slot=column(kept.slot, fresh.slot),
        gpu_bits=rows(kept.gpu_bits, fresh.gpu_bits),
        gpu_milli=column(kept.gpu_milli, fresh.gpu_milli),
        cpu=column(kept.cpu, fresh.cpu),
        memory=column(kept.memory, fresh.memory),
    )


class _KeptPool:
    """What a pool leaves in `ClusterState.cycle_cache` for the next one built with its key."""

    __slots__ = ("_where", "cols", "keys", "slots")

    def __init__(self, cols: _Columns, keys: list[_Key], slots: VictimSlots | None) -> None:
        self.cols = cols
        """Sorted."""
        self.keys = keys
        """`_sort_keys` of `cols`, ascending (empty for a pool that is not kept)."""
        self.slots = slots
        """The `VictimSlots` that `cols.slot` refers to (None: no candidate has a slot)."""
        self._where: dict[int, int] | None = None

    @property
    def where(self) -> dict[int, int]:
        """`id()` of each candidate object → its entry (built on first use). The ids stay unique
        while `cols.ordered` holds the objects, so an id found here is that very object."""
        if self._where is None:
            self._where = dict(zip(map(id, self.cols.ordered), range(len(self.cols.ordered)), strict=True))
        return self._where


def _keep(
    kept: dict[Any, Any], key: _CostKey, cols: _Columns, keys: list[_Key], slots: VictimSlots | None
) -> _KeptPool:
    pool = kept[key] = _KeptPool(cols, keys, slots)
    return pool


def _kept_columns(
    kept: dict[Any, Any],
    candidates: Sequence[RunningJob],
    index: Mapping[NodeName, int],
    key: _CostKey,
    slots: tuple[VictimSlots, NDArray[np.int64]] | None = None,
) -> _KeptPool:
    """The sorted columns of `candidates` (kept in `kept` for the next pool), from the last pool's
    where it holds the same job objects.

    A pool between cycles differs by the jobs that ended, started, aged past the minimum runtime or
    moved; a `RunningJob` is immutable, so the same object holds what it held then. Those are taken
    from the last pool's arrays (still in order), the others read as in a fresh pool, sorted among
    themselves and merged in by their keys (kept as the tuples the key function gives, `_sort_keys`;
    `bisect_right`: the result is the full sort's, as keys are unique; a new candidate goes after a
    kept one with an equal key, as a stable sort of the kept entries followed by the new ones puts
    it).

    Which candidates the last pool holds: with `slots` (the `VictimSlots` the candidates come from
    and each one's slot there, -1 for one without) and a last pool built from the same
    `VictimSlots`, by slot — a slot never changes its job while that object lives, so this is array
    indexing, no look-up per job. Otherwise one look-up per candidate by `id()`, each one found
    checked to be that very object, all in C (a copied or unpickled cache holds ids of objects that
    may be gone). When most candidates are new, or a check fails, a fresh pool is built instead."""
    source, slot = (None, None) if slots is None else slots
    last: _KeptPool | None = kept.get(key)
    if last is not None:
        n = len(candidates)
        keep: NDArray[np.bool_] | None = None
        if source is not None and slot is not None and last.slots is source:
            size = len(source.jobs) + 1  # the last entry stands for "no slot" (-1) and stays False
            now_in = np.zeros(size, dtype=np.bool_)
            now_in[slot] = True
            now_in[-1] = False
            keep = now_in[last.cols.slot]
            had = np.zeros(size, dtype=np.bool_)
            had[last.cols.slot] = True
            had[-1] = False
            new = np.flatnonzero(~had[slot])
        else:
            at = np.fromiter(map(last.where.get, map(id, candidates), repeat(-1, n)), dtype=np.int64, count=n)
            found = np.flatnonzero(at >= 0)
            new = np.flatnonzero(at < 0)
            was = map(last.cols.ordered.__getitem__, at[found].tolist())
            if all(map(is_, was, map(candidates.__getitem__, found.tolist()))):
                keep = np.zeros(len(last.cols.ordered), dtype=np.bool_)
                keep[at[found]] = True
                # the kept entries' slots are those of the candidates they are (or none)
                relabel = np.full(len(last.cols.ordered), -1, dtype=np.int64)
                if slot is not None:
                    relabel[at[found]] = slot[found]
                last = _KeptPool(replace(last.cols, slot=relabel), last.keys, source)
        if keep is not None and new.size <= n // 2:
            fresh, fresh_ids = _sorted(
                *_columns([candidates[i] for i in new.tolist()], index, None if slot is None else slot[new]), key
            )
            fresh_keys = _sort_keys(fresh, fresh_ids, key)
            keep_list = keep.tolist()
            kept_keys = list(compress(last.keys, keep_list))
            before: list[int] = []  # per fresh job, the kept entry it goes before
            low = 0
            for fresh_key in fresh_keys:  # (ascending: each search starts where the last one ended)
                low = bisect_right(kept_keys, fresh_key, low)
                before.append(low)
            cols = _merged(last.cols, keep, keep_list, fresh, before)
            return _keep(kept, key, cols, _spliced(kept_keys, fresh_keys, before), source)
    cols, ids = _sorted(*_columns(candidates, index, slot), key)
    return _keep(kept, key, cols, _sort_keys(cols, ids, key), source)


def _set_cost(victims: Sequence[RunningJob], preferred: bool) -> tuple[int, bool, int, int, float]:
    return (
        max(v.job.priority for v in victims),
        not preferred,
        len(victims),
        sum(v.gpu_milli_total for v in victims),
        -max(v.started_at for v in victims),
    )


class VictimPool:
    """The running jobs an action may evict, sorted cheapest first and flattened into arrays once.

    Built once per action (O(candidates × replicas)); each search then selects its candidates with
    a boolean array (`eligible`) instead of walking Python objects, and evicted jobs are dropped
    with `remove`. Row r of the flat arrays is one replica: `row_job[r]` (index into `ordered`),
    `row_node[r]`, `row_gpus[r]` (devices it holds, at least 1), `row_bits[r]` (which GPUs).

    It also remembers hopeless domains: `failed[(shape, level, domain)]` = (the candidates evicted
    there, the epoch), meaning "with all of these gone the gang still had no placement there". A
    later search of the same shape skips the domain while its candidates are a subset of those and
    no committed move (`changed`) touched its nodes since.
    """

    def __init__(
        self,
        stmt: Statement,
        candidates: Sequence[RunningJob],
        key: Callable[[RunningJob], tuple[int, float, int, str]] = victim_cost,
        *,
        kept: dict[Any, Any] | None = None,
        slots: tuple[VictimSlots, NDArray[np.int64]] | None = None,
    ) -> None:
        """`kept`, when given (with one of the two cost keys), is where pools of earlier cycles left
        their columns (`ClusterState.cycle_cache`, one entry per key): only candidates that were not
        in the last pool built there, as the same `RunningJob` object, are read job by job; the rest
        is taken from the last pool's arrays (`_kept_columns`). `slots`: where the candidates come
        from (`CycleContext.victim_candidates`), so that the last pool's are found by slot. The pool
        is the same either way."""
        state = stmt.state
        if key is victim_cost or key is move_cost:
            if kept is None:
                self._kept = _KeptPool(_sorted(*_columns(candidates, state.node_index), key)[0], [], None)
            else:
                self._kept = _kept_columns(kept, candidates, state.node_index, key, slots)
            cols = self._kept.cols
        else:
            given, _ = _columns(candidates, state.node_index)
            perm = np.array(sorted(range(len(candidates)), key=lambda i: key(candidates[i])), dtype=np.int64)
            cols = _permute(given, perm)
            self._kept = _KeptPool(cols, [], None)  # (its keys are never read)
        self.ordered: list[RunningJob] = cols.ordered
        self._rank: dict[JobId, int] | None = None
        self._queues: tuple[dict[QueueName, int], NDArray[np.int64]] | None = None
        counts = cols.counts
        self.row_job = np.repeat(np.arange(len(self.ordered), dtype=np.int64), counts)
        self.row_count = counts
        self.row_start = np.cumsum(counts) - counts
        self.row_node = cols.nodes
        self.row_gpus = np.repeat(cols.devices, counts)
        self.row_bits = cols.gpu_bits
        """Per row: the GPU indices the replica holds, as bits."""
        self.job_milli = cols.gpu_milli
        """Per entry: the milli its job holds on each of its devices."""
        self.job_cpu = cols.cpu
        self.job_memory = cols.memory
        self.priority = cols.priority
        self.alive = np.ones(len(self.ordered), dtype=np.bool_)
        self._shrinkable: NDArray[np.bool_] | None = None
        self.shrunk = np.zeros(len(self.ordered), dtype=np.bool_)
        """Candidates shrunk in this cycle: their entry here no longer matches what they hold, so
        they are not evicted whole in the same cycle (they may be shrunk again)."""
        self.epoch = 0
        self.node_epoch = np.zeros(state.n_nodes, dtype=np.int64)
        """Per node: the epoch of the last committed move that changed it."""
        self.failed: dict[tuple[object, ...], tuple[frozenset[int], int]] = {}
        self._homes: NDArray[np.int8] | None = None
        self._labelled: dict[int, NDArray[np.bool_]] = {}

    def __len__(self) -> int:
        return int(self.alive.sum())

    @property
    def queue_index(self) -> dict[QueueName, int]:
        """Queue → code, numbered in order of first appearance in `ordered` (built on first use, with
        `queue_code`: consolidation, which takes any queue's jobs, never asks)."""
        return self._queue_codes()[0]

    @property
    def queue_code(self) -> NDArray[np.int64]:
        """Per entry, its job's queue code (`queue_index`)."""
        return self._queue_codes()[1]

    def _queue_codes(self) -> tuple[dict[QueueName, int], NDArray[np.int64]]:
        known = self._queues
        if known is None:
            queues = [held.job.queue for held in self.ordered]
            index = {q: i for i, q in enumerate(dict.fromkeys(queues))}
            known = self._queues = (
                index,
                np.fromiter(map(index.__getitem__, queues), dtype=np.int64, count=len(queues)),
            )
        return known

    @property
    def rank(self) -> dict[JobId, int]:
        """Job id → its entry (built on first use: most pools never remove a job)."""
        if self._rank is None:
            ordered = self.ordered  # (made in C; an id listed twice keeps its last entry, as before)
            self._rank = dict(zip(map(_JOB_ID, ordered), range(len(ordered)), strict=True))
        return self._rank

    def entry(self, held: RunningJob) -> int:
        """The entry of candidate `held` (this very object)."""
        return self._kept.where[id(held)]

    def remove(self, job_id: JobId) -> None:
        i = self.rank.get(job_id)
        if i is not None:
            self.alive[i] = False

    @property
    def shrinkable(self) -> NDArray[np.bool_]:
        """Elastic candidates holding more replicas than their minimum (shrink before evict); built
        on first use, so cycles without elastic jobs never pay for it."""
        if self._shrinkable is None:
            self._shrinkable = np.fromiter(
                (v.job.min_replicas is not None and len(v.placements) > v.job.min_replicas for v in self.ordered),
                dtype=np.bool_,
                count=len(self.ordered),
            )
        return self._shrinkable

    def shrink(self, job_id: JobId) -> None:
        """`job_id` gave up replicas (a shrink was committed)."""
        i = self.rank.get(job_id)
        if i is not None:
            self.shrunk[i] = True

    def rows_of(self, chosen: NDArray[np.bool_]) -> NDArray[np.int64]:
        """Indices of the rows (replicas) of the chosen candidates, in row order. A few chosen jobs
        (preemption inside one queue) cost O(their replicas), not a pass over every row."""
        jobs = np.flatnonzero(chosen)
        if jobs.size * 8 >= len(self.ordered):
            return np.flatnonzero(chosen[self.row_job])
        counts = self.row_count[jobs]
        total = int(counts.sum())
        offsets = np.repeat(self.row_start[jobs] - (np.cumsum(counts) - counts), counts)
        rows: NDArray[np.int64] = offsets + np.arange(total, dtype=np.int64)
        return rows

    def held_by(self, rows: NDArray[np.int64]) -> _Held:
        """What the given rows (replicas) hold: per device (node, GPU index, milli) and per row (CPU
        milli, memory MiB), read from the pool's columns (each row's GPUs as bits, each job's milli
        per device, CPU and memory), as `victim_kernels` reads them at the node level."""
        jobs = self.row_job[rows]
        bits = self.row_bits[rows]
        width = int(bits.max(initial=0)).bit_length()
        row, gpu = np.nonzero((bits[:, None] >> np.arange(width, dtype=np.int64)) & 1)
        return (
            self.row_node[rows][row],
            gpu.astype(np.int64),
            self.job_milli[jobs][row],
            self.job_cpu[jobs],
            self.job_memory[jobs],
        )

    def labelled(self, state: ClusterState, level: int) -> NDArray[np.bool_]:
        """Nodes that carry a label at `level` (static; computed once per level)."""
        known = self._labelled.get(level)
        if known is None:
            known = state.domain[:, level] != NONE
            self._labelled[level] = known
        return known

    def homes(self) -> NDArray[np.int8]:
        """Per entry: could a node other than its own hold it as the state is (1), not (-1), not
        asked yet (0) — `moves_refuted_kernel`'s memo, cleared by every committed move (`changed`)."""
        if self._homes is None:
            self._homes = np.zeros(len(self.ordered), dtype=np.int8)
        return self._homes

    def changed(self, nodes: Iterable[int]) -> None:
        """A move was committed on these nodes: domain failures recorded there no longer hold."""
        self.epoch += 1
        if self._homes is not None:
            self._homes.fill(0)
        index = np.fromiter(nodes, dtype=np.int64)
        if index.size:
            self.node_epoch[index] = self.epoch

    def of_queues(self, queues: set[QueueName]) -> NDArray[np.bool_]:
        """Alive candidates of these queues."""
        wanted = np.zeros(len(self.queue_index) + 1, dtype=np.bool_)
        for q in queues:
            code = self.queue_index.get(q)
            if code is not None:
                wanted[code] = True
        return self.alive & wanted[self.queue_code]

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
    rehome: bool = False,
    tally: dict[str, int] | None = None,
) -> VictimChoice | None:
    """The cheapest victim set whose eviction gives `request` a valid placement, or None.

    `eligible` (per `pool.ordered` entry; default: every alive candidate) narrows the candidates.
    `rehome`: `accept` takes a set only if every victim is placed again elsewhere (consolidation);
    then a one-replica gang's node is not searched when a victim the search would evict surely
    has nowhere to go (`victim_kernels.moves_refuted_kernel`: the same result, without the
    evictions, placements and accepts of a search that cannot succeed).
    `tally`, when given, counts the domains searched (`domains`), those skipped as known hopeless
    (`domains_skipped`) or refuted up front (`domains_refuted`) and the placement calls
    (`placements`) of this search.
    """
    chosen = pool.alive if eligible is None else (eligible & pool.alive)
    if max_victims <= 0 or not chosen.any():
        return None
    state = stmt.state
    shape = _shape(request)
    best: VictimChoice | None = None
    best_cost: tuple[int, bool, int, int, float] | None = None
    successes = 0
    cheapest_priority = int(pool.priority[chosen].min())
    # Without an admissibility filter the greedy pass evicts exactly the first `max_victims`
    # candidates of a domain: a domain where even those cannot make room is left out up front.
    cap = max_victims if admissible is None else None
    refute = rehome and admissible is None and request.replicas == 1
    for level in search_tiers(state, request):
        if best_cost is not None and best_cost[0] <= cheapest_priority:
            break  # a later tier cannot beat the best set on priority, and loses on locality or size
        for domain, nodes, domain_mask, local in _candidate_domains(stmt, request, pool, chosen, level, cap):
            key = (shape, level, domain)
            known = pool.failed.get(key)
            if (
                known is not None
                and int(pool.node_epoch[nodes].max(initial=0)) <= known[1]
                and known[0].issuperset(local)
            ):
                _count(tally, "domains_skipped")
                continue
            if (
                refute
                and level == state.n_levels
                and len(nodes) == 1
                and _moves_refuted(state, request, pool, int(nodes[0]), local, max_victims)
            ):
                _count(tally, "domains_refuted")
                continue
            if domain_mask is None:  # built only for domains actually searched
                domain_mask = np.zeros(state.n_nodes, dtype=np.bool_)
                domain_mask[nodes] = True
            domain_request = replace(request, node_mask=domain_mask)
            found, hopeless, tried = _search_domain(
                stmt,
                domain_request,
                nodes,
                _Lazy(pool.ordered, local),
                policy,
                max_victims,
                for_job,
                admissible,
                accept,
                tally,
            )
            if found is None:
                if hopeless:
                    pool.failed[key] = (frozenset(map(pool.entry, tried)), pool.epoch)
                continue
            successes += 1
            cost = _set_cost(found.victims, _in_preferred(state, request, found.placement))
            if best_cost is None or cost < best_cost:
                best, best_cost = found, cost
            if successes >= MAX_SUCCESSES:
                return best
    return best


def _moves_refuted(
    state: ClusterState,
    request: GangRequest,
    pool: VictimPool,
    node: int,
    local: NDArray[np.int64],
    max_victims: int,
) -> bool:
    """`moves_refuted_kernel` for one node's search (`choose_victims` with `rehome`)."""
    return bool(
        moves_refuted_kernel(
            node,
            local,
            max_victims,
            pool.row_start,
            pool.row_count,
            pool.row_node,
            pool.row_bits,
            pool.job_milli,
            pool.job_cpu,
            pool.job_memory,
            state.gpu_free_milli,
            state.gpu_count,
            state.cpu_free_milli,
            state.memory_free_mib,
            state.gpu_whole_free,
            state.gpu_max_free_milli,
            request.gpus,
            request.gpu_milli if request.gpus else 0,
            request.cpu_milli,
            request.memory_mib,
            pool.homes(),
        )
    )


def _count(tally: dict[str, int] | None, key: str, amount: int = 1) -> None:
    if tally is not None:
        tally[key] = tally.get(key, 0) + amount


def _shape(request: GangRequest) -> tuple[object, ...]:
    """Requests with equal shapes succeed or fail alike in the same domain and state."""
    return (
        request.replicas,
        request.gpus,
        request.gpu_milli,
        request.cpu_milli,
        request.memory_mib,
        request.required_level,
        request.preferred_level,
        request.node_mask.tobytes(),
    )


def search_tiers(state: ClusterState, request: GangRequest) -> list[int]:
    """Levels whose domains are searched, in order; `NONE` stands for the whole allowed node set.

    One replica: each node. A required level R: the preferred level's domains first when it lies
    below R, then R's. No required level (several replicas): the preferred level's domains (or, with
    no preference, those of the tightest level whose largest domain has GPUs enough), then anywhere.
    """
    node_level = state.n_levels
    required, preferred = request.required_level, request.preferred_level
    if request.replicas <= 1 and required == NONE:
        return [node_level]
    if required != NONE:
        return [preferred, required] if preferred != NONE and preferred > required else [required]
    if preferred != NONE:
        return [preferred, NONE]
    need = request.replicas * max(request.gpus, 1)
    for level in range(node_level, -1, -1):
        column = state.domain[:, level]
        labelled = column != NONE
        if not labelled.any():
            continue
        capacity = np.bincount(column[labelled], weights=state.gpu_count[labelled])
        if capacity.max(initial=0) >= need:
            return [level, NONE]
    return [NONE]


def _in_preferred(state: ClusterState, request: GangRequest, placement: GangPlacement) -> bool:
    """Does the placement put every replica in one domain of the preferred level (if any)?"""
    level = request.preferred_level
    if level == NONE:
        return True
    ids = state.domain[placement.nodes, level]
    return bool(ids[0] != NONE and (ids == ids[0]).all())


def _candidate_domains(
    stmt: Statement,
    request: GangRequest,
    pool: VictimPool,
    chosen: NDArray[np.bool_],
    level: int,
    cap: int | None = None,
    *,
    compiled: bool = True,
) -> list[tuple[int, NDArray[np.int64], NDArray[np.bool_] | None, NDArray[np.int64]]]:
    """(domain id, its allowed nodes, its node mask or None when it is just those nodes, candidate
    indices cheapest first) per domain worth searching at `level`, most free room first, at most
    `MAX_DOMAINS`. At the node level the compiled `_node_candidates` answers (`compiled=False`: the
    array passes below, which give the same list; the tests compare the two).

    A domain is worth searching when its nodes could hold the gang with every candidate there gone:
    per node, the replicas that fit in its free device-slots plus the slots its candidates hold
    (capped at the node's GPUs), summed over the domain. Vectorised with `bincount`: O(nodes +
    candidate replicas) array work, not O(domains × candidates).

    `cap`, when given, is how many candidates the search of a domain evicts at most, cheapest first
    (no admissibility filter, so exactly the domain's first `cap`): of the domains kept above,
    those where even these could not make room are dropped as well (the same upper bound, counted
    over those candidates only). It never drops a domain the search could succeed in.
    """
    state = stmt.state
    if level == state.n_levels and compiled:  # a domain is one node: compiled (`victim_kernels`)
        return _node_candidates(stmt, request, pool, chosen, cap)
    mask = request.node_mask if level == NONE else request.node_mask & pool.labelled(state, level)
    rows = pool.rows_of(chosen)
    rows = rows[mask[pool.row_node[rows]]]
    if not rows.size:
        return []
    row_job = pool.row_job[rows]
    if level == NONE:
        # rows come in row order, so a job's rows are adjacent and row_job ascends: no sort needed
        first = np.ones(row_job.size, dtype=np.bool_)
        first[1:] = row_job[1:] != row_job[:-1]
        return [(NONE, np.flatnonzero(mask), mask, row_job[first])]
    row_node = pool.row_node[rows]
    width = max(request.gpus, 1)
    units = _units_per_gpu(request)
    slots_now = _node_slots(stmt, request)
    if request.gpus > 0 and request.gpu_milli > 0:
        freeable = np.bincount(row_node, weights=pool.row_gpus[rows], minlength=state.n_nodes).astype(np.int64)
        potential = np.minimum(slots_now + freeable * units, state.gpu_count.astype(np.int64) * units)
        replicas_now, replicas_then = slots_now // width, potential // width
    else:
        replicas_now = replicas_then = slots_now
    column = state.domain[:, level]
    n_domains = int(state.domain_count[level])
    ids = column[mask]
    dom_now = np.bincount(ids, weights=replicas_now[mask], minlength=n_domains)
    dom_then = np.bincount(ids, weights=replicas_then[mask], minlength=n_domains)
    row_dom = column[row_node].astype(np.int64)
    useful = np.flatnonzero(np.bincount(row_dom, minlength=n_domains))  # domains with candidates
    useful = useful[dom_then[useful] >= request.replicas]  # even evicting every candidate would not make room
    order = useful[np.lexsort((useful, -dom_now[useful]))][:MAX_DOMAINS]
    if not order.size:
        return []
    # The candidates of the chosen domains, grouped by domain, cheapest first inside each.
    position = np.full(n_domains, -1, dtype=np.int64)
    position[order] = np.arange(order.size)
    where = position[row_dom]
    keep = where >= 0
    kept_pos, kept_job = where[keep], row_job[keep]
    by = np.lexsort((kept_job, kept_pos))
    kept_pos, kept_job = kept_pos[by], kept_job[by]
    first = np.ones(kept_job.size, dtype=np.bool_)  # a gang's rows in one domain are adjacent: keep one
    first[1:] = (kept_job[1:] != kept_job[:-1]) | (kept_pos[1:] != kept_pos[:-1])
    kept_pos, kept_job = kept_pos[first], kept_job[first]
    bounds = np.searchsorted(kept_pos, np.arange(order.size + 1))
    viable = None
    if cap is not None and request.gpus > 0 and request.gpu_milli > 0:
        # Device by device: the replicas each node could hold with the domain's `cap` cheapest
        # candidates gone, counted as `_Fit` counts them after evictions, and no more than the
        # CPU and memory then free allow (the placement's per-replica checks). (Searches with an
        # admissibility filter may evict any of a domain's candidates: the bound over all of them
        # above is what they get; measured, the device count saves them nothing.)
        top = (np.arange(kept_pos.size) - bounds[kept_pos]) < cap
        n_jobs = len(pool.ordered)
        dom_rows = rows[keep][np.isin(where[keep] * n_jobs + row_job[keep], kept_pos[top] * n_jobs + kept_job[top])]
        dev_node, dev_gpu, dev_milli, cpu, memory = pool.held_by(dom_rows)
        room = _replicas_then(state, request, slots_now // width, dev_node, dev_gpu, dev_milli)
        at = pool.row_node[dom_rows]
        for need, free, held_by_rows in (
            (request.cpu_milli, state.cpu_free_milli, cpu),
            (request.memory_mib, state.memory_free_mib, memory),
        ):
            if need > 0:  # and no more replicas than the node's CPU and memory hold with them gone
                then = free + np.bincount(at, weights=held_by_rows, minlength=state.n_nodes)
                np.minimum(room, (then // need).astype(np.int64), out=room)
        viable = (np.bincount(ids, weights=room[mask], minlength=n_domains)[order] >= request.replicas).tolist()
    return list(_domains(state, level, mask, order.tolist(), kept_job, bounds.tolist(), viable))


def _node_candidates(
    stmt: Statement,
    request: GangRequest,
    pool: VictimPool,
    chosen: NDArray[np.bool_],
    cap: int | None,
) -> list[tuple[int, NDArray[np.int64], NDArray[np.bool_] | None, NDArray[np.int64]]]:
    """`_candidate_domains` at the node level, where a domain is one node: the same bound, ranking
    and candidate lists, and with `cap` the device-by-device bound over each listed node's `cap`
    cheapest candidates (what they hold there, from the pool's per-row GPU bits and per-job sizes),
    all computed by `victim_kernels.node_candidates_kernel`."""
    state = stmt.state
    width = max(request.gpus, 1)
    by_devices = request.gpus > 0 and request.gpu_milli > 0
    slots_now = _node_slots(stmt, request)
    listed = np.empty(MAX_DOMAINS, dtype=np.int64)
    jobs = np.empty(pool.row_job.size, dtype=np.int64)
    bounds = np.empty(MAX_DOMAINS + 1, dtype=np.int64)
    bound = cap is not None and by_devices
    viable_out = np.empty(MAX_DOMAINS, dtype=np.bool_)
    count = node_candidates_kernel(
        pool.row_job,
        pool.row_node,
        pool.row_gpus,
        pool.row_bits,
        pool.job_milli,
        pool.job_cpu,
        pool.job_memory,
        chosen,
        np.ascontiguousarray(request.node_mask, dtype=np.bool_),
        slots_now,
        state.gpu_count,
        state.gpu_free_milli,
        state.cpu_free_milli,
        state.memory_free_mib,
        by_devices,
        _units_per_gpu(request),
        width,
        request.replicas,
        request.gpu_milli if request.gpus else 0,
        request.cpu_milli,
        request.memory_mib,
        MAX_DOMAINS,
        cap if bound and cap is not None else 0,
        listed,
        jobs,
        bounds,
        viable_out,
    )
    if not count:
        return []
    order = listed[:count]
    viable = viable_out[:count].tolist() if bound else None
    ends = bounds[: count + 1].tolist()
    return [
        (node, np.array([node], dtype=np.int64), None, jobs[ends[k] : ends[k + 1]])
        for k, node in enumerate(order.tolist())
        if viable is None or viable[k]
    ]


def _replicas_then(
    state: ClusterState,
    request: GangRequest,
    replicas_now: NDArray[np.int64],
    nodes: NDArray[np.int64],
    gpus: NDArray[np.int64],
    milli: NDArray[np.int64],
) -> NDArray[np.int64]:
    """Per node: the gang's replicas it could hold if the devices given (node, GPU index, milli held)
    were freed; `replicas_now` on nodes none of them is on. Exact for the GPUs (the slots `_Fit`
    counts); the caller caps it by CPU and memory."""
    room = replicas_now.copy()
    if not nodes.size:
        return room
    touched, local = np.unique(nodes, return_inverse=True)
    width = state.gpu_free_milli.shape[1]
    held = np.bincount(local * width + gpus, weights=milli, minlength=touched.size * width).reshape(-1, width)
    free = np.minimum(state.gpu_free_milli[touched] + held.astype(np.int64), GPU_MILLI)
    room[touched] = _slots(free, request.gpu_milli) // max(request.gpus, 1)
    return room


def _slots(free_milli: NDArray[np.integer], gpu_milli: int) -> NDArray[np.int64]:
    """Per row of a node × GPU array of free milli: device-slots of `gpu_milli` each (whole GPUs
    when `gpu_milli` is a whole GPU)."""
    if gpu_milli >= GPU_MILLI:
        whole: NDArray[np.int64] = (free_milli >= GPU_MILLI).sum(axis=1).astype(np.int64)
        return whole
    slots: NDArray[np.int64] = (free_milli // gpu_milli).sum(axis=1).astype(np.int64)
    return slots


def _domains(
    state: ClusterState,
    level: int,
    mask: NDArray[np.bool_],
    order: list[int],
    kept_job: NDArray[np.int64],
    bounds: list[int],
    viable: list[bool] | None = None,
) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.bool_] | None, NDArray[np.int64]]]:
    start = state.domain_start[level]
    members = state.domain_order[level]
    for k, d in enumerate(order):
        if viable is not None and not viable[k]:
            continue
        nodes = members[int(start[d]) : int(start[d + 1])].astype(np.int64)
        yield d, nodes[mask[nodes]], None, kept_job[bounds[k] : bounds[k + 1]]


def _units_per_gpu(request: GangRequest) -> int:
    # Upper bound on how many more slots of the gang's size one freed GPU can add: ceil(1000 / milli).
    return -(-GPU_MILLI // request.gpu_milli) if request.gpu_milli > 0 else 1


def _node_slots(stmt: Statement, request: GangRequest) -> NDArray[np.int64]:
    """Per node: free device-slots of the gang's per-GPU size (replicas for a CPU-only gang)."""
    state = stmt.state
    if request.gpus == 0 or request.gpu_milli <= 0:
        return np.full(state.n_nodes, request.replicas, dtype=np.int64)
    if request.gpu_milli >= GPU_MILLI:
        return state.gpu_whole_free.astype(np.int64)  # kept current by the state: no pass over GPUs
    return _slots(state.gpu_free_milli, request.gpu_milli)


class _Fit:
    """A necessary condition kept current during one domain search: the domain's nodes have free
    device-slots for every replica. The slots are counted per node once, then only the nodes a
    victim occupies are recounted after each eviction or restore (O(replicas of the victim))."""

    def __init__(self, state: ClusterState, request: GangRequest, nodes: NDArray[np.int64]) -> None:
        self.state, self.request = state, request
        self.trivial = request.gpus == 0 or request.gpu_milli <= 0
        self.total = 0
        if self.trivial:
            return
        counts = self._count(nodes)
        self.counts = np.full(state.n_nodes, -1, dtype=np.int64)  # -1: not in the domain
        self.counts[nodes] = counts
        self.total = int(counts.sum())

    def _count(self, nodes: NDArray[np.int64]) -> NDArray[np.int64]:
        request, state = self.request, self.state
        per_node: NDArray[np.integer]
        if request.gpu_milli >= GPU_MILLI:
            per_node = state.gpu_whole_free[nodes]
        else:
            per_node = _slots(state.gpu_free_milli[nodes], request.gpu_milli)
        counts: NDArray[np.int64] = (per_node // request.gpus).astype(np.int64)
        return counts

    def update(self, running: RunningJob) -> None:
        """Recount the domain nodes `running` occupies (after it was evicted or restored)."""
        if self.trivial:
            return
        index, request, state = self.state.node_index, self.request, self.state
        for p in running.placements:
            node = index[p.node]
            old = int(self.counts[node])
            if old < 0:
                continue  # outside the domain
            if request.gpu_milli >= GPU_MILLI:
                new = int(state.gpu_whole_free[node]) // request.gpus
            else:
                new = sum(free // request.gpu_milli for free in state.gpu_free_milli[node].tolist()) // request.gpus
            self.counts[node] = new
            self.total += new - old

    def may_fit(self) -> bool:
        return self.trivial or self.total >= self.request.replicas


class _Lazy:
    """The candidates of a domain as running jobs, fetched only as far as the greedy pass goes (a
    gang searched anywhere may have thousands of candidates and stop after a few)."""

    def __init__(self, ordered: Sequence[RunningJob], indices: NDArray[np.int64]) -> None:
        self.ordered, self.indices = ordered, indices

    def __iter__(self) -> Iterator[RunningJob]:
        ordered = self.ordered
        for i in self.indices.tolist():
            yield ordered[i]


def _touches(state: ClusterState, running: RunningJob, placement: GangPlacement) -> bool:
    """Does `running` hold anything on a node the placement uses?"""
    used = set(placement.nodes.tolist())
    return any(state.node_index[p.node] in used for p in running.placements)


def _search_domain(
    stmt: Statement,
    request: GangRequest,
    nodes: NDArray[np.int64],
    local: Iterable[RunningJob],
    policy: PolicyContext,
    max_victims: int,
    for_job: JobId,
    admissible: Admissible | None,
    accept: Accept | None,
    tally: dict[str, int] | None = None,
) -> tuple[VictimChoice | None, bool, list[RunningJob]]:
    """Greedy in cost order until the gang fits, then un-evict victims it does not need.

    Returns (choice or None, hopeless, victims evicted in the greedy pass). `hopeless` says that the
    gang had no placement even with every admissible candidate gone (no cap, no `accept` veto): a
    proof for any search of the same shape with a subset of these candidates in the same state.
    """
    calls = 0

    def place() -> GangPlacement | Unplaceable:
        nonlocal calls
        calls += 1
        return place_gang(stmt.state, request, policy)

    mark = stmt.checkpoint()
    taken: list[RunningJob] = []
    placement: GangPlacement | None = None
    capped = vetoed = False
    fit = _Fit(stmt.state, request, nodes)
    try:
        for victim in local:
            if len(taken) >= max_victims:
                capped = True
                break
            if admissible is not None and not admissible(victim, taken):
                continue
            stmt.evict(victim, EvictionKind.PREEMPT, for_job, "what-if")
            fit.update(victim)
            taken.append(victim)
            if not fit.may_fit():
                continue
            result = place()
            if isinstance(result, GangPlacement):
                if accept is None or accept(taken, request, result):
                    placement = result
                    break
                vetoed = True
        if placement is None:
            return None, not (capped or vetoed), taken
        # Prune: put back the most expensive victims the placement can do without. The state after
        # each kept trial is exactly "the remaining victims evicted", so the last placement found is
        # valid for the final set as the caller will replay it.
        # A victim on none of the placement's nodes is put back without a placement call (the
        # placement stays valid); one last call then asks the policy again in the final state.
        stale = False
        for victim in reversed(list(taken)):
            if len(taken) == 1:
                break
            trial_mark = stmt.checkpoint()
            stmt.restore(victim)
            fit.update(victim)
            trial = [v for v in taken if v is not victim]
            if not _touches(stmt.state, victim, placement):
                if accept is None or accept(trial, request, placement):
                    taken, stale = trial, True
                    continue
            else:
                trial_result = place() if fit.may_fit() else None
                if isinstance(trial_result, GangPlacement) and (accept is None or accept(trial, request, trial_result)):
                    taken, placement, stale = trial, trial_result, False
                    continue
            stmt.rollback(trial_mark)
            fit.update(victim)
        if stale:
            result = place()
            if isinstance(result, GangPlacement) and (accept is None or accept(taken, request, result)):
                placement = result
        return VictimChoice(victims=tuple(taken), request=request, placement=placement), False, taken
    finally:
        stmt.rollback(mark)
        _count(tally, "domains")
        _count(tally, "placements", calls)
