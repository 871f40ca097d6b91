"""What-if moves with checkpoint and rollback: the cycle's working copy of the cluster and the queues.

What it holds: `QueueAccounting` (allocated milli-GPU per queue at every level of the tree, the
non-preemptible part of it, and the limit / in-quota checks that read them) and `Statement`, an
undo log over a `ClusterState` plus a `QueueAccounting` in the style of KAI's Statement: every bind
and eviction is applied at once (so the next decision sees it), `checkpoint()` marks a point and
`rollback(mark)` undoes everything after it. Whatever is left in the log when the cycle closes is
the plan.

Who calls it: the actions in `leitstand.scheduler.actions` (through their `CycleContext`) and the
victim search in `victims.py`, which tries victim sets by evicting them and rolling back.

What it must not do: decide anything (no policy, no ordering), log, or touch the snapshot's values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from leitstand.scheduler.fairshare import QueueTree
from leitstand.scheduler.model import (
    GPU_MILLI,
    Binding,
    Eviction,
    EvictionKind,
    Growth,
    Job,
    JobId,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    Shrink,
)
from leitstand.scheduler.placement import GangPlacement, GangRequest, apply_placement, replica_placements
from leitstand.scheduler.state import ClusterState


def _partial(op: _Evict) -> bool:
    """Did this eviction stop only some replicas of the job (a shrink)?"""
    return op.before is not None and len(op.before.placements) > len(op.running.placements)


def gpus(milli: float) -> str:
    """Milli-GPU as a short GPU count for messages: 16000 → "16", 2500 → "2.5"."""
    return f"{milli / GPU_MILLI:.3g}" if milli % GPU_MILLI else f"{int(milli) // GPU_MILLI}"


@dataclass(slots=True)
class QueueAccounting:
    """Allocated milli-GPU per queue, kept for every level: a leaf's jobs count toward its ancestors.

    Updated incrementally by `Statement` (one dict update per level per bind or eviction), never
    recomputed from the job list inside a cycle.
    """

    tree: QueueTree
    allocated_milli: dict[QueueName, int] = field(default_factory=dict)
    nonpreemptible_milli: dict[QueueName, int] = field(default_factory=dict)
    """The part of `allocated_milli` held by non-preemptible jobs (must stay within quota)."""
    paths: dict[QueueName, tuple[QueueName, ...]] = field(default_factory=dict)
    """Leaf → its path from the top-level queue down to itself."""
    limited: dict[QueueName, tuple[QueueName, ...]] = field(default_factory=dict)
    """Queue → the queues of its path that set a limit (top-down); `limit_block` checks only these."""

    @classmethod
    def empty(cls, tree: QueueTree) -> QueueAccounting:
        acc = cls(tree=tree)
        for name in tree.order:
            acc.allocated_milli[name] = 0
            acc.nonpreemptible_milli[name] = 0
            acc.paths[name] = tree.path(name)
            acc.limited[name] = tuple(q for q in acc.paths[name] if tree.queues[q].limit_milli is not None)
        return acc

    def knows(self, queue: QueueName) -> bool:
        return queue in self.paths

    def add(self, job: Job, sign: int = 1, milli: int | None = None) -> None:
        """Charge (sign=1) or refund (sign=-1) a job to its queue and all its ancestors: `milli`, or
        the whole gang (`Job.gpu_milli_total`) when None (`RunningJob.gpu_milli_total` for held replicas)."""
        self.charge(job.queue, sign * (job.gpu_milli_total if milli is None else milli), preemptible=job.is_preemptible)

    def charge(self, queue: QueueName, milli: int, *, preemptible: bool) -> None:
        """Add `milli` (negative: refund) to `queue` and all its ancestors; unknown queues are ignored."""
        path = self.paths.get(queue)
        if path is None:
            return
        for name in path:
            self.allocated_milli[name] += milli
            if not preemptible:
                self.nonpreemptible_milli[name] += milli

    def limit_block(
        self, queue: QueueName, milli: int, freed: Mapping[QueueName, int] | None = None
    ) -> tuple[QueueName, int, int] | None:
        """The first level (top-down) whose limit `milli` more would exceed: (queue, allocated, limit).

        `freed` is milli-GPU per queue that an eviction would give back before the job starts.
        """
        limited = self.limited[queue]
        if not limited:  # most queues: no limit on the path (and no iterator made, millions of times a replay)
            return None
        for name in limited:
            limit = self.tree.queues[name].limit_milli
            assert limit is not None
            allocated = self.allocated_milli[name] - (freed.get(name, 0) if freed else 0)
            if allocated + milli > limit:
                return name, allocated, limit
        return None

    def in_quota_block(self, queue: QueueName, milli: int) -> tuple[QueueName, int, int] | None:
        """For a non-preemptible job: the first level whose quota it would exceed (queue, used, quota)."""
        for name in self.paths[queue]:
            quota = self.tree.queues[name].quota_milli
            used = self.nonpreemptible_milli[name]
            if used + milli > quota:
                return name, used, quota
        return None


@dataclass(frozen=True, slots=True)
class _Bind:
    running: RunningJob
    before: None = None


@dataclass(frozen=True, slots=True)
class _Restore:
    running: RunningJob
    """The replicas put back (the whole job, or a part of an elastic one)."""
    before: RunningJob | None
    """What the job held before (None: nothing)."""


@dataclass(frozen=True, slots=True)
class _Grow:
    running: RunningJob
    """Only the new replicas."""
    before: RunningJob


@dataclass(frozen=True, slots=True)
class _Evict:
    running: RunningJob
    """The replicas stopped: the whole job, or a part of an elastic one (a shrink)."""
    eviction: Eviction
    before: RunningJob | None
    """What the job held before; more than `running` for a shrink."""


def _without(held: tuple[ReplicaPlacement, ...], gone: tuple[ReplicaPlacement, ...]) -> tuple[ReplicaPlacement, ...]:
    """`held` minus one occurrence of each of `gone` (equal placements are interchangeable)."""
    rest = list(held)
    for p in gone:
        rest.remove(p)
    return tuple(rest)


@dataclass(slots=True)
class Statement:
    """An undo log of binds, growths and evictions over the cycle's working state.

    Every operation takes effect immediately on `state` and `accounting`; `rollback(mark)` undoes
    the operations after `checkpoint()` returned `mark`, newest first. An eviction or restore may
    concern a part of an elastic job (some of its replicas): `running` then keeps the rest.
    """

    state: ClusterState
    accounting: QueueAccounting
    now: float = 0.0
    _ops: list[_Bind | _Restore | _Grow | _Evict] = field(default_factory=list)
    running: dict[JobId, RunningJob] = field(default_factory=dict)
    """Jobs holding resources in the working state, keyed by id (snapshot's running + new binds)."""
    touched: set[JobId] = field(default_factory=set)
    """Every job whose entry in `running` an operation changed since the statement was made, even if
    it was rolled back: the other entries are still the ones `running` started with."""

    def checkpoint(self) -> int:
        return len(self._ops)

    def rollback(self, mark: int) -> None:
        while len(self._ops) > mark:
            op = self._ops.pop()
            piece = op.running
            if isinstance(op, _Evict):
                self.state.allocate_job(piece)
                self.accounting.add(piece.job, 1, piece.gpu_milli_total)
            else:
                self.state.release_job(piece)
                self.accounting.add(piece.job, -1, piece.gpu_milli_total)
            if op.before is not None:
                self.running[piece.job.id] = op.before
            elif isinstance(op, _Evict):  # evicted while not listed as running: put it back as it was
                self.running[piece.job.id] = piece
            else:
                del self.running[piece.job.id]

    def bind(self, job: Job, request: GangRequest, placement: GangPlacement) -> RunningJob:
        """Start `job` where `placement` says (charged to the state and its queue)."""
        apply_placement(self.state, request, placement)
        running = RunningJob(job=job, placements=replica_placements(self.state, placement), started_at=self.now)
        self.accounting.add(job, 1, running.gpu_milli_total)
        self.running[job.id] = running
        self.touched.add(job.id)
        self._ops.append(_Bind(running))
        return running

    def grow(self, held: RunningJob, request: GangRequest, placement: GangPlacement) -> RunningJob:
        """Add the replicas `placement` says to the running elastic job `held`; returns the new ones."""
        apply_placement(self.state, request, placement)
        added = RunningJob(held.job, replica_placements(self.state, placement), held.started_at)
        self.accounting.add(held.job, 1, added.gpu_milli_total)
        self.running[held.job.id] = RunningJob(held.job, held.placements + added.placements, held.started_at)
        self.touched.add(held.job.id)
        self._ops.append(_Grow(added, held))
        return added

    def evict(self, running: RunningJob, kind: EvictionKind, for_job: JobId, reason: str) -> None:
        """Stop a running job — or, for an elastic job, the replicas in `running` — and give the
        resources back to the state and the queue."""
        self.state.release_job(running)
        self.accounting.add(running.job, -1, running.gpu_milli_total)
        job_id = running.job.id
        before = self.running.get(job_id)
        if before is None or before is running or len(before.placements) <= len(running.placements):
            self.running.pop(job_id, None)
        else:  # a part of an elastic job: the rest keeps running
            rest = _without(before.placements, running.placements)
            self.running[job_id] = RunningJob(before.job, rest, before.started_at)
        self.touched.add(job_id)
        self._ops.append(_Evict(running, Eviction(job_id, kind, for_job, reason), before))

    def restore(self, running: RunningJob) -> None:
        """What-if only: put an evicted job (or evicted replicas) back where they were (undone by
        `rollback` like a bind).

        The victim search un-evicts one victim at a time to see whether the gang still fits, instead
        of rolling back and evicting the whole set again; it rolls back everything before returning.
        """
        self.state.allocate_job(running)
        self.accounting.add(running.job, 1, running.gpu_milli_total)
        job_id = running.job.id
        before = self.running.get(job_id)
        if before is None:
            self.running[job_id] = running
        else:
            self.running[job_id] = RunningJob(before.job, before.placements + running.placements, before.started_at)
        self.touched.add(job_id)
        self._ops.append(_Restore(running, before))

    def nodes_since(self, mark: int) -> set[int]:
        """Indices of the nodes whose resources the operations after `mark` changed."""
        index = self.state.node_index
        return {index[p.node] for op in self._ops[mark:] for p in op.running.placements}

    def bindings(self) -> tuple[Binding, ...]:
        """The binds left in the log, in the order they were made."""
        return tuple(Binding(op.running.job.id, op.running.placements) for op in self._ops if isinstance(op, _Bind))

    def evictions(self) -> tuple[Eviction, ...]:
        """Jobs stopped whole (shrinks of elastic jobs are in `shrinks`)."""
        return tuple(op.eviction for op in self._ops if isinstance(op, _Evict) and not _partial(op))

    def shrinks(self) -> tuple[Shrink, ...]:
        """Replicas taken from elastic jobs that keep running, one entry per job and waiting job."""
        merged: dict[tuple[JobId, JobId], Shrink] = {}
        for op in self._ops:
            if isinstance(op, _Evict) and _partial(op):
                e = op.eviction
                key = (e.job_id, e.for_job)
                known = merged.get(key)
                placements = op.running.placements if known is None else known.placements + op.running.placements
                merged[key] = Shrink(e.job_id, placements, e.kind, e.for_job, e.reason)
        return tuple(merged.values())

    def grows(self) -> tuple[Growth, ...]:
        """New replicas of running elastic jobs, one entry per job."""
        merged: dict[JobId, tuple[ReplicaPlacement, ...]] = {}
        for op in self._ops:
            if isinstance(op, _Grow):
                job_id = op.running.job.id
                merged[job_id] = merged.get(job_id, ()) + op.running.placements
        return tuple(Growth(job_id, placements) for job_id, placements in merged.items())

    def placements_of(self, job_id: JobId) -> tuple[ReplicaPlacement, ...] | None:
        held = self.running.get(job_id)
        return None if held is None else held.placements
