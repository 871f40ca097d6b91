"""Value types of the scheduling core: nodes, queues, jobs, running allocations, snapshots and plans.

Everything here is a frozen, slotted dataclass: the operator (or the simulator) builds a `Snapshot`
from what it observes, `leitstand.scheduler.cycle` turns it into a `Plan`, and nothing in between
mutates these values. The hot path does not iterate over these objects: `leitstand.scheduler.state`
encodes them once into arrays and updates the arrays incrementally.

Units are in the names: GPU amounts are milli-GPU (1000 = one whole GPU) so fractional GPUs count
exactly; CPU is milli-cores; memory is MiB; times are seconds on the caller's clock (the core has no
clock of its own).
"""

from __future__ import annotations

import enum
import gc
import itertools
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import NewType, Protocol, overload

GPU_MILLI = 1000
"""Milli-GPU in one whole GPU."""

NodeName = NewType("NodeName", str)
JobId = NewType("JobId", str)
QueueName = NewType("QueueName", str)

NODE_LEVEL = "node"
"""The implicit bottom topology level: one domain per node (all replicas on one host)."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Ordered topology levels, top to bottom, e.g. ("spine", "rack", "nvlink-domain").

    The node itself is always the implicit lowest level, named `NODE_LEVEL`.
    """

    levels: tuple[str, ...] = ()

    def level_index(self, name: str) -> int:
        """Index of a level name; `len(levels)` for the node level. Raises ValueError naming the choices."""
        if name == NODE_LEVEL:
            return len(self.levels)
        try:
            return self.levels.index(name)
        except ValueError:
            known = ", ".join((*self.levels, NODE_LEVEL))
            raise ValueError(f"unknown topology level {name!r}; known levels: {known}") from None


@dataclass(frozen=True, slots=True)
class Node:
    """One schedulable machine as the scheduler sees it (capacity, not current use)."""

    name: NodeName
    gpus: int
    cpu_milli: int
    memory_mib: int
    gpu_model: str = ""
    node_pool: str = "default"
    jurisdiction: str = ""
    topology: tuple[str, ...] = ()
    """One domain name per `Topology.levels` entry, top-down; "" where the node lacks the label."""
    schedulable: bool = True


