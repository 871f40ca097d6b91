"""The running jobs of a snapshot, summed per queue, kept between cycles and updated by difference.

What it holds: `open_running`, step 1 of `cycle.run_cycle` — the running jobs by id (the statement's
`running`), what they are charged per queue (preemptible and not), what running elastic jobs lack,
and how many preemptible jobs run per (queue, priority) (preempt's early exit reads it).

Why kept: the cycle used to sum these from `Snapshot.running` every cycle, one Python step per
running job (~7,500 on the openb replay at load 1.0, every 5 s). A caller that keeps a `ClusterState`
between cycles (the replay, the acme simulator) starts and ends jobs on it with `allocate_job` and
`release_job`; the state logs those calls (`ClusterState.running_log`, from the first cycle on), so
the next cycle takes the last cycle's sums and applies only the jobs that started or ended.

Exact, and checked: the kept result is used only if its jobs are the snapshot's running jobs, the
very same objects in the same order (one identity comparison per job, run in C) — else, or when an
elastic job runs or a job id repeats, the sums are built afresh from the snapshot. A caller whose
state and snapshot disagree therefore gets what it got before, a fresh build, never stale sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import is_
from typing import TYPE_CHECKING

from leitstand.scheduler.model import Job, JobId, QueueName, RunningJob

if TYPE_CHECKING:
    from leitstand.scheduler.state import ClusterState

__all__ = ["CACHE_KEY", "RunningSums", "open_running"]

CACHE_KEY = "running"
"""Key of the kept sums in `ClusterState.cycle_cache`."""


@dataclass(slots=True)
class RunningSums:
    """The running jobs of one snapshot and what they hold, per queue."""

    by_id: dict[JobId, RunningJob]
    """Every running job by id, in snapshot order (a copy of it is the statement's `running`)."""
    charged: dict[bool, dict[QueueName, int]]
    """Milli-GPU charged per queue, apart for preemptible (True) and non-preemptible (False) jobs: a
    rigid gang its whole size, an elastic job the replicas it holds."""
    growth: dict[QueueName, int]
    """Per queue: milli-GPU that running elastic jobs lack to reach full size."""
    elastic: bool
    """Some running job is elastic (then nothing is kept for the next cycle)."""
    preemptible_priorities: dict[QueueName, dict[int, int]]
    """Per queue: how many preemptible jobs run at each priority."""


def open_running(running: tuple[RunningJob, ...], state: ClusterState | None = None) -> RunningSums:
    """The sums of `running`. With `state` (the caller's kept state, whose `running_log` says which
    jobs started and ended since its last cycle), the last cycle's sums updated by that log when
    the result is the snapshot's (module docstring); else a fresh build."""
    if state is None:
        return _fresh(running)
    last: RunningSums | None = state.cycle_cache.pop(CACHE_KEY, None)
    log, state.running_log = state.running_log, []  # what starts and ends from here on
    sums = _updated(last, log, running) if last is not None and log is not None else None
    if sums is None:
        sums = _fresh(running)
    if not sums.elastic and len(sums.by_id) == len(running):  # no id listed twice
        state.cycle_cache[CACHE_KEY] = sums
    return sums


def _fresh(running: tuple[RunningJob, ...]) -> RunningSums:
    by_id: dict[JobId, RunningJob] = {}
    charged: dict[bool, dict[QueueName, int]] = {True: {}, False: {}}
    growth: dict[QueueName, int] = {}
    priorities: dict[QueueName, dict[int, int]] = {}
    elastic = False
    for held in running:
        job = held.job
        by_id[job.id] = held
        preemptible = job.is_preemptible
        sums = charged[preemptible]
        if job.min_replicas is None:
            sums[job.queue] = sums.get(job.queue, 0) + job.gpu_milli_total  # a rigid gang: charged whole
        else:
            sums[job.queue] = sums.get(job.queue, 0) + held.gpu_milli_total  # the replicas it holds
            elastic = True
            missing = held.missing_milli
            if missing:
                growth[job.queue] = growth.get(job.queue, 0) + missing
        if preemptible:
            counts = priorities.get(job.queue)
            if counts is None:
                priorities[job.queue] = {job.priority: 1}
            else:
                counts[job.priority] = counts.get(job.priority, 0) + 1
    return RunningSums(by_id, charged, growth, elastic, priorities)


def _updated(
    last: RunningSums, log: list[tuple[bool, RunningJob]], running: tuple[RunningJob, ...]
) -> RunningSums | None:
    """`last` with the logged starts and ends applied (mutated and returned), or None when a fresh
    build is needed: an elastic job, an id started twice, an end of a job not listed, or a result
    that is not `running` object for object."""
    by_id, charged, priorities = last.by_id, last.charged, last.preemptible_priorities
    for started, held in log:
        job = held.job
        if job.min_replicas is not None:
            return None
        if started:
            if job.id in by_id:
                return None
            by_id[job.id] = held
            _charge(charged, priorities, job, 1)
        else:
            if by_id.get(job.id) is not held:
                return None
            del by_id[job.id]
            _charge(charged, priorities, job, -1)
    if len(by_id) != len(running) or not all(map(is_, by_id.values(), running)):
        return None
    return last


def _charge(
    charged: dict[bool, dict[QueueName, int]], priorities: dict[QueueName, dict[int, int]], job: Job, sign: int
) -> None:
    """Add (`sign` 1) or take away (-1) one rigid job. A queue whose jobs all ended keeps a charge of
    0 (charging 0 changes nothing); a priority with no job left goes, as preempt reads the lowest."""
    sums = charged[job.is_preemptible]
    sums[job.queue] = sums.get(job.queue, 0) + sign * job.gpu_milli_total
    if job.is_preemptible:
        counts = priorities.setdefault(job.queue, {})
        count = counts.get(job.priority, 0) + sign
        if count:
            counts[job.priority] = count
        else:
            del counts[job.priority]
            if not counts:
                del priorities[job.queue]
