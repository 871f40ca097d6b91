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

from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import is_
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from leitstand.scheduler.model import Job, JobId, QueueName, RunningJob

if TYPE_CHECKING:
    from leitstand.scheduler.state import ClusterState

__all__ = ["CACHE_KEY", "RunningSums", "VictimSlots", "open_running"]

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
    _slots: VictimSlots | None = field(default=None, repr=False)
    _deleted: int = field(default=0, repr=False)
    """Jobs deleted from `by_id` since it was last compacted (see `_updated`)."""
    log: list[tuple[bool, RunningJob]] | None = field(default=None, repr=False)
    """What the caller's state logged since its last cycle, as this cycle took it (None: no state, or
    the first cycle on it): the pending jobs' sort reads the starts too (`pending.open_pending`)."""

    @property
    def slots(self) -> VictimSlots:
        """The preemptible jobs of `by_id` at fixed slots (built on first use, then kept current by
        the log with the sums)."""
        if self._slots is None:
            self._slots = VictimSlots.of(self.by_id.values())
        return self._slots


_COMPACT_AT = 1024
"""A `VictimSlots` with more holes than this and than live jobs is rebuilt (a new object)."""


class VictimSlots:
    """The preemptible running jobs of a snapshot, each at a slot of its own that no other job takes
    while this object lives (an ended job leaves a hole), with their start times as an array.

    Why: the victim pools of a cycle (`victims.VictimPool`) are built from the preemptible jobs past
    their minimum runtime, and a pool kept from the last cycle is merged with what changed. Walking
    every running job to pick the candidates and looking each one up in the last pool cost ~3 ms a
    pool on the openb replay (2,700 candidates); by slot, the candidates are an array comparison
    (`aged`) and the kept ones are found by array indexing. Kept on `RunningSums`, so it follows the
    same log and is rebuilt whenever the sums are."""

    __slots__ = ("holes", "jobs", "slot", "started")

    def __init__(self) -> None:
        self.jobs: list[RunningJob | None] = []
        self.slot: dict[JobId, int] = {}
        self.started: NDArray[np.float64] = np.full(64, np.inf)
        """Per slot its job's `started_at`; +inf at holes and past the end (never of victim age)."""
        self.holes = 0

    @classmethod
    def of(cls, running: Iterable[RunningJob]) -> VictimSlots:
        slots = cls()
        for held in running:
            if held.job.is_preemptible:
                slots.add(held)
        return slots

    def add(self, held: RunningJob) -> None:
        at = len(self.jobs)
        if at == self.started.shape[0]:
            self.started = np.concatenate((self.started, np.full(at, np.inf)))
        self.jobs.append(held)
        self.slot[held.job.id] = at
        self.started[at] = held.started_at

    def drop(self, held: RunningJob) -> None:
        at = self.slot.pop(held.job.id)
        self.jobs[at] = None
        self.started[at] = np.inf
        self.holes += 1

    def crowded(self) -> bool:
        """More holes than live jobs (and than `_COMPACT_AT`): time for a fresh object."""
        return self.holes > _COMPACT_AT and self.holes > len(self.slot)

    def aged(self, now: float, least: float) -> NDArray[np.bool_]:
        """Per slot: a job there has run at least `least` seconds at `now` (the comparison
        `CycleContext.is_victim_age` makes, element by element in the same float arithmetic)."""
        aged: NDArray[np.bool_] = (now - self.started[: len(self.jobs)]) >= least
        return aged


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
    sums.log = log
    if not sums.elastic and len(sums.by_id) == len(running):  # no id listed twice
        state.cycle_cache[CACHE_KEY] = sums
        if sums._slots is not None and sums._slots.crowded():
            sums._slots = None
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
    by_id, charged, priorities, slots = last.by_id, last.charged, last.preemptible_priorities, last._slots
    for started, held in log:
        job = held.job
        if job.min_replicas is not None:
            return None
        if started:
            if job.id in by_id:
                return None
            by_id[job.id] = held
            _charge(charged, priorities, job, 1)
            if slots is not None and job.is_preemptible:
                slots.add(held)
        else:
            if by_id.get(job.id) is not held:
                return None
            del by_id[job.id]
            last._deleted += 1
            _charge(charged, priorities, job, -1)
            if slots is not None and job.is_preemptible:
                slots.drop(held)
    if len(by_id) != len(running) or not all(map(is_, by_id.values(), running)):
        return None
    if 3 * last._deleted > len(by_id):
        # A dict keeps a hole per deleted key until it grows; with holes past a third, `copy()` (the
        # statement's `running`, every cycle) inserts key by key (~0.3 ms at 7,500 jobs) instead of
        # cloning the table (~0.03 ms). Rebuilt in the same order, holes gone.
        last.by_id, last._deleted = dict(by_id), 0
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