class JobPhase(enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"


_FIFO_KEYS: dict[tuple[object, ...], int] = {}
"""The `Job.fifo_key` of every (request key, preemptible, min_replicas) seen so far (started over
past `_FIFO_KEYS_MAX`: a factory has a few hundred distinct shapes, not tens of thousands)."""
_FIFO_KEYS_MAX = 1 << 16
_FIFO_CODES = itertools.count()
"""Where the next new `Job.fifo_key` comes from: never reused in this process, also after the table
started over (a value seen again then gets a new number; a key is never given to two values)."""


@dataclass(frozen=True, slots=True)
class Job:
    """A gang: `replicas` identical pods that start together or not at all.

    Each replica needs `gpus` devices with `gpu_milli` of each: whole GPUs are `gpu_milli=1000`,
    a slice is `gpus=1, gpu_milli=250`, a CPU-only pod is `gpus=0`.
    """

    id: JobId
    queue: QueueName
    replicas: int = 1
    gpus: int = 1
    gpu_milli: int = GPU_MILLI
    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_models: frozenset[str] = frozenset()
    """Allowed GPU models; empty means any."""
    required_level: str | None = None
    """All replicas inside one domain of this topology level (hard)."""
    preferred_level: str | None = None
    """Try to fit inside one domain of this level, fall back upwards."""
    node_pool: str | None = None
    jurisdictions: frozenset[str] = frozenset()
    """Data residency: empty = anywhere; else only nodes whose `Node.jurisdiction` is in the set."""
    allowed_nodes: frozenset[NodeName] | None = None
    """None = every node; else only these nodes (names not in the cluster are ignored). The operator
    computes it from the pod's nodeSelector, required node affinity and taints/tolerations, and
    shares one frozenset object among jobs with equal constraints (its hash is computed once, so
    masks and failure memos keyed on it stay cheap)."""
    priority: int = 50
    preemptible: bool | None = None
    """None follows the Run:ai rule: priority < 100 means preemptible."""
    created_at: float = 0.0
    min_replicas: int | None = None
    """Elastic gang: None (the default) is rigid, all `replicas` or nothing. Else the gang starts with
    any count in [min_replicas, replicas], grows toward `replicas` when free GPUs appear, and is shrunk
    toward `min_replicas` by reclaim or preemption before it is evicted whole (docs/semantics.md)."""
    gpu_milli_total: int = field(init=False, repr=False, compare=False)
    """What the gang counts against its queue's quota, in milli-GPU (replicas × gpus × gpu_milli)."""
    is_preemptible: bool = field(init=False, repr=False, compare=False)
    """`preemptible`, or when None the Run:ai rule: priority < 100."""
    order_key: tuple[int, float, str] = field(init=False, repr=False, compare=False)
    """Order inside a leaf queue (`ordering.job_order_key`): higher priority, then older, then id."""
    request_key: tuple[object, ...] = field(init=False, repr=False, compare=False)
    """Every field the job's placement request is built from (`GangRequest.for_job`): jobs with equal
    keys (in queues with the same reservation) get the same request, so a cycle builds, memoises
    and tries one request per key instead of one per job (`CycleContext.request`, `shape_key`)."""
    fifo_key: int = field(init=False, repr=False, compare=False)
    """A number for (`request_key`, `is_preemptible`, `min_replicas`) in this process: jobs of one
    queue with equal fifo keys are handled alike by allocate while they wait behind a failed
    request (`actions/allocate.py`), which groups them by this int without hashing the tuple. Jobs
    with different values never share a number (`_FIFO_CODES`; a pickled job is made anew where it
    is loaded, `__reduce__`, so it never carries another process's number); equal values may get
    two (after the table started over, or when two threads meet a new value at once), which only
    splits a group in two: it costs a visit, never a decision."""
    # The last five are derived once here: a cycle reads them millions of times (every pending job in
    # every action and sort, every running job in the snapshot), and properties recomputed them.

    def __post_init__(self) -> None:
        low = self.min_replicas
        if low is not None and not (isinstance(low, int) and 1 <= low <= self.replicas):
            raise ValueError(
                f"job {self.id}: min_replicas must be an integer from 1 to replicas ({self.replicas}), got {low!r}; "
                "leave it unset for a rigid gang"
            )
        object.__setattr__(self, "gpu_milli_total", self.replicas * self.gpus * self.gpu_milli)
        object.__setattr__(
            self, "is_preemptible", self.priority < 100 if self.preemptible is None else self.preemptible
        )
        object.__setattr__(self, "order_key", (-self.priority, self.created_at, self.id))
        object.__setattr__(
            self,
            "request_key",
            (
                self.replicas,
                self.gpus,
                self.gpu_milli if self.gpus > 0 else 0,
                self.cpu_milli,
                self.memory_mib,
                self.gpu_models,
                self.required_level,
                self.preferred_level,
                self.node_pool,
                self.jurisdictions,
                self.allowed_nodes,
            ),
        )
        fifo = (self.request_key, self.is_preemptible, self.min_replicas)
        code = _FIFO_KEYS.get(fifo)
        if code is None:
            if len(_FIFO_KEYS) >= _FIFO_KEYS_MAX:
                _FIFO_KEYS.clear()
            code = _FIFO_KEYS[fifo] = next(_FIFO_CODES)
        object.__setattr__(self, "fifo_key", code)

    def __reduce__(self) -> tuple[type[Job], tuple[object, ...]]:
        """Pickled and copied by its fields: made anew where it is loaded, so the derived fields
        (`fifo_key` above all, a number of this process) are that process's."""
        return type(self), tuple(getattr(self, name) for name in _JOB_FIELDS)

    @property
    def is_elastic(self) -> bool:
        """May run with fewer than `replicas` (between `min_replicas` and `replicas`)."""
        return self.min_replicas is not None and self.min_replicas < self.replicas

    @property
    def gpu_milli_per_replica(self) -> int:
        return self.gpus * self.gpu_milli


_JOB_FIELDS = tuple(f.name for f in fields(Job) if f.init)
"""`Job`'s own fields in the order its constructor takes them (`Job.__reduce__`)."""


@dataclass(frozen=True, slots=True)
class ReplicaPlacement:
    """Where one replica runs: a node and the indices of the GPUs it uses on that node."""

    node: NodeName
    gpu_indices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job that holds resources, with where each replica sits.

    An elastic job (`Job.min_replicas` set) may hold fewer placements than `job.replicas`: it runs
    below full size and is charged for the replicas it holds. Inside a cycle a `RunningJob` may also
    stand for a part of a job (some of its replicas) that is evicted or restored as one piece.
    """

    job: Job
    placements: tuple[ReplicaPlacement, ...]
    started_at: float = 0.0

    @property
    def gpu_milli_total(self) -> int:
        """What these replicas count against the queue's quota, in milli-GPU: a rigid job is charged
        its whole gang (as `Job.gpu_milli_total`), an elastic one the replicas it holds."""
        job = self.job
        if job.min_replicas is None:
            return job.gpu_milli_total
        return len(self.placements) * job.gpus * job.gpu_milli

    @property
    def missing_milli(self) -> int:
        """Milli-GPU an elastic job below full size still wants (its missing replicas); 0 otherwise."""
        job = self.job
        missing = job.replicas - len(self.placements)
        return missing * job.gpu_milli_per_replica if job.min_replicas is not None and missing > 0 else 0


@dataclass(frozen=True, slots=True)
class ModelQuota:
    """A queue's quota and limit for one GPU model (`Node.gpu_model`), beside its total.

    A job that asks for exactly this model is charged here as well as to the total; a job that
    names no model (or several) is charged to the model it is placed on. `limit_milli=0` forbids the
    model to the queue; an unset limit falls back to the queue's total limit; an unset weight to the
    queue's `over_quota_weight`. See docs/fairshare.md, "Quota per GPU model".
    """

    model: str
    quota_milli: int = 0
    limit_milli: int | None = None
    over_quota_weight: float | None = None


@dataclass(frozen=True, slots=True)
class Queue:
    """A node of the queue tree (Run:ai department/project). Only leaves hold jobs.

    Amounts are milli-GPU. `limit_milli=None` means no cap (unlike KAI, where unset means 0).
    """

    name: QueueName
    parent: QueueName | None = None
    quota_milli: int = 0
    limit_milli: int | None = None
    over_quota_weight: float = 1.0
    priority: int = 100
    node_pool: str | None = None
    """Reservation: this queue's jobs run only in this pool, and no other queue's jobs run there; the
    pool's GPUs count only toward this queue's subtree when fair share is divided."""
    created_at: float = 0.0
    model_quotas: tuple[ModelQuota, ...] = ()
    """Quota and limit per GPU model, beside the total (`quota_milli`, `limit_milli`); empty = none."""

    def model_quota(self, model: str) -> ModelQuota | None:
        """This queue's entry for `model`, or None when it sets nothing for that model."""
        for entry in self.model_quotas:
            if entry.model == model:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Knobs of one scheduling cycle."""

    policy: str = "leitstand"
    min_runtime_seconds: float = 60.0
    """A running job younger than this is not a preemption/reclaim victim."""
    max_jobs_per_cycle: int = 100_000
    max_victims: int = 64
    """At most this many jobs are evicted for one waiting gang."""
    usage_half_life_seconds: float | None = None
    """Time-decayed fair share when set (see fairshare.py)."""
    consolidation: bool = True
    """Run the consolidate action: move preemptible jobs elsewhere to make room for a waiting gang."""
    max_consolidation_moves: int = 4
    """At most this many running jobs are moved (evicted and re-placed) for one waiting gang."""
    consolidation_retry_seconds: float = 30.0
    """A waiting shape (`CycleContext.shape_key`) for which consolidation found no moves is not
    searched again for this long (by `Snapshot.now`; remembered on the `ClusterState` kept between
    cycles, as the operator and the replay keep it). It still takes its turn among the
    `consolidate.MAX_ATTEMPTS` shapes a cycle looks at. Nearly every search fails (openb replay:
    30 of 17,825 found moves), and a search costs ~0.5 ms; with 30 s the replay's consolidation
    costs 60 % less with the same allocation (docs/cycle.md, "Cost and bounds"). 0: every cycle."""
    migration: bool = False
    """Run the migrate action (`actions/migrate.py`): repack the preemptible jobs of a few nodes with
    stranded GPU capacity and start waiting jobs in the room that frees; a try is kept only if every
    moved job finds a home and allocation rises. Off by default: on openb it raises allocation and
    lowers p99 wait, but a moved pod restarts, and a job without checkpoints loses its progress —
    more GPU-hours than migration gains (docs/replay.md, "Migration"). Turn it on when moves are
    cheap (checkpointed or restart-tolerant preemptible work)."""
    max_migration_tries: int = 60
    """At most this many node sets are tried for migration per cycle (0 turns it off as well)."""
    migration_nodes_per_try: int = 4
    """Nodes repacked together in one migration try: their jobs can take each other's places. On
    openb (seed 42) 2 nodes and 20 tries gave +0.44 / +0.30 points of allocation over FGD at load
    1.0 / 1.2, 4 nodes and 60 tries +0.55 / +0.53 with moves free (docs/replay.md, "Migration")."""
    migration_max_age_seconds: float | None = None
    """Only jobs that have run at most this long (`Snapshot.now - RunningJob.started_at`) are moved by
    migration; None: any job past its minimum runtime. A moved pod restarts, so a job without
    checkpoints loses what it ran: this bounds what one move can cost to this age times its GPUs."""
    migration_prune_moves: int = 16
    """Before a migration try is kept, up to this many times: leave its moved job with the most
    progress (run time × GPU milli) where it is and redo the try; keep the smaller try if it starts
    at least as much GPU milli and loses less progress. Tries move more jobs than their room needs:
    on openb 16 halves the moves, and the progress restarting moves lose, with as much or more
    allocation (docs/replay.md, "Pruning migration tries"). Each step costs one more try's
    placements. 0: keep tries as found."""
    reserve_after_seconds: float | None = None
    """Reservations for starving gangs (`actions/reserve.py`, docs/cycle.md): a pending gang of at
    least `reserve_min_gpus` GPUs that has waited this long (`Snapshot.now - Job.created_at`) gets
    one topology domain held for it; only preemptible jobs may backfill held nodes, and they are
    evicted when the gang can start there. None (the default) turns reservations off: holding
    capacity idles GPUs, so the operator opts in with a wait it is willing to guarantee."""
    reserve_min_gpus: int = 2
    """Only gangs asking at least this many GPUs in total get a reservation (a 1-GPU job is never
    starved by fragmentation: it takes the next GPU that frees up in its turn)."""
    max_reserved_gangs: int = 2
    """At most this many gangs hold capacity per cycle (oldest by priority, then age): each hold
    idles GPUs, so the number is bounded."""

    def __post_init__(self) -> None:
        after = self.reserve_after_seconds
        if after is not None and not (0 <= after < float("inf")):
            raise ValueError(f"reserve_after_seconds must be a number of seconds >= 0 or None (off), got {after}")
        if self.reserve_min_gpus < 1:
            raise ValueError(f"reserve_min_gpus must be at least 1, got {self.reserve_min_gpus}")
        retry = self.consolidation_retry_seconds
        if not (0 <= retry < float("inf")):
            raise ValueError(
                f"consolidation_retry_seconds must be a number of seconds >= 0 (0: search every cycle), got {retry}"
            )
        if self.max_migration_tries < 0:
            raise ValueError(
                f"max_migration_tries must be >= 0 (0 turns migration off), got {self.max_migration_tries}"
            )
        if self.migration_nodes_per_try < 1:
            raise ValueError(f"migration_nodes_per_try must be at least 1, got {self.migration_nodes_per_try}")
        age = self.migration_max_age_seconds
        if age is not None and not (0 <= age < float("inf")):
            raise ValueError(f"migration_max_age_seconds must be a number of seconds >= 0 or None (any age), got {age}")
        if self.migration_prune_moves < 0:
            raise ValueError(
                f"migration_prune_moves must be >= 0 (0 keeps tries as found), got {self.migration_prune_moves}"
            )
        if self.max_reserved_gangs < 0:
            raise ValueError(f"max_reserved_gangs must be >= 0 (0 turns holds off), got {self.max_reserved_gangs}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one cycle decides on. Built by the operator or a simulator; never mutated."""

    nodes: tuple[Node, ...]
    queues: tuple[Queue, ...]
    pending: tuple[Job, ...]
    running: tuple[RunningJob, ...] = ()
    topology: Topology = field(default_factory=Topology)
    now: float = 0.0
    usage_milli_seconds: dict[QueueName, float] = field(default_factory=dict)
    """Past GPU usage per queue (decayed), for time-based fair share; empty = off."""


@dataclass(frozen=True, slots=True)
class Binding:
    job_id: JobId
    placements: tuple[ReplicaPlacement, ...]


class EvictionKind(enum.Enum):
    RECLAIM = "reclaim"
    """Taken back for another queue that is below its fair share."""
    PREEMPT = "preempt"
    """Displaced by a higher-priority job of the same queue."""
    CONSOLIDATE = "consolidate"
    """Moved elsewhere to make room; re-placed in the same plan."""


@dataclass(frozen=True, slots=True)
class Eviction:
    job_id: JobId
    kind: EvictionKind
    for_job: JobId
    reason: str


@dataclass(frozen=True, slots=True)
class Shrink:
    """Replicas taken from a running elastic job; the job keeps running with the rest (never fewer
    than its `min_replicas`)."""

    job_id: JobId
    placements: tuple[ReplicaPlacement, ...]
    """The replicas that stop (their pods are deleted); the job's other replicas keep running."""
    kind: EvictionKind
    """RECLAIM or PREEMPT, as for an eviction."""
    for_job: JobId
    reason: str


@dataclass(frozen=True, slots=True)
class Growth:
    """New replicas for a running elastic job below full size, on GPUs that were free."""

    job_id: JobId
    placements: tuple[ReplicaPlacement, ...]
    """Only the new replicas; the ones already running stay where they are."""


@dataclass(frozen=True, slots=True)
class PendingReason:
    """Why a job stays pending, in words a tenant can act on."""

    job_id: JobId
    code: str
    """Stable machine-readable code, e.g. "QueueAtLimit", "NoTopologyDomain", "NeverFits", "OverFairShare"."""
    message: str


_new_object = object.__new__
_set_reason_job, _set_reason_code, _set_reason_message = (
    PendingReason.__dict__[name].__set__ for name in ("job_id", "code", "message")
)


def pending_reason(job_id: JobId, code: str, message: str) -> PendingReason:
    """`PendingReason(job_id, code, message)`, made in about half the time: its three slots are set
    directly rather than through the frozen dataclass's `__init__` (which does nothing else: no
    `__post_init__`, checked by a test). A cycle makes one per waiting job per pass — millions in a
    replay — so the hot paths use this."""
    reason: PendingReason = _new_object(PendingReason)
    _set_reason_job(reason, job_id)
    _set_reason_code(reason, code)
    _set_reason_message(reason, message)
    return reason


class Why(Protocol):
    """A reason's code and message without the job (`PendingReason`, or a placement failure that a
    whole shape's jobs share): what a cycle records per waiting job as it goes."""

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (and on again after, if it was on). A cycle
    makes millions of small objects that live on; each collection they trigger walks every object of
    the process, which cost a third of the cycle's time in the openb replay (docs/cycle.md).
    Reference counting frees garbage as before; anything cyclic waits for the next collection."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Reason:
    """A code and a message (`Why`) not tied to one job."""

    code: str
    message: str


NOT_SCHEDULED = Reason("NotScheduled", "not placed this cycle; will be retried next cycle")
"""The reason of a waiting job for which no action recorded one."""


def waits_behind(behind: Mapping[tuple[QueueName, tuple[object, ...]], Why] | None, job: Job) -> Why | None:
    """What a waiting job without a reason of its own waits for when allocate passed it over behind
    a failed request: for a rigid job, its (queue, `request_key`) pair's failure in `behind` (the
    cycle's `plain_failed`); None otherwise. The one rule `CycleContext.reason_of` and
    `PendingReasons` read it by."""
    if behind is None or job.min_replicas is not None:
        return None
    return behind.get((job.queue, job.request_key))


class PendingReasons(Sequence[PendingReason]):
    """`Plan.pending` of a cycle: a `PendingReason` for every job of the snapshot the plan leaves
    waiting, in snapshot order — made when first read.

    The cycle records what each waiting job waits for as it goes (`Why` per job id; behind a failed
    shape, the same placement failure object for all its jobs) and hands that over as it is; the
    reason objects (~0.25 µs each) are made on the first read, once. A caller that reads every
    reason (the operator does, every cycle) pays that then; one that reads none (the replay, which
    measures decisions) never does. Equal to a tuple or `PendingReasons` of the same reasons
    (`plan.pending == ()` holds for a plan that leaves nobody waiting). Making them pauses the
    process's collector like a cycle does; made in one thread while a cycle runs in another, the
    collector may come back on before that cycle ends (slower, nothing else)."""

    __slots__ = ("_behind", "_jobs", "_left_out", "_made", "_why")

    def __init__(
        self,
        jobs: Sequence[Job],
        left_out: Container[JobId],
        why: Mapping[JobId, Why],
        behind: Mapping[tuple[QueueName, tuple[object, ...]], Why] | None = None,
    ) -> None:
        """`why`: per job id what it waits for; a rigid job without an entry waits with
        `behind[(queue, request_key)]` when given and listed there (allocate leaves the jobs behind
        a failed request out of `why`), else `NOT_SCHEDULED`."""
        self._jobs = jobs
        self._left_out = left_out
        self._why = why
        self._behind = behind
        self._made: tuple[PendingReason, ...] | None = None

    def _behind_of(self, job: Job) -> Why:
        """What `job` (not left out, without an entry in `why`) waits for."""
        return waits_behind(self._behind, job) or NOT_SCHEDULED

    def _all(self) -> tuple[PendingReason, ...]:
        made = self._made
        if made is None:
            jobs, left_out, get, behind_of = self._jobs, self._left_out, self._why.get, self._behind_of
            reasons = []
            with collector_paused():  # (as `run_cycle` is: millions of reasons in a replay)
                for job in jobs:
                    if job.id in left_out:
                        continue
                    given = get(job.id) or behind_of(job)
                    if type(given) is PendingReason:
                        reasons.append(given)
                    else:
                        reasons.append(pending_reason(job.id, given.code, given.message))
                made = self._made = tuple(reasons)  # (two threads reading at once make equal tuples; one stays)
        return made

    def items(self) -> Iterator[tuple[JobId, Why]]:
        """(job id, what it waits for) per waiting job, in order, without making the `PendingReason`s
        (a caller that wants codes and messages, as the operator does, reads them this way)."""
        if self._made is not None:
            for reason in self._made:
                yield reason.job_id, reason
            return
        left_out, get, behind_of = self._left_out, self._why.get, self._behind_of
        for job in self._jobs:
            if job.id not in left_out:
                yield job.id, get(job.id) or behind_of(job)

    def __len__(self) -> int:
        return len(self._all())

    @overload
    def __getitem__(self, index: int) -> PendingReason: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[PendingReason, ...]: ...

    def __getitem__(self, index: int | slice) -> PendingReason | tuple[PendingReason, ...]:
        return self._all()[index]

    def __iter__(self) -> Iterator[PendingReason]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PendingReasons):
            return self._all() == other._all()
        if isinstance(other, tuple):
            return self._all() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (like a list's: compared by content)

    def __repr__(self) -> str:
        return f"PendingReasons({self._all()!r})"


def reasons_by_job(pending: Sequence[PendingReason]) -> Iterator[tuple[JobId, Why]]:
    """(job id, what it waits for) of a plan's `pending`: `PendingReasons.items`, or the reasons of
    any other sequence (a plan built by hand)."""
    if isinstance(pending, PendingReasons):
        return pending.items()
    return ((reason.job_id, reason) for reason in pending)


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one cycle: what to bind, what to evict, why the rest waits.

    `bindings` start pending jobs (an elastic job with as many placements as it starts with, at
    least its minimum); `grows` add replicas to running elastic jobs, `shrinks` take replicas from
    them, and `evictions` stop jobs whole. A job appears in at most one of `grows` and `shrinks`.
    """

    bindings: tuple[Binding, ...] = ()
    evictions: tuple[Eviction, ...] = ()
    shrinks: tuple[Shrink, ...] = ()
    grows: tuple[Growth, ...] = ()
    pending: Sequence[PendingReason] = ()
    """Why each waiting job waits (a `PendingReasons` from `run_cycle`: made when first read). A
    sequence, not a tuple: it compares equal to the tuple of its reasons, but `tuple(plan.pending)`
    is what concatenates, hashes or goes through `dataclasses.asdict`; `reasons_by_job` reads codes
    and messages without making the reasons."""
    fair_share_milli: dict[QueueName, float] = field(default_factory=dict)
    model_fair_share_milli: dict[str, dict[QueueName, float]] = field(default_factory=dict)
    """Per GPU model named in some queue's `model_quotas`: each queue's fair share of that model."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    cycle_id: int = 0
    """Which cycle produced this plan (for log lines and audit records); 0 when unknown."""
