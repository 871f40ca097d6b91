"""The order of work in a cycle: which queue goes next, and which of its jobs.

What it holds (Run:ai / KAI "order of work", `notes/runai-semantics.md`):
- jobs inside a leaf queue: higher job priority first, then older (`created_at`), then id;
- queues: a queue whose next job keeps it within its fair share (at every level of the tree)
  before one that would go above it; then one whose next job stays within quota; then higher queue
  priority; then the smaller saturation (allocated / fair share), compared top-down along the tree
  path; then the older queue, then the name.

`WorkQueue` is a heap of leaf queues keyed as above. After a job is handed out, its queue is pushed
back with a key computed from the *current* accounting (the caller binds or skips the job first), so
a queue that just received GPUs falls behind one that is still owed its share. Cost: O(log queues)
per job, no per-job pass over all queues.

Who calls it: the actions (allocate, reclaim, preempt, consolidate) through `CycleContext`.
What it must not do: place, evict, or read the cluster state.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence

from leitstand.scheduler.fairshare import FairShares, saturation
from leitstand.scheduler.model import Job, QueueName
from leitstand.scheduler.statement import QueueAccounting

_EPS_MILLI = 1e-6

QueueKey = tuple[int, int, int, tuple[float, ...], float, str]


def job_order_key(job: Job) -> tuple[int, float, str]:
    """Inside one leaf queue: higher priority first, then older, then id (deterministic)."""
    return (-job.priority, job.created_at, job.id)


def queue_order_key(accounting: QueueAccounting, shares: FairShares, leaf: QueueName, job: Job) -> QueueKey:
    """Sort key of `leaf` when `job` is its next job (smaller goes first)."""
    path = accounting.paths[leaf]
    amount = job.gpu_milli_total
    allocated = accounting.allocated_milli
    within_share = all(allocated[q] + amount <= shares.share_milli[q] + _EPS_MILLI for q in path)
    within_quota = allocated[leaf] + amount <= shares.deserved_milli[leaf] + _EPS_MILLI
    queue = accounting.tree.queues[leaf]
    return (
        0 if within_share else 1,
        0 if within_quota else 1,
        -queue.priority,
        tuple(saturation(allocated[q], shares.share_milli[q]) for q in path),
        queue.created_at,
        leaf,
    )


class WorkQueue:
    """Hands out pending jobs one at a time in the order of work; re-keys a queue after each job."""

    def __init__(
        self,
        jobs_by_queue: Mapping[QueueName, Sequence[Job]],
        accounting: QueueAccounting,
        shares: FairShares,
    ) -> None:
        self._accounting = accounting
        self._shares = shares
        self._jobs = {q: sorted(jobs, key=job_order_key) for q, jobs in jobs_by_queue.items() if jobs}
        self._next = dict.fromkeys(self._jobs, 0)
        self._heap: list[tuple[QueueKey, QueueName]] = []
        for q in self._jobs:
            self._push(q)

    def _push(self, queue: QueueName) -> None:
        i = self._next[queue]
        jobs = self._jobs[queue]
        if i < len(jobs):
            heapq.heappush(self._heap, (queue_order_key(self._accounting, self._shares, queue, jobs[i]), queue))

    def __iter__(self) -> Iterator[Job]:
        while self._heap:
            _, queue = heapq.heappop(self._heap)
            i = self._next[queue]
            jobs = self._jobs[queue]
            if i >= len(jobs):
                continue
            self._next[queue] = i + 1
            yield jobs[i]
            self._push(queue)

    def drain(self, queue: QueueName) -> list[Job]:
        """Take the rest of `queue`'s jobs out of the order (e.g. the queue is at its limit)."""
        i = self._next.get(queue, 0)
        jobs = self._jobs.get(queue, [])
        rest = jobs[i:]
        self._next[queue] = len(jobs)
        return rest
