"""The pending jobs of a snapshot, sorted into their leaf queues, kept between cycles and updated by difference.

What it holds: `open_pending`, step 2 of `cycle.run_cycle` — the pending jobs per leaf queue in job
order (`ordering.job_order_key`), the reasons of jobs whose queue does not exist or is not a leaf,
what each leaf's pending jobs ask in all (its pending demand, read by fair share), and whether any
pending job is elastic.

Why kept: the cycle used to sort the whole backlog every cycle — one Python step per pending job and
a sort of them all, ~1 ms a cycle at 10,000 pending jobs, which a deep backlog pays cycle after
cycle although only a few jobs arrive or start in between (the openb replay at load 1.2 holds
~12,000 waiting at the end of its arrivals). A caller that keeps a `ClusterState` starts the jobs a
plan binds with `allocate_job`, which the state logs (`ClusterState.running_log`,
`running.open_running`); the next cycle takes the last cycle's sort, takes the jobs that started out
of it — and those the last cycle bound, which a caller that applies its plans no longer lists even
before its state sees them start — and adds the snapshot's jobs that come after those that stayed.

Exact, and checked: the kept sort is used only if the snapshot lists, first, the jobs that stayed —
the very same objects in the same order (one identity comparison per job, run in C) — and after
them only jobs it did not list. A caller that lists a job again at its old place (a job evicted and
queued again), drops a job without starting it (deleted while pending), changes a job (a new
object), lists an id twice or changes the queue tree gets a fresh sort, never a stale one. The
order of the leaf queues in `by_queue` follows no rule (every reader sums, tests any, or orders the
queues by key and name).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from operator import attrgetter, is_
from typing import TYPE_CHECKING

from leitstand.scheduler.actions.context import Code
from leitstand.scheduler.model import Job, JobId, PendingReason, QueueName, RunningJob
from leitstand.scheduler.ordering import job_order_key

if TYPE_CHECKING:
    from leitstand.scheduler.fairshare import QueueTree
    from leitstand.scheduler.state import ClusterState

__all__ = ["CACHE_KEY", "PendingSort", "open_pending"]

CACHE_KEY = "pending"
"""Key of the kept sort in `ClusterState.cycle_cache`."""

_GPU_MILLI_TOTAL = attrgetter("gpu_milli_total")
_MIN_REPLICAS = attrgetter("min_replicas")

_TreeShape = tuple[tuple[QueueName, ...], tuple[QueueName, ...]]
"""A queue tree as far as the sort reads it: every queue (top-down), and the leaves."""


@dataclass(slots=True)
class PendingSort:
    """The pending jobs of one snapshot, by leaf queue."""

    jobs: dict[JobId, Job]
    """Every pending job by id, in snapshot order."""
    by_queue: dict[QueueName, list[Job]]
    """Per leaf queue with pending jobs: its jobs in job order (read, never changed, by the actions)."""
    refused: dict[JobId, PendingReason]
    """Jobs of a queue that does not exist or has child queues: why they wait."""
    demand: dict[QueueName, int]
    """Per leaf queue of `by_queue`: milli-GPU its pending jobs ask for in all."""
    elastic: int
    """How many pending jobs are elastic (`Job.min_replicas` set)."""
    tree: _TreeShape
    """The queue tree it was sorted for."""
    bound: AbstractSet[JobId] = frozenset()
    """The jobs the cycle that read this sort bound (set by `cycle.run_cycle`): a caller that applies
    the plan lists them no longer, whether or not its state logged them starting yet (the operator's
    pods of an admitted gang show up cycles later)."""

    def _add(self, job: Job, tree: QueueTree) -> None:
        """Sort one job in (after the jobs already listed in snapshot order)."""
        self.jobs[job.id] = job
        if job.min_replicas is not None:
            self.elastic += 1
        queue = job.queue
        jobs = self.by_queue.get(queue)
        if jobs is not None:
            if not jobs or job_order_key(jobs[-1]) <= job.order_key:
                jobs.append(job)  # (most arrivals are the youngest of their queue)
            else:
                insort(jobs, job, key=job_order_key)
            self.demand[queue] += job.gpu_milli_total
        elif (why := _refusal(tree, queue)) is None:
            self.by_queue[queue] = [job]
            self.demand[queue] = job.gpu_milli_total
        else:
            self.refused[job.id] = PendingReason(job.id, Code.UNKNOWN_QUEUE, why)

    def _remove(self, job: Job) -> bool:
        """Take one listed job out (it started); False when it is not where its key says."""
        del self.jobs[job.id]
        if job.min_replicas is not None:
            self.elastic -= 1
        if self.refused.pop(job.id, None) is not None:
            return True
        queue = job.queue
        jobs = self.by_queue.get(queue)
        if jobs is None:
            return False
        at = bisect_left(jobs, job.order_key, key=job_order_key)
        if at == len(jobs) or jobs[at] is not job:
            return False
        del jobs[at]
        if jobs:
            self.demand[queue] -= job.gpu_milli_total
        else:
            del self.by_queue[queue], self.demand[queue]
        return True


def _refusal(tree: QueueTree, queue: QueueName) -> str | None:
    """Why the jobs of `queue` wait unsorted; None for a leaf queue, whose jobs are sorted."""
    if queue not in tree.queues:
        return f"queue {queue} does not exist; create it or resubmit"
    if not tree.is_leaf(queue):
        return f"queue {queue} has child queues and holds no jobs; submit to one of its leaf queues"
    return None


def open_pending(
    pending: Sequence[Job],
    tree: QueueTree,
    state: ClusterState | None = None,
    log: list[tuple[bool, RunningJob]] | None = None,
) -> PendingSort:
    """The pending jobs of a snapshot sorted into `tree`'s leaf queues. With `state` (the caller's
    kept state) and `log` (what started and ended on it since its last cycle, as `open_running` took
    it), the last cycle's sort updated by difference when that gives the snapshot's (module
    docstring); else a fresh sort. Kept for the next cycle unless an id is listed twice."""
    shape = (tree.order, tree.leaves)
    if state is None:
        return _fresh(pending, tree, shape)
    last: PendingSort | None = state.cycle_cache.pop(CACHE_KEY, None)
    sort = None
    if last is not None and log is not None and last.tree == shape:
        sort = _updated(last, pending, log, tree)
    if sort is None:
        sort = _fresh(pending, tree, shape)
    if len(sort.jobs) == len(pending):  # no id listed twice
        state.cycle_cache[CACHE_KEY] = sort
    return sort


def _fresh(pending: Sequence[Job], tree: QueueTree, shape: _TreeShape) -> PendingSort:
    jobs: dict[JobId, Job] = {}
    by_queue: dict[QueueName, list[Job]] = {}
    refused: dict[JobId, PendingReason] = {}
    why_of: dict[QueueName, str] = {}  # unknown and inner queues: why their jobs wait
    for job in pending:
        jobs[job.id] = job
        listed = by_queue.get(job.queue)
        if listed is not None:
            listed.append(job)
            continue
        why = why_of.get(job.queue)
        if why is None:
            why = _refusal(tree, job.queue)
            if why is None:
                by_queue[job.queue] = [job]
                continue
            why_of[job.queue] = why
        refused[job.id] = PendingReason(job.id, Code.UNKNOWN_QUEUE, why)
    demand: dict[QueueName, int] = {}
    for queue, listed in by_queue.items():
        listed.sort(key=job_order_key)
        demand[queue] = sum(map(_GPU_MILLI_TOTAL, listed))
    elastic = len(pending) - [*map(_MIN_REPLICAS, pending)].count(None)
    return PendingSort(jobs, by_queue, refused, demand, elastic, shape)


def _updated(
    last: PendingSort, pending: Sequence[Job], log: list[tuple[bool, RunningJob]], tree: QueueTree
) -> PendingSort | None:
    """`last` with the jobs the last cycle bound and the logged starts taken out and the snapshot's
    new jobs sorted in (mutated and returned), or None when a fresh sort is needed: the jobs that
    stayed are not the snapshot's first jobs object for object, or a job after them is listed
    already."""
    jobs = last.jobs
    left = [*last.bound, *(held.job.id for started, held in log if started)]
    # (a job that ended and is pending again is a job the snapshot lists anew)
    for job_id in left:
        gone = jobs.get(job_id)
        if gone is not None and not last._remove(gone):
            return None
    last.bound = frozenset()
    stayed = len(jobs)
    if len(pending) < stayed or not all(map(is_, pending, jobs.values())):
        return None
    for job in pending[stayed:]:
        if job.id in jobs:
            return None
        last._add(job, tree)
    return last
