"""The order of work in a cycle: which queue goes next, and which of its jobs.

What it holds (Run:ai / KAI "order of work"; docs/cycle.md):
- jobs inside a leaf queue: higher job priority first, then older (`created_at`), then id;
- queues: a queue whose next job keeps it within its fair share (at every level of the tree)
  before one that would go above it; then one whose next job stays within quota; then higher queue
  priority; then the smaller saturation (allocated / fair share), compared top-down along the tree
  path; then the older queue, then the name.

`WorkQueue` is a heap of leaf queues keyed as above. After a job is handed out, its queue is pushed
back with a key computed from the *current* accounting (the caller binds or skips the job first), so
a queue that just received GPUs falls behind one that is still owed its share. Cost: O(log queues)
per job, no per-job pass over all queues, and no key at all while only one queue has jobs left.

Who calls it: the actions (allocate, reclaim, preempt, consolidate) through `CycleContext`.
What it must not do: place, evict, or read the cluster state.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet

from leitstand.scheduler.fairshare import FairShares, saturation
from leitstand.scheduler.model import Job, JobId, QueueName
from leitstand.scheduler.statement import QueueAccounting

_EPS_MILLI = 1e-6

QueueKey = tuple[int, int, int, tuple[float, ...], float, str]


job_order_key: Callable[[Job], tuple[int, float, str]] = operator.attrgetter("order_key")
"""Inside one leaf queue: higher priority first, then older, then id (deterministic); the key is
derived once per job (`Job.order_key`), so a sort of the backlog calls no Python code per job."""


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


class _LeafKey:
    """`queue_order_key` of one leaf with the parts fixed for the cycle (path, shares, priority) bound once.

    Gives exactly the tuple `queue_order_key` gives; only the accounting lookups are left per call.
    """

    __slots__ = ("_allocated", "_created_at", "_deserved", "_leaf", "_levels", "_neg_priority")

    def __init__(self, accounting: QueueAccounting, shares: FairShares, leaf: QueueName) -> None:
        queue = accounting.tree.queues[leaf]
        self._allocated = accounting.allocated_milli
        self._levels = tuple((q, shares.share_milli[q]) for q in accounting.paths[leaf])
        self._deserved = shares.deserved_milli[leaf]
        self._neg_priority = -queue.priority
        self._created_at = queue.created_at
        self._leaf = leaf

    def __call__(self, job: Job) -> QueueKey:
        # One plain loop instead of `all(...)` and `tuple(saturation(...))` over generators: called
        # once per job handed out, it was the ordering's largest cost in a contended cycle.
        allocated = self._allocated
        amount = job.gpu_milli_total
        within_share = 0
        levels: list[float] = []
        for q, share in self._levels:
            held = allocated[q]
            if held + amount > share + _EPS_MILLI:
                within_share = 1
            levels.append(saturation(held, share))
        within_quota = allocated[self._leaf] + amount <= self._deserved + _EPS_MILLI
        return (
            within_share,
            0 if within_quota else 1,
            self._neg_priority,
            tuple(levels),
            self._created_at,
            self._leaf,
        )


def _listed(jobs: Sequence[Job]) -> list[Job]:
    """`jobs` itself when it is a list (read, never changed here), else a list of them."""
    return jobs if isinstance(jobs, list) else list(jobs)


class WorkQueue:
    """Hands out pending jobs one at a time in the order of work; re-keys a queue after each job.

    Cost: a queue's key is computed only when another queue competes with it — while a single
    queue has jobs left (e.g. one-queue clusters), its jobs are handed out in job order with no
    key at all. `presorted=True` says every list is already in `job_order_key` order (the cycle
    sorts the pending jobs once), so they are not sorted again — nor copied: the order reads them
    and never changes them, and the caller must not change them while it hands jobs out.
    `skip`: jobs by id left out as if not in the lists (passed over when reached, so a caller that
    stops early never looks at the rest; the cycle's jobs bound so far, `CycleContext.work_queue`).
    """

    def __init__(
        self,
        jobs_by_queue: Mapping[QueueName, Sequence[Job]],
        accounting: QueueAccounting,
        shares: FairShares,
        *,
        presorted: bool = False,
        skip: AbstractSet[JobId] = frozenset(),
    ) -> None:
        self._skip = skip
        self._jobs: dict[QueueName, list[Job]] = {
            q: _listed(jobs) if presorted else sorted(jobs, key=job_order_key)
            for q, jobs in jobs_by_queue.items()
            if jobs
        }
        self._keys = {q: _LeafKey(accounting, shares, q) for q in self._jobs}
        self._next = dict.fromkeys(self._jobs, 0)
        self._heap: list[tuple[QueueKey, QueueName]] = []
        for q in self._jobs:
            self._push(q)

    def _first(self, queue: QueueName) -> int:
        """The index of the queue's next job that is not skipped (the queue's place moves there)."""
        i = self._next[queue]
        skip = self._skip
        if skip:
            jobs = self._jobs[queue]
            while i < len(jobs) and jobs[i].id in skip:
                i += 1
            self._next[queue] = i
        return i

    def _push(self, queue: QueueName) -> None:
        i = self._first(queue)
        jobs = self._jobs[queue]
        if i < len(jobs):
            heapq.heappush(self._heap, (self._keys[queue](jobs[i]), queue))

    def __iter__(self) -> Iterator[Job]:
        while self._heap:
            _, queue = heapq.heappop(self._heap)
            jobs = self._jobs[queue]
            while (i := self._first(queue)) < len(jobs):
                self._next[queue] = i + 1
                yield jobs[i]
                if self._heap:
                    self._push(queue)  # re-keyed on the accounting the caller just changed
                    break
                # No other queue is waiting: this one goes next whatever its key, so none is computed.

    def lone_rest(self, queue: QueueName) -> list[Job] | None:
        """When `queue`, whose job was just handed out, is the only one with jobs left: that job and
        the rest of the queue's jobs, in order, taken out of the order (the iteration ends); else
        None. From here the order is the queue's job order whatever the caller does, so a caller may
        go through the rest its own way (allocate, `_lone_queue`)."""
        if self._heap:
            return None
        i = self._next.get(queue, 0)
        jobs = self._jobs.get(queue, [])
        if not 0 < i <= len(jobs):
            return None
        self._next[queue] = len(jobs)
        return self._kept(jobs[i - 1 :])

    def drain(self, queue: QueueName) -> list[Job]:
        """Take the rest of `queue`'s jobs out of the order (e.g. the queue is at its limit)."""
        i = self._next.get(queue, 0)
        jobs = self._jobs.get(queue, [])
        rest = jobs[i:]
        self._next[queue] = len(jobs)
        return self._kept(rest)

    def _kept(self, jobs: list[Job]) -> list[Job]:
        skip = self._skip
        return [job for job in jobs if job.id not in skip] if skip else jobs
