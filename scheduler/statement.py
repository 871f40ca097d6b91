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
    Job,
    JobId,
    QueueName,
    ReplicaPlacement,
    RunningJob,
)
from leitstand.scheduler.placement import GangPlacement, GangRequest, apply_placement, replica_placements
from leitstand.scheduler.state import ClusterState


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

    @classmethod
    def empty(cls, tree: QueueTree) -> QueueAccounting:
        acc = cls(tree=tree)
        for name in tree.order:
            acc.allocated_milli[name] = 0
            acc.nonpreemptible_milli[name] = 0
            acc.paths[name] = tree.path(name)
        return acc

    def knows(self, queue: QueueName) -> bool:
        return queue in self.paths

    def add(self, job: Job, sign: int = 1) -> None:
        """Charge (sign=1) or refund (sign=-1) a job to its queue and all its ancestors."""
        path = self.paths.get(job.queue)
        if path is None:
            return
        amount = sign * job.gpu_milli_total
        for name in path:
            self.allocated_milli[name] += amount
            if not job.is_preemptible:
                self.nonpreemptible_milli[name] += amount

    def limit_block(
        self, queue: QueueName, milli: int, freed: Mapping[QueueName, int] | None = None
    ) -> tuple[QueueName, int, int] | None:
        """The first level (top-down) whose limit `milli` more would exceed: (queue, allocated, limit).

        `freed` is milli-GPU per queue that an eviction would give back before the job starts.
        """
        for name in self.paths[queue]:
            limit = self.tree.queues[name].limit_milli
            if limit is None:
                continue
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


@dataclass(frozen=True, slots=True)
class _Restore:
    running: RunningJob


@dataclass(frozen=True, slots=True)
class _Evict:
    running: RunningJob
    eviction: Eviction


@dataclass(slots=True)
class Statement:
    """An undo log of binds and evictions over the cycle's working state.

    Every operation takes effect immediately on `state` and `accounting`; `rollback(mark)` undoes
    the operations after `checkpoint()` returned `mark`, newest first.
    """

    state: ClusterState
    accounting: QueueAccounting
    now: float = 0.0
    _ops: list[_Bind | _Restore | _Evict] = field(default_factory=list)
    running: dict[JobId, RunningJob] = field(default_factory=dict)
    """Jobs holding resources in the working state, keyed by id (snapshot's running + new binds)."""

    def checkpoint(self) -> int:
        return len(self._ops)

    def rollback(self, mark: int) -> None:
        while len(self._ops) > mark:
            op = self._ops.pop()
            if isinstance(op, _Bind | _Restore):
                self.state.release_job(op.running)
                self.accounting.add(op.running.job, -1)
                del self.running[op.running.job.id]
            else:
                self.state.allocate_job(op.running)
                self.accounting.add(op.running.job, 1)
                self.running[op.running.job.id] = op.running

    def bind(self, job: Job, request: GangRequest, placement: GangPlacement) -> RunningJob:
        """Start `job` where `placement` says (charged to the state and its queue)."""
        apply_placement(self.state, request, placement)
        running = RunningJob(job=job, placements=replica_placements(self.state, placement), started_at=self.now)
        self.accounting.add(job, 1)
        self.running[job.id] = running
        self._ops.append(_Bind(running))
        return running

    def evict(self, running: RunningJob, kind: EvictionKind, for_job: JobId, reason: str) -> None:
        """Stop a running job and give its resources back to the state and its queue."""
        self.state.release_job(running)
        self.accounting.add(running.job, -1)
        self.running.pop(running.job.id, None)
        self._ops.append(_Evict(running, Eviction(running.job.id, kind, for_job, reason)))

    def restore(self, running: RunningJob) -> None:
        """What-if only: put an evicted job back where it was (undone by `rollback` like a bind).

        The victim search un-evicts one victim at a time to see whether the gang still fits, instead
        of rolling back and evicting the whole set again; it rolls back everything before returning.
        """
        self.state.allocate_job(running)
        self.accounting.add(running.job, 1)
        self.running[running.job.id] = running
        self._ops.append(_Restore(running))

    def nodes_since(self, mark: int) -> set[int]:
        """Indices of the nodes whose resources the operations after `mark` changed."""
        index = self.state.node_index
        return {index[p.node] for op in self._ops[mark:] for p in op.running.placements}

    def bindings(self) -> tuple[Binding, ...]:
        """The binds left in the log, in the order they were made."""
        return tuple(Binding(op.running.job.id, op.running.placements) for op in self._ops if isinstance(op, _Bind))

    def evictions(self) -> tuple[Eviction, ...]:
        return tuple(op.eviction for op in self._ops if isinstance(op, _Evict))

    def placements_of(self, job_id: JobId) -> tuple[ReplicaPlacement, ...] | None:
        held = self.running.get(job_id)
        return None if held is None else held.placements
