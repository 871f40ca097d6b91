"""The scheduling loop of `leitstand run`: observe → snapshot → `run_cycle` → apply, as numbered steps.

Called by `run` (one `Scheduler` per process, in the main event loop). Fed by the kopf handlers
(`on_trainingjob`, `on_queue`, through `loop.call_soon_threadsafe`) and the informers (`cache`,
`on_priority_class`). Every change wakes the loop; a cycle runs at most every
`cycle_min_interval_seconds` and at least every `cycle_max_interval_seconds`. Only the Lease holder
runs cycles; other replicas keep their caches warm.

What each cycle does, in order:
1. refresh the cache (node changes rebuild the arrays) and the queue tree (invalid queues are set
   aside with a condition on the Queue, not fatal to the rest);
2. follow every TrainingJob's pods to its phase (`_follow`): Running, Succeeded, a replica failure
   (restart the gang or fail it, by `backoffLimit`), `maxRuntimeSeconds`, a lost node (requeue), a
   gang found half-made (roll back) — and collect the pending and running jobs;
3. the same for plain pods with `schedulerName: leitstand` and a `leitstand.dev/queue` label;
4. `run_cycle` on the snapshot with the cache's `ClusterState` (the same engine as the simulators);
5. apply the plan: evictions (the victims' GPUs are promised to the preemptor at once; their pods are
   evicted whole), bindings (promised at once, written by the binder once the victims are gone),
   pending reasons (status, condition, one Event per change; a plain pod's PodScheduled condition);
6. statuses of jobs and queues, and the GPU reservation pods of shared GPUs;
7. one log line: cycle id, phase times, binds, evictions, pending.

Times come from the API objects (creation timestamps, status times) and the wall clock, never from
process memory, so a restarted process keeps ages, minimum runtimes and max runtimes right.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leitstand.operator.service.audit import DecisionLog
from leitstand.operator.service.binder import Binder, PodWrite
from leitstand.operator.service.cache import Charge, ClusterCache
from leitstand.operator.service.config import ServiceConfig
from leitstand.operator.service.eligibility import ConstraintError, Eligibility, constraints_key
from leitstand.operator.service.jobs import (
    API_VERSION,
    PriorityClassInfo,
    QueueSpec,
    SpecError,
    TrainingJobSpec,
    core_job,
    new_attempt,
    parse_queue,
    parse_trainingjob,
    plain_pod_job,
    plain_pod_job_id,
    replica_pod,
    replica_pod_name,
)
from leitstand.operator.service.kubeclient import KubeClientError, TransportError
from leitstand.operator.service.records import (
    ASSIGNED_GPUS,
    GPU_RESOURCE,
    ROLE_LABEL,
    ROLE_RESERVATION,
    PodRecord,
    thaw,
    timestamp,
)
from leitstand.operator.service.status import (
    Requester,
    StatusBook,
    condition,
    event_body,
    rfc3339,
    set_condition,
)
from leitstand.operator.service.usage import UsageMeter, rfc3339_precise
from leitstand.scheduler.cycle import run_cycle
from leitstand.scheduler.errors import InvalidSpecError
from leitstand.scheduler.fairshare import build_queue_tree
from leitstand.scheduler.model import (
    GPU_MILLI,
    Binding,
    Eviction,
    EvictionKind,
    Growth,
    Job,
    JobId,
    NodeName,
    Plan,
    Queue,
    QueueName,
    ReplicaPlacement,
    RunningJob,
    Shrink,
    Snapshot,
    reasons_by_job,
)
from leitstand.scheduler.policies import PolicyContext
from leitstand.scheduler.state import ClusterState, StateError

log = logging.getLogger(__name__)

DECISION_KINDS = {
    "Admitted": "admit",
    "Reclaimed": "reclaim",
    "Preempted": "preempt",
    "Moved": "move",
    "Succeeded": "finish",
    "Failed": "fail",
    "MaxRuntimeExceeded": "fail",
    "NodeLost": "requeue",
    "IncompleteGang": "requeue",
    "Restarting": "requeue",
}
"""Event reason → audit kind (`audit.KINDS`); every other reason is a pending reason: "reject"."""

EVICTION_REASONS = {
    EvictionKind.RECLAIM: "Reclaimed",
    EvictionKind.PREEMPT: "Preempted",
    EvictionKind.CONSOLIDATE: "Moved",
}

TJ_PLURAL = "trainingjobs"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
"""Pod status conditions merge by type, so one condition is patched without touching the others."""
PENDING_REFRESH_SECONDS = 10.0
"""A waiting job's message carries numbers that change every cycle ("hold 3 of 4 replicas"); with the
same reason code it is rewritten at most this often (a thousand waiting jobs would otherwise mean a
thousand status writes per cycle). A new reason code is written at once."""
UNCERTAIN_SECONDS = 30.0
"""How long the GPUs of pods whose create or bind got no answer stay promised if no pod shows up."""
REMOVAL_RETRY_SECONDS = 5.0
"""How long a pod Leitstand removes may stay (not terminating) after its removal was sent and answered
before it is deleted again (`Scheduler._resend_removals`)."""
STATUS_BATCH = 64
"""Status writes per flush, most urgent first (`StatusBook.flush`): new statuses overtake refreshes."""
USAGE_WRITE_SECONDS = 15.0
"""Queue status `usageGPUSeconds` is rewritten at most this often (it changes every cycle)."""
ADMITTED_WRITE_HOLD_SECONDS = 5.0
"""A just-admitted job's status write waits this long for its pods to start, so "Admitted" and
"Running" usually reach the API server in one merge-patch (`StatusBook.hold`)."""
IN_FLIGHT_GIVE_UP_SECONDS = 60.0
"""A bound placement the pod watch has not shown after this long is no longer treated as in flight."""
INFORM_WRITES_WHILE_BINDING = 2
"""Events and plain pods' conditions in flight while gangs bind (binds go first; `_when_binds_allow`)."""
FULL_FOLLOW_SECONDS = 30.0
"""Every job is followed at least this often, dirty or not: a safety net under the dirty set."""
PLACEMENT_NODES_SHOWN = 16
"""The placement summary on a TrainingJob lists at most this many nodes (etcd object size)."""


def tj_path(namespace: str, name: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{TJ_PLURAL}/{name}"


def queue_path(name: str) -> str:
    return f"/apis/{API_VERSION}/queues/{name}"


def gpus_text(milli: float) -> str:
    return f"{milli / GPU_MILLI:.3f}".rstrip("0").rstrip(".")


@dataclass
class Tracked:
    """What this process knows about one TrainingJob between cycles."""

    body: dict[str, Any]
    spec: TrainingJobSpec | SpecError
    retry_after: float = 0.0
    task: asyncio.Task[None] | None = None
    """The binder's task for this job (binding or removal) while it runs."""
    removing: bool = False
    pod_keys: tuple[str, ...] = ()
    """The pods of the placement being bound (names differ per attempt: `jobs.new_attempt`), until
    the informer shows them all bound."""
    bound_at: float = 0.0
    uncertain: dict[str, float] = field(default_factory=dict)
    """Pods of a failed attempt whose create or bind got no answer (the connection dropped): they may
    exist and be bound, so their GPUs stay promised until the informer shows them or UNCERTAIN_SECONDS
    pass (`_settle_uncertain`)."""
    bind_ok: bool = False
    """The binder created and bound every pod of the current placement (the API server said so)."""
    growth_task: asyncio.Task[None] | None = None
    """An elastic job's new replicas being created and bound (`_grow`), apart from `task`: the
    replicas it has keep running meanwhile."""
    growth_keys: tuple[str, ...] = ()
    """The pods of the last growth until the informer shows them bound (their GPUs are promised)."""
    grown_at: float = 0.0
    constraints: Any = None
    """`eligibility.constraints_key` of the pod template, computed once (the spec is immutable)."""


@dataclass(frozen=True, slots=True)
class Removal:
    """One pod's removal: the binder's task that sends it, when it may be sent again, and the key
    (TrainingJob or plain pod) to follow again when it ends."""

    task: asyncio.Task[None]
    retry_at: float
    owner: str


@dataclass(frozen=True, slots=True)
class Followed:
    """What following a job last added to the cycle's inputs (at most one of the three); reused as is
    while nothing the job depends on changed (`Scheduler._dirty`)."""

    pending: Job | None = None
    running: RunningJob | None = None
    waiting: tuple[str, str] | None = None


@dataclass
class CycleReport:
    cycle_id: int = 0
    binds: int = 0
    evictions: int = 0
    pending: int = 0
    running: int = 0
    followed: int = 0
    """TrainingJobs followed afresh (the others' contributions were reused)."""
    binder_full: bool = False
    """The binder had `max_binds_in_flight` gangs in hand: the core did not run (nothing admitted)."""
    deferred: int = 0
    """Bindings (and growths) of the plan left for a later cycle: the binder was at `max_binds_in_flight`."""
    phase_seconds: dict[str, float] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)


class Scheduler:
    def __init__(self, config: ServiceConfig, client: Requester, cache: ClusterCache,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.client = client
        self.cache = cache
        self.clock = clock
        self.core_config = config.scheduler.core()
        self._policy: tuple[ClusterState, PolicyContext] | None = None
        self.levels = tuple(level.name for level in config.topology)
        self.binder = Binder(client, gang_concurrency=config.bind_concurrency)
        self.book = StatusBook(client, busy=lambda: self.binder.active > 0)
        self.eligibility = Eligibility()
        self._eligibility_generation = -1
        self.jobs: dict[str, Tracked] = {}
        self.queue_bodies: dict[str, dict[str, Any]] = {}
        self.priority_classes: dict[str, PriorityClassInfo] = {}
        self.plain_tasks: dict[str, asyncio.Task[None]] = {}
        self.plain_retry: dict[str, float] = {}
        self._binder_full_said_at = -math.inf
        self.elastic_below: set[str] = set()
        """Running elastic jobs below full size (kept by `_follow`): the core runs for them even when
        nothing is pending, so they grow when GPUs free up."""
        self.removals: dict[str, Removal] = {}
        """Pods Leitstand is removing (evicted, moved, restarted, left over), by pod key, until the
        informer shows them gone: a removal the API server refused is sent again (`_resend_removals`)."""
        self.plain_said: dict[str, tuple[str, str]] = {}
        """Plain pod key → the (code, message) its PodScheduled condition says."""
        self.reservation_tasks: set[asyncio.Task[Any]] = set()
        self.inform_failures = 0
        """Events and pod conditions dropped because the API server did not answer (`_when_binds_allow`)."""
        self.cycle_listeners: list[Callable[[CycleReport, Plan | None], None]] = []
        """Called after every cycle (metrics)."""
        self.last_pending: list[Job] = []
        self.last_running: list[RunningJob] = []
        self.ready = False
        """Kernels compiled and the informers synced (`run` sets it): what /readyz reports."""
        self._pending_said_at: dict[str, float] = {}
        self.decisions = DecisionLog()
        self.usage = UsageMeter(started=clock())
        self._usage_written_at = 0.0
        self.reservations_creating: set[tuple[str, int]] = set()
        """GPUs whose reservation pod is being created and not yet seen by the informer."""
        self.wake = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        self._leading = False
        self._followed: dict[str, Followed] = {}
        """Job key → what its last `_follow` contributed; reused while the job is not dirty."""
        self._dirty: set[str] = set()
        """Jobs to follow again in the next cycle: their object, their pods, or their binder task changed."""
        self._follow_all = True
        """Follow every job next cycle: queues, priority classes, nodes or leadership changed."""
        self._followed_all_at = 0.0
        self._timers: list[tuple[float, str]] = []
        """(time, job key): follow the job again then (retry after a failed bind, maxRuntimeSeconds, a
        placement the watch has not confirmed)."""
        self._inform_slots = asyncio.Semaphore(INFORM_WRITES_WHILE_BINDING)
        self._nodes_unready = False
        """Some node is NotReady: lost-node grace periods run on the clock, so every job is followed."""
        self.last: CycleReport = CycleReport()
        self.last_plan: Plan | None = None
        self.queue_view: dict[str, dict[str, Any]] = {}
        self.node_lost_since: dict[str, float] = {}
        self._queue_status_at = 0.0

    @property
    def leading(self) -> bool:
        return self._leading

    @leading.setter
    def leading(self, value: bool) -> None:
        if value and not self._leading:
            self._follow_all = True  # what was decided while another process led is not ours
        self._leading = value

    # -- inputs (main loop) -----------------------------------------------------------------------

    def on_trainingjob(self, kind: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        tracked = self.jobs.get(key)
        if kind != "DELETED" and tracked is not None and not _followed_fields_differ(tracked.body, body):
            tracked.body = body  # the echo of a status write: nothing a cycle reads has changed
            return
        self._dirty.add(key)
        if kind == "DELETED":
            self._followed.pop(key, None)
            self.elastic_below.discard(key)
            gone = self.jobs.pop(key, None)
            self.book.forget(tj_path(str(meta.get("namespace")), str(meta.get("name"))))
            if gone is not None:
                self._remove_pods(key, [p for p in self.cache.job_pods(key).values()
                                        if not p.deleting or (p.node and self._node_unreachable(p.node))],
                                  evict=False)
        else:
            try:
                spec: TrainingJobSpec | SpecError = parse_trainingjob(body, self.levels)
            except SpecError as exc:
                spec = exc
            if tracked is None or (tracked.body.get("metadata") or {}).get("uid") != meta.get("uid"):
                self.jobs[key] = Tracked(body=body, spec=spec)
            else:
                tracked.body, tracked.spec = body, spec
        self.wake.set()

    def on_queue(self, kind: str, body: dict[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name"))
        if kind == "DELETED":
            self.queue_bodies.pop(name, None)
            self.book.forget(queue_path(name))
        else:
            self.queue_bodies[name] = body
        self._follow_all = True
        self.wake.set()

    def on_priority_class(self, kind: str, key: str, old: Any, new: PriorityClassInfo | None) -> None:
        if new is None:
            self.priority_classes.pop(key, None)
        else:
            self.priority_classes[key] = new
        self._follow_all = True
        self.wake.set()

    def on_pod_change(self) -> None:
        self.wake.set()
        if self.binder.waiting:  # a task per pod event only when a gang waits for room
            asyncio.get_running_loop().create_task(self.binder.notify())

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self.write_statuses(), name="status-writer")
        try:
            await self._cycles()
        finally:
            writer.cancel()

    async def _cycles(self) -> None:
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: never swallows a cancellation
                async with asyncio.timeout(self.config.cycle_max_interval_seconds):
                    await self.wake.wait()
            gap = self.config.cycle_min_interval_seconds - (time.monotonic() - last)
            if gap > 0:
                await asyncio.sleep(gap)
            self.wake.clear()
            last = time.monotonic()
            if not self.leading:
                continue
            try:
                self.cycle()
            except Exception:  # one bad cycle must not stop the scheduler
                log.exception("cycle failed; retrying on the next change")
            self._flush_wanted.set()

    async def write_statuses(self) -> None:
        """Status writes, apart from the cycle: a slow write wave never delays the next decision."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            try:
                if await self.book.flush(limit=STATUS_BATCH):
                    self._flush_wanted.set()  # the rest after a look at what became more urgent
            except Exception as exc:  # the API server is away; statuses are rewritten next time
                log.warning("status writes failed: %s", exc)
                await asyncio.sleep(1.0)
                self._flush_wanted.set()

    def cycle(self) -> CycleReport:
        report = CycleReport()
        clock = time.perf_counter
        mark = clock()

        def lap(name: str) -> None:
            nonlocal mark
            now = clock()
            report.phase_seconds[name] = now - mark
            mark = now

        now = self.clock()
        # 1. Cache and queues.
        self.cache.refresh()
        self._resend_removals(now)
        held = self.cache.apply_conflicts()
        if self.cache.generation != self._eligibility_generation:
            self.eligibility.set_nodes(self.cache.nodes.values())
            self._eligibility_generation = self.cache.generation
            self._nodes_unready = any(not n.ready for n in self.cache.nodes.values())
            self._follow_all = True
        queues, queue_errors, allowed_ns = self._queues()
        lap("observe")

        # 2.-3. Follow jobs to their phase (only those whose inputs changed); collect pending and running.
        pending: list[Job] = []
        running: list[RunningJob] = []
        waiting: dict[JobId, tuple[str, str]] = {}
        plain: dict[JobId, PodRecord] = {}
        dirty = self._take_dirty(now)
        for key, tracked in list(self.jobs.items()):
            followed = None if dirty is None or key in dirty else self._followed.get(key)
            if followed is None:
                n_pending, n_running = len(pending), len(running)
                self._follow(key, tracked, now, queues, queue_errors, allowed_ns, pending, running, waiting)
                followed = Followed(
                    pending[n_pending] if len(pending) > n_pending else None,
                    running[n_running] if len(running) > n_running else None,
                    waiting.get(JobId(key)),
                )
                self._followed[key] = followed
                report.followed += 1
            else:
                if followed.pending is not None:
                    pending.append(followed.pending)
                if followed.running is not None:
                    running.append(followed.running)
                if followed.waiting is not None:
                    waiting[JobId(key)] = followed.waiting
        self._plain_pods(now, queues, queue_errors, allowed_ns, pending, running, waiting, plain)
        lap("follow")

        # 4. The core decides: when jobs wait, or an elastic job below full size could grow on free GPUs.
        plan: Plan | None = None
        state = self.cache.state
        # Backpressure: with the binder this far behind, admitting more only promises GPUs to pods the API
        # server will not see for minutes (a 1,250-node factory run at 26 jobs/s had ~7,000 admitted gangs
        # queued in the binder while the cluster's pods used a third of the GPUs counted as allocated).
        # The core runs again once half the room is free: planning thousands of bindings to apply a
        # dozen cost 3-4 s per cycle at 13,000 pending (factory run 3).
        report.binder_full = self.binder.in_flight > self.config.max_binds_in_flight // 2
        if report.binder_full:
            pass
        elif pending or (self.elastic_below and bool((state.gpu_max_free_milli[state.schedulable] > 0).any())):
            snapshot = Snapshot(
                nodes=tuple(self.cache.nodes[str(n)].node for n in self.cache.state.node_names),
                queues=tuple(queues.values()),
                pending=tuple(pending),
                running=tuple(running),
                topology=self.cache.topology,
                now=now,
                usage_milli_seconds={QueueName(q): v for q, v in self.usage.decayed_milli_seconds().items()}
                if self.config.scheduler.usage_half_life_seconds else {},
            )
            try:
                plan = run_cycle(snapshot, self.core_config, state=self.cache.state,
                                 policy_context=self.policy_context())
            except (InvalidSpecError, StateError) as exc:
                log.error("cycle skipped: %s", exc)
        lap("decide")

        # 5. Apply the plan.
        if plan is not None:
            report.cycle_id = plan.cycle_id
            report.phase_seconds.update({f"core_{k}": v for k, v in plan.phase_seconds.items() if k != "total"})
            self._apply(plan, plain, report)
            for job_id, why in reasons_by_job(plan.pending):  # (no reason objects made)
                waiting[job_id] = (why.code, why.message)
        for job_id, (code, message) in waiting.items():
            self._say_pending(job_id, code, message, plain)
            report.reasons[code] += 1
        report.pending = len(waiting) + report.deferred  # deferred: placed, left for a later cycle
        report.running = len(running)
        lap("apply")

        # 6. Queue statuses and GPU reservations.
        self._queue_status(queues, queue_errors, running, pending, plan, now)
        self._reservations()
        lap("status")
        self.last, self.last_plan = report, plan
        self.last_pending, self.last_running = pending, running
        for listener in self.cycle_listeners:
            listener(report, plan)
        if report.binder_full and now >= self._binder_full_said_at + 10:
            self._binder_full_said_at = now
            log.info("cycle: the binder has %d gangs in hand (max_binds_in_flight %d): admitting nothing until "
                     "it catches up; %d jobs wait", self.binder.in_flight, self.config.max_binds_in_flight,
                     len(pending))
        if plan is not None:
            times = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in report.phase_seconds.items())
            log.log(
                logging.INFO if report.binds or report.evictions else logging.DEBUG,
                "cycle %s: %d bound, %d evicted, %d pending, %d running%s; %s%s",
                report.cycle_id, report.binds, report.evictions, report.pending, report.running,
                f", {report.deferred} deferred (binder full)" if report.deferred else "", times,
                f"; nodes held back: {', '.join(sorted(held))}" if held else "",
                extra={"fields": {
                    "event": "cycle", "cycle": report.cycle_id, "bound": report.binds, "evicted": report.evictions,
                    "pending": report.pending, "running": report.running,
                    "phase_ms": {k: round(v * 1000, 2) for k, v in report.phase_seconds.items()},
                    "held_back": sorted(held),
                }},
            )
        return report

    def _take_dirty(self, now: float) -> set[str] | None:
        """The jobs to follow in this cycle; None for all of them."""
        self._dirty |= self.cache.take_touched_jobs()
        while self._timers and self._timers[0][0] <= now:
            self._dirty.add(heapq.heappop(self._timers)[1])
        dirty, self._dirty = self._dirty, set()
        if self._follow_all or self._nodes_unready or now - self._followed_all_at >= FULL_FOLLOW_SECONDS:
            self._follow_all = False
            self._followed_all_at = now
            return None
        return dirty

    def _follow_at(self, when: float, key: str) -> None:
        """Follow `key` again at `when` (wall clock), dirty or not."""
        heapq.heappush(self._timers, (when, key))

    # -- 1. queues --------------------------------------------------------------------------------

    def _queues(self) -> tuple[dict[QueueName, Queue], dict[str, str], dict[str, frozenset[str]]]:
        """The valid queues (a tree the core accepts), errors by queue name, allowed namespaces."""
        specs: dict[str, QueueSpec] = {}
        errors: dict[str, str] = {}
        for name, body in self.queue_bodies.items():
            try:
                specs[name] = parse_queue(body)
                build_queue_tree([_detached(specs[name].queue)])
            except (SpecError, InvalidSpecError) as exc:
                errors[name] = str(exc)
                specs.pop(name, None)
        changed = True
        while changed:  # drop queues whose parent is missing or invalid, transitively; and cycles
            changed = False
            for name, spec in list(specs.items()):
                parent = spec.queue.parent
                if parent is not None and parent not in specs:
                    why = errors.get(parent, "")
                    errors[name] = (
                        f"parent queue {parent} is invalid ({why})" if why
                        else f"parent queue {parent} does not exist; create it or change spec.parent"
                    )
                    del specs[name]
                    changed = True
        for name in list(specs):
            seen: set[str] = set()
            current = specs.get(name)
            while current is not None and current.queue.parent is not None:
                if current.queue.name in seen:
                    errors[name] = f"spec.parent forms a cycle through {', '.join(sorted(seen))}"
                    break
                seen.add(current.queue.name)
                current = specs.get(current.queue.parent)
        for name in list(specs):
            if name in errors:
                del specs[name]
        queues = {QueueName(n): s.queue for n, s in specs.items()}
        return queues, errors, {n: s.namespaces for n, s in specs.items()}

    # -- 2. TrainingJobs --------------------------------------------------------------------------

    def _follow(
        self,
        key: str,
        tracked: Tracked,
        now: float,
        queues: Mapping[QueueName, Queue],
        queue_errors: Mapping[str, str],
        allowed_ns: Mapping[str, frozenset[str]],
        pending: list[Job],
        running: list[RunningJob],
        waiting: dict[JobId, tuple[str, str]],
    ) -> None:
        body = tracked.body
        meta = body.get("metadata") or {}
        path = tj_path(str(meta.get("namespace")), str(meta.get("name")))
        status = self.book.view(path, str(meta.get("uid")), body.get("status"))
        spec = tracked.spec
        self.elastic_below.discard(key)
        if meta.get("deletionTimestamp"):
            return
        if isinstance(spec, SpecError):
            self._set_phase(status, "Pending")
            waiting[JobId(key)] = ("InvalidSpec", f"{spec}; delete and re-create the TrainingJob with a fixed spec")
            return
        if "queuedAt" not in status:
            status["queuedAt"] = rfc3339(spec.created)
        status.setdefault("restarts", 0)
        status.setdefault("preemptions", 0)
        status["gpus"] = gpus_text(spec.total_milli)
        if tracked.uncertain:
            self._settle_uncertain(tracked, now)
        pods = self.cache.job_pods(key)
        stale = [p for p in pods.values() if p.owner_uid != spec.uid and not p.deleting]
        if stale:  # pods of an earlier TrainingJob with the same name
            self._remove_pods(key, stale, evict=False)
        own = {k: p for k, p in pods.items() if p.owner_uid == spec.uid}
        live = {k: p for k, p in own.items() if k not in self.cache.evicted}
        phase = status.get("phase", "Pending")
        busy = tracked.task is not None and not tracked.task.done()

        if phase in ("Succeeded", "Failed"):
            leftovers = [p for p in live.values() if p.holds_resources and not p.deleting]
            if leftovers and not busy:
                self._remove_pods(key, leftovers, evict=False)
            return
        priority = self._priority(spec)
        if isinstance(priority, str):
            self._set_phase(status, "Pending")
            waiting[JobId(key)] = ("UnknownPriorityClass", priority)
            return

        try:
            pod_spec = spec.template.get("spec") or {}
            if tracked.constraints is None:  # once per TrainingJob: its spec is immutable
                tracked.constraints = constraints_key(pod_spec)
            allowed = self.eligibility.allowed(pod_spec, tracked.constraints)
        except ConstraintError as exc:
            self._set_phase(status, "Pending")
            waiting[JobId(key)] = ("InvalidSpec", f"spec.template.spec.{exc}")
            return
        if tracked.pod_keys and not tracked.removing and self._in_flight(tracked, busy, now):
            # Being created and bound (or bound, and the watch has not shown it yet): its GPUs are
            # promised in the cache, and it is no victim until it is seen running (`_running`).
            charged = [(k, self.cache.charges[k]) for k in tracked.pod_keys if k in self.cache.charges]
            if charged:
                running.append(self._running(spec, priority, charged, now, status, allowed, in_flight=True))
            if not busy:  # bound: the watch confirms it (a pod event), or `_in_flight` gives up on it
                self._follow_at(tracked.bound_at + IN_FLIGHT_GIVE_UP_SECONDS, key)
            return
        if busy or (not live and own):
            return  # pods still being removed; the job is requeued once they are gone
        if not live:
            if tracked.retry_after > now or tracked.uncertain:  # uncertain: an earlier attempt may exist
                self._follow_at(max(tracked.retry_after, min(tracked.uncertain.values(), default=0.0)), key)
                waiting[JobId(key)] = (
                    status.get("reason", "BindFailed"), status.get("message", "retrying after a failed bind")
                )
                return
            self._set_phase(status, "Pending")
            reason = self._admissible(spec.queue, spec.namespace, queues, queue_errors, allowed_ns)
            if reason is not None:
                waiting[JobId(key)] = reason
                return
            queued_at = timestamp(status.get("queuedAt")) or spec.created
            pending.append(core_job(spec, priority, queued_at, allowed))
            return

        # The job has pods: what state is the gang in?
        growth = self._growth_in_flight(tracked, now)
        if growth:  # new replicas of an elastic job on their way: they are not part of the gang yet
            live = {k: p for k, p in live.items() if k not in growth}
        if spec.is_elastic:
            live = self._drop_unbound_extras(key, spec, live)
        failed = [p for p in live.values() if p.phase == "Failed"]
        lost = [p for p in live.values() if p.node and self._node_lost(p.node, now)]
        least = spec.min_replicas if spec.is_elastic and spec.min_replicas else spec.replicas
        complete = least <= len(live) <= spec.replicas and all(p.node for p in live.values())
        if failed:
            self._replica_failed(key, tracked, spec, status, failed, list(live.values()), now)
            return
        if complete and "admittedAt" not in status and not growth:
            # Found whole by a process that did not admit it (this one restarted before the admission's
            # status write went out): the admission is when its pods were created, as the API server
            # recorded it. Without it the job's age counted from every cycle's "now" (never old enough
            # to be a victim past its minimum runtime) and its admission was missing from its status.
            status["admittedAt"] = rfc3339(min(p.created for p in live.values()))
        if complete and all(p.phase == "Succeeded" for p in live.values()) and not growth:
            done = f"all {len(live)} replicas succeeded"
            self._set_phase(status, "Succeeded", "Completed", done)
            status["finishedAt"] = rfc3339(max((p.finished for p in live.values()), default=now) or now)
            set_condition(status, "Running", False, "Completed", "all replicas finished")
            set_condition(status, "Finished", True, "Succeeded", done)
            self._event(path, meta, "Succeeded", done)
            return
        if lost:
            nodes = sorted({p.node for p in lost})
            self._requeue(key, tracked, status, list(live.values()), "NodeLost",
                          f"node {', '.join(nodes)} is gone or NotReady; the gang was evicted whole and requeued")
            return
        if not complete:
            bound = sum(1 for p in live.values() if p.node)
            found = (f"found {bound} replicas bound, needs at least {spec.min_replicas} of {spec.replicas}"
                     if spec.is_elastic else f"found {bound} of {spec.replicas} replicas bound")
            self._requeue(key, tracked, status, list(live.values()), "IncompleteGang",
                          f"{found} (an earlier attempt stopped half-way); rolled back and requeued")
            return
        # Running (or starting).
        charged = [(k, self.cache.charges[k]) for k in live if k in self.cache.charges]
        charged += [(k, self.cache.charges[k]) for k in growth if k in self.cache.charges]
        # A job with a replica finished cannot grow or shrink any more: the core sees it rigid.
        elastic = spec.is_elastic and not any(p.terminal for p in live.values())
        if charged:
            held = self._running(spec, priority, charged, now, status, allowed, in_flight=bool(growth),
                                 elastic=elastic)
            running.append(held)
            if held.job.is_elastic and len(held.placements) < held.job.replicas:
                self.elastic_below.add(key)
        if spec.is_elastic:
            status["replicas"] = len(live)
        if all(p.phase in ("Running", "Succeeded") for p in live.values()):
            started = min(p.started or p.created for p in live.values())
            size = f"{len(live)} of {spec.replicas} replicas running (elastic, at least {spec.min_replicas})" \
                if spec.is_elastic else f"{spec.replicas} replicas running"
            if status.get("phase") != "Running" or (spec.is_elastic and status.get("message") != size):
                self._set_phase(status, "Running", "Running", size)
                set_condition(status, "Running", True, "Running", size)
            if status.get("phase") == "Running" and "startedAt" not in status:
                status["startedAt"] = rfc3339(started)
            if spec.max_runtime_seconds is not None and now - started <= spec.max_runtime_seconds:
                self._follow_at(started + spec.max_runtime_seconds + 0.001, key)
            elif spec.max_runtime_seconds is not None:
                message = f"ran longer than maxRuntimeSeconds={spec.max_runtime_seconds:g}; stopped"
                self._set_phase(status, "Failed", "MaxRuntimeExceeded", message)
                status["finishedAt"] = rfc3339(now)
                set_condition(status, "Running", False, "MaxRuntimeExceeded", message)
                set_condition(status, "Finished", True, "MaxRuntimeExceeded", message)
                self._event(path, meta, "MaxRuntimeExceeded", message, "Warning")
                self._remove_pods(key, list(live.values()), evict=False)

    def _in_flight(self, tracked: Tracked, busy: bool, now: float) -> bool:
        """The current placement's pods are not all seen bound yet (the binder runs, or just ran)."""
        if busy:
            return True
        observed = [self.cache.pods.get(k) for k in tracked.pod_keys]
        # Give up waiting for the watch only when the binder did not confirm every bind: a confirmed gang
        # is bound on the API server however late a loaded watch shows it (rolling it back as an
        # incomplete gang deleted hundreds of bound pods in a 500-node fill, docs/bench-e2e.md).
        if all(p is not None and p.node for p in observed) or (
            now - tracked.bound_at > IN_FLIGHT_GIVE_UP_SECONDS and not tracked.bind_ok
        ):
            tracked.pod_keys = ()  # seen (or given up on: the informer relists if it missed them)
            return False
        return any(k in self.cache.assumed for k in tracked.pod_keys)

    def _running(self, spec: TrainingJobSpec, priority: PriorityClassInfo, charged: list[tuple[str, Charge]],
                 now: float, status: Mapping[str, Any], allowed: frozenset[NodeName] | None,
                 in_flight: bool = False, elastic: bool = False) -> RunningJob:
        # A gang in flight counts as starting in the future: never a victim (its evictions could not
        # reach pods that do not exist yet, while its bind would still land). An elastic job is shown
        # with its full size and minimum, holding the replicas it has: the core may grow or shrink it.
        started = math.inf if in_flight else timestamp(status.get("admittedAt")) or now
        elastic = elastic and spec.min_replicas is not None and spec.min_replicas <= len(charged) <= spec.replicas
        job = core_job(spec, priority, timestamp(status.get("queuedAt")) or spec.created, allowed,
                       replicas=None if elastic else len(charged))
        placements = tuple(ReplicaPlacement(NodeName(c.node), c.gpu_indices) for _k, c in charged)
        return RunningJob(job=job, placements=placements, started_at=started)

    def _priority(self, spec: TrainingJobSpec) -> PriorityClassInfo | str:
        info = self.priority_classes.get(spec.priority_class)
        if info is None:
            known = ", ".join(sorted(self.priority_classes)) or "none"
            return (f"PriorityClass {spec.priority_class!r} does not exist (known: {known}); "
                    "ask a platform engineer to create it, or use one of these")
        return info

    def _admissible(
        self, queue: str, namespace: str, queues: Mapping[QueueName, Queue], queue_errors: Mapping[str, str],
        allowed_ns: Mapping[str, frozenset[str]],
    ) -> tuple[str, str] | None:
        if queue in queue_errors:
            return ("QueueInvalid", f"queue {queue} is invalid: {queue_errors[queue]}")
        if QueueName(queue) not in queues:
            return None  # the core says UnknownQueue with its words
        allowed = allowed_ns.get(queue, frozenset())
        if allowed and namespace not in allowed:
            return ("NamespaceNotAllowed",
                    f"queue {queue} accepts jobs from namespaces {', '.join(sorted(allowed))}, not {namespace}; "
                    "submit to a queue that lists this namespace, or ask a platform engineer to add it")
        return None

    def _node_unreachable(self, node: str) -> bool:
        """The node is gone, or NotReady past the grace period (no kubelet to finish its pods)."""
        record = self.cache.nodes.get(node)
        if record is None:
            return True
        since = self.node_lost_since.get(node)
        return not record.ready and since is not None and self.clock() - since >= self.config.node_lost_grace_seconds

    def _node_lost(self, node: str, now: float) -> bool:
        record = self.cache.nodes.get(node)
        if record is None:
            return True
        if record.ready:
            self.node_lost_since.pop(node, None)
            return False
        since = self.node_lost_since.setdefault(node, now)
        return now - since >= self.config.node_lost_grace_seconds

    def _replica_failed(self, key: str, tracked: Tracked, spec: TrainingJobSpec, status: dict[str, Any],
                        failed: list[PodRecord], live: list[PodRecord], now: float) -> None:
        meta = tracked.body.get("metadata") or {}
        path = tj_path(spec.namespace, spec.name)
        first = failed[0]
        why = f"replica {first.name} failed" + (f": {first.exit_reason}" if first.exit_reason else "")
        restarts = int(status.get("restarts", 0))
        if restarts < spec.backoff_limit:
            status["restarts"] = restarts + 1
            message = f"{why}; restarting the gang ({restarts + 1} of backoffLimit {spec.backoff_limit})"
            self._requeue(key, tracked, status, live, "Restarting", message, count_preemption=False)
            return
        message = f"{why}; backoffLimit {spec.backoff_limit} reached" if spec.backoff_limit else f"{why}"
        self._set_phase(status, "Failed", "ReplicaFailed", message)
        status["finishedAt"] = rfc3339(now)
        set_condition(status, "Running", False, "ReplicaFailed", message)
        set_condition(status, "Finished", True, "Failed", message)
        self._event(path, meta, "Failed", message, "Warning")
        self._remove_pods(key, [p for p in live if p.holds_resources], evict=False)

    def _requeue(self, key: str, tracked: Tracked, status: dict[str, Any], pods: list[PodRecord], reason: str,
                 message: str, *, count_preemption: bool = False, evict: bool = False, by: str = "") -> None:
        meta = tracked.body.get("metadata") or {}
        path = tj_path(str(meta.get("namespace")), str(meta.get("name")))
        self._set_phase(status, "Pending", reason, message)
        status["queuedAt"] = rfc3339(self.clock())
        for stale in ("admittedAt", "startedAt", "placement"):
            status.pop(stale, None)
        set_condition(status, "Admitted", False, reason, message)
        set_condition(status, "Running", False, reason, message)
        if count_preemption:
            status["preemptions"] = int(status.get("preemptions", 0)) + 1
            set_condition(status, "Preempted", True, reason, message)
        self._event(path, meta, reason, message, "Warning", by=by)
        self._remove_pods(key, pods, evict=evict)

    def _remove_pods(self, key: str, pods: list[PodRecord], *, evict: bool) -> None:
        if not pods:
            return
        task = self._start_removal(key, pods, evict=evict)
        tracked = self.jobs.get(key)
        if tracked is not None:
            tracked.task, tracked.removing = task, True

    def _start_removal(self, owner: str, pods: Sequence[PodRecord], *, evict: bool) -> asyncio.Task[None]:
        """Evict or delete `pods` (their resources are promised elsewhere from now on) and remember
        each until it is gone, so a removal the API server refused is sent again."""
        self.cache.release_evicted(p.key for p in pods)
        # On a node that is gone (or NotReady past the grace period) no kubelet confirms a graceful
        # deletion: such pods would stay Terminating, and their names would block the requeued gang.
        force = [(p.namespace, p.name) for p in pods if p.node and self._node_unreachable(p.node)]
        task = asyncio.get_running_loop().create_task(
            self.binder.remove_gang([(p.namespace, p.name) for p in pods], evict=evict, force=force)
        )
        removal = Removal(task, self.clock() + REMOVAL_RETRY_SECONDS, owner)
        for pod in pods:
            self.removals[pod.key] = removal
        self._dirty.add(owner)
        task.add_done_callback(functools.partial(self._done, owner))
        return task

    def _resend_removals(self, now: float) -> None:
        """A pod whose removal was answered REMOVAL_RETRY_SECONDS ago and is still there, not
        terminating, was refused (an API server that just came back answers 403 until its authorizer
        has synced): delete it again. Until it is gone its GPUs are neither free nor promised, and
        every bind to its node waits (`_room_is_free`) — one forgotten pod held a node for minutes."""
        for pod_key, removal in list(self.removals.items()):
            pod = self.cache.pods.get(pod_key)
            if pod is None:
                del self.removals[pod_key]
            elif not pod.deleting and removal.task.done() and now >= removal.retry_at:
                log.warning("removal of pod %s (%s) incomplete: still there and not terminating; deleting it "
                            "again", pod_key, removal.owner)
                self._start_removal(removal.owner, [pod], evict=False)

    def _settle_uncertain(self, tracked: Tracked, now: float) -> None:
        """Pods of an unanswered attempt: once the informer has one, its record charges what it holds
        (bound, or planned and unbound) and the promise goes; one never seen is forgotten after
        UNCERTAIN_SECONDS (the watch resumes within seconds of the API server's return)."""
        for pod_key, until in list(tracked.uncertain.items()):
            if pod_key in self.cache.pods or now >= until:
                del tracked.uncertain[pod_key]
                self.cache.forget(pod_key)

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("binder task failed: %s", task.exception())
        self._dirty.add(key)
        self.wake.set()

    # -- 3. plain pods ----------------------------------------------------------------------------

    def _plain_pods(self, now: float, queues: Mapping[QueueName, Queue], queue_errors: Mapping[str, str],
                    allowed_ns: Mapping[str, frozenset[str]], pending: list[Job], running: list[RunningJob],
                    waiting: dict[JobId, tuple[str, str]], plain: dict[JobId, PodRecord]) -> None:
        name = self.config.scheduler_name
        for key in [k for k in self.plain_said if k not in self.cache.pods or self.cache.pods[k].node]:
            del self.plain_said[key]  # bound or gone: the API server set PodScheduled True, or no pod
        for key, pod in self.cache.pods.items():
            if pod.scheduler != name or pod.job or pod.role or not pod.queue:
                continue
            task = self.plain_tasks.get(key)
            if pod.node and task is not None and task.done():
                del self.plain_tasks[key]
                task = None
            if pod.node or task is not None:  # bound, or being bound (in flight: no victim yet)
                charge = self.cache.charges.get(key)
                if charge is not None:
                    job = plain_pod_job(pod, None)
                    placement = ReplicaPlacement(NodeName(charge.node), charge.gpu_indices)
                    started = math.inf if task is not None else pod.started or pod.created
                    running.append(RunningJob(job=job, placements=(placement,), started_at=started))
                continue
            if pod.deleting or pod.terminal or self.plain_retry.get(key, 0.0) > now:
                continue
            job_id = JobId(f"{pod.namespace}/pod/{pod.name}")
            reason = self._admissible(pod.queue, pod.namespace, queues, queue_errors, allowed_ns)
            if reason is not None:
                waiting[job_id] = reason
                continue
            spec = thaw(pod.spec_constraints) or {}
            try:
                allowed = self.eligibility.allowed(spec, constraints_key(spec))
            except ConstraintError as exc:
                waiting[job_id] = ("InvalidSpec", f"spec.{exc}")
                continue
            job = plain_pod_job(pod, allowed)
            pending.append(job)
            plain[job.id] = pod

    # -- 5. apply ---------------------------------------------------------------------------------

    def _apply(self, plan: Plan, plain: Mapping[JobId, PodRecord], report: CycleReport) -> None:
        moved = {b.job_id for b in plan.bindings}
        for eviction in plan.evictions:
            self._evict(eviction, moved)
            report.evictions += 1
        for shrink in plan.shrinks:
            self._shrink(shrink)
            report.evictions += 1
        # Backpressure inside a cycle too: past `max_binds_in_flight` gangs in the binder, bindings are
        # left for a later cycle (the core planned on a copy, so nothing is promised for them) — except
        # those that evictions or shrinks were made for, and moved jobs, which must go through.
        room = self.config.max_binds_in_flight - self.binder.in_flight
        bindings: Sequence[Binding] = plan.bindings
        needed: set[JobId] = set()
        if room < len(plan.bindings) + len(plan.grows):
            needed = ({e.for_job for e in plan.evictions} | {e.job_id for e in plan.evictions}
                      | {s.for_job for s in plan.shrinks})
            bindings = self._round_robin(plan.bindings, plain)
        for binding in bindings:
            if room <= 0 and binding.job_id not in needed:
                report.deferred += 1
                continue
            room -= 1
            if binding.job_id in plain:
                self._bind_plain(plain[binding.job_id], binding.placements[0])
            else:
                self._bind_job(str(binding.job_id), binding.placements, binding.job_id in
                               {e.job_id for e in plan.evictions})
            report.binds += 1
        for growth in plan.grows:
            if room <= 0:
                report.deferred += 1
                continue
            room -= 1
            self._grow(growth)
            report.binds += 1

    def _round_robin(self, bindings: Sequence[Binding], plain: Mapping[JobId, PodRecord]) -> list[Binding]:
        """The plan's bindings taken one queue at a time in turn (each queue's in plan order), so that
        when only some fit into the binder every queue gets its share of them: in plan order a
        reserved pool's gangs came after 7,800 other bindings and did not start for 20 minutes."""
        by_queue: dict[str, list[Binding]] = {}
        for binding in bindings:
            pod = plain.get(binding.job_id)
            tracked = self.jobs.get(str(binding.job_id))
            queue = pod.queue if pod is not None else (
                tracked.spec.queue if tracked is not None and isinstance(tracked.spec, TrainingJobSpec) else "")
            by_queue.setdefault(queue, []).append(binding)
        lanes = list(by_queue.values())
        return [lane[i] for i in range(max((len(lane) for lane in lanes), default=0)) for lane in lanes
                if i < len(lane)]

    # -- elastic jobs -----------------------------------------------------------------------------

    def _growth_in_flight(self, tracked: Tracked, now: float) -> set[str]:
        """Pods of the job's last growth not yet seen bound by the informer (while the binder works,
        or after it confirmed them until the watch shows them, at most IN_FLIGHT_GIVE_UP_SECONDS)."""
        if not tracked.growth_keys:
            return set()
        task = tracked.growth_task
        if task is None or task.done():
            seen = all((p := self.cache.pods.get(k)) is not None and p.node for k in tracked.growth_keys)
            if seen or now - tracked.grown_at > IN_FLIGHT_GIVE_UP_SECONDS:
                tracked.growth_keys = ()
                return set()
        return set(tracked.growth_keys)

    def _drop_unbound_extras(self, key: str, spec: TrainingJobSpec,
                             live: dict[str, PodRecord]) -> dict[str, PodRecord]:
        """An elastic job with unbound pods beside at least its minimum of bound ones (a growth or
        admission cut short by a restart of the operator): the unbound go, the bound keep running."""
        unbound = [p for p in live.values() if not p.node]
        if not unbound or len(live) - len(unbound) < (spec.min_replicas or 1):
            return live
        log.warning("%s: %d replica pod(s) of an interrupted growth were never bound; deleting them, the other "
                    "%d keep running", key, len(unbound), len(live) - len(unbound))
        self._start_removal(key, unbound, evict=False)
        return {k: p for k, p in live.items() if p.node}

    def _shrink(self, shrink: Shrink) -> None:
        """Take the replicas `shrink` names from a running elastic job; the rest keep running."""
        key = str(shrink.job_id)
        tracked = self.jobs.get(key)
        if tracked is None or not isinstance(tracked.spec, TrainingJobSpec):
            return
        spec = tracked.spec
        wanted = Counter((str(p.node), tuple(p.gpu_indices)) for p in shrink.placements)
        live = {k: p for k, p in self.cache.job_pods(key).items() if k not in self.cache.evicted}
        going: list[PodRecord] = []
        for pod_key, pod in sorted(live.items(), key=lambda kv: -kv[1].replica):  # highest replicas first
            charge = self.cache.charges.get(pod_key)
            spot = (charge.node, tuple(charge.gpu_indices)) if charge is not None else None
            if spot is not None and wanted[spot] > 0:
                wanted[spot] -= 1
                going.append(pod)
        if not going:
            return
        self._start_removal(key, going, evict=True)
        reason = EVICTION_REASONS[shrink.kind]
        left = len(live) - len(going)
        message = (f"shrunk by {len(going)} replica{'s' if len(going) != 1 else ''} to {left} of {spec.replicas} "
                   f"(elastic, at least {spec.min_replicas}): {reason.lower()} for {shrink.for_job}: {shrink.reason}")
        log.info("shrink %s: %s", key, message)
        self._resized(key, tracked, "shrink", reason, message, going, by=str(shrink.for_job))

    def _grow(self, growth: Growth) -> None:
        """Create and bind new replicas of a running elastic job on GPUs that are free; its other
        replicas keep running. New pods take the lowest replica indices not in use, under an attempt
        name of their own (never the name of a replica that may still be terminating)."""
        key = str(growth.job_id)
        tracked = self.jobs.get(key)
        if tracked is None or not isinstance(tracked.spec, TrainingJobSpec):
            return
        spec = tracked.spec
        priority = self._priority(spec)
        if not isinstance(priority, PriorityClassInfo):
            return
        live = {k: p for k, p in self.cache.job_pods(key).items() if k not in self.cache.evicted}
        taken = {p.replica for p in live.values()}
        free_indices = (i for i in range(spec.replicas + len(taken)) if i not in taken)
        attempt = new_attempt()
        writes: list[PodWrite] = []
        for placement, index in zip(growth.placements, free_indices, strict=False):
            manifest = replica_pod(spec, index, placement, priority, self.config.scheduler_name, attempt)
            write = PodWrite(spec.namespace, replica_pod_name(spec.name, attempt, index), str(placement.node), manifest)
            self.cache.assume(write.key, Charge(str(placement.node), placement.gpu_indices,
                                                spec.gpu_milli if spec.gpus else 0, spec.cpu_milli, spec.memory_mib))
            writes.append(write)
        nodes = {str(p.node) for p in growth.placements}
        whole = set() if spec.is_fraction else {(str(p.node), g) for p in growth.placements for g in p.gpu_indices}
        task = self.binder.start(writes, lambda: self._room_is_free(nodes, whole))
        tracked.growth_task, tracked.growth_keys, tracked.grown_at = task, tuple(w.key for w in writes), self.clock()
        message = (f"grown by {len(writes)} replica{'s' if len(writes) != 1 else ''} to {len(live) + len(writes)} of "
                   f"{spec.replicas} on free GPUs ({self._placement_summary(growth.placements)['text']})")
        log.info("grow %s: %s", key, message)
        self._resized(key, tracked, "grow", "Grown", message, [], by="")

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is not None:
                error = "cancelled" if t.cancelled() else str(t.exception())
                log.warning("growing %s failed: %s", key, error)
                for write in writes:
                    self.cache.forget(write.key)
                tracked.growth_keys = ()
            self._dirty.add(key)
            self.wake.set()

        task.add_done_callback(done)
        self._dirty.add(key)

    def _resized(self, key: str, tracked: Tracked, kind: str, reason: str, message: str,
                 pods: list[PodRecord], *, by: str) -> None:
        """The audit record and the Event of a growth or a shrink (each one, not one per reason)."""
        spec = tracked.spec
        assert isinstance(spec, TrainingJobSpec)
        by_tracked = self.jobs.get(by) if by else None
        per_replica = spec.gpus * spec.gpu_milli
        self.decisions.record(
            time=self.clock(), kind=kind, job=key, queue=spec.queue, namespace=spec.namespace, reason=reason,
            message=message, by=by,
            by_queue=by_tracked.spec.queue if by_tracked and isinstance(by_tracked.spec, TrainingJobSpec) else "",
            nodes=tuple(sorted({p.node for p in pods if p.node})), gpus_milli=per_replica * len(pods),
            cycle=self.last.cycle_id,
        )
        meta = tracked.body.get("metadata") or {}
        self._post_event(meta, "Shrunk" if kind == "shrink" else "Grown", message,
                         "Warning" if kind == "shrink" else "Normal")

    def _evict(self, eviction: Eviction, moved: set[JobId]) -> None:
        key = str(eviction.job_id)
        kind = eviction.kind
        if "/pod/" in key:  # a plain pod
            ns, _, name = key.partition("/pod/")
            pod = self.cache.pods.get(f"{ns}/{name}")
            if pod is not None:
                self._start_removal(key, [pod], evict=True)
                log.info("evict %s (%s for %s): %s", key, kind.value, eviction.for_job, eviction.reason)
                by = self.jobs.get(str(eviction.for_job))
                self.decisions.record(
                    time=self.clock(), kind=DECISION_KINDS[EVICTION_REASONS[kind]], job=key, queue=pod.queue,
                    namespace=ns, reason=EVICTION_REASONS[kind], message=eviction.reason, by=str(eviction.for_job),
                    by_queue=by.spec.queue if by is not None and isinstance(by.spec, TrainingJobSpec) else "",
                    nodes=(pod.node,), gpus_milli=pod.gpu_milli * max(1, pod.gpus), cycle=self.last.cycle_id,
                )
            return
        tracked = self.jobs.get(key)
        if tracked is None or isinstance(tracked.spec, SpecError):
            return
        meta = tracked.body.get("metadata") or {}
        path = tj_path(str(meta.get("namespace")), str(meta.get("name")))
        status = self.book.view(path, str(meta.get("uid")), tracked.body.get("status"))
        pods = [p for k, p in self.cache.job_pods(key).items() if k not in self.cache.evicted]
        reason = EVICTION_REASONS[kind]
        message = eviction.reason
        if str(eviction.for_job) not in message:
            message += f" (for {eviction.for_job})"
        log.info("evict %s (%s for %s): %s", key, kind.value, eviction.for_job, eviction.reason,
                 extra={"fields": {"event": "evict", "job": key, "kind": kind.value, "for": eviction.for_job,
                                   "reason": eviction.reason}})
        if kind is EvictionKind.CONSOLIDATE and eviction.job_id in moved:
            self._event(path, meta, reason, message, by=str(eviction.for_job))
            self._start_removal(key, pods, evict=True)
            return
        self._requeue(key, tracked, status, pods, reason, message, count_preemption=True, evict=True,
                      by=str(eviction.for_job))

    def _bind_job(self, key: str, placements: tuple[ReplicaPlacement, ...], moved: bool) -> None:
        tracked = self.jobs[key]
        spec = tracked.spec
        assert isinstance(spec, TrainingJobSpec)
        priority = self._priority(spec)
        assert isinstance(priority, PriorityClassInfo)
        writes: list[PodWrite] = []
        attempt = new_attempt()
        for i, placement in enumerate(placements):
            manifest = replica_pod(spec, i, placement, priority, self.config.scheduler_name, attempt)
            write = PodWrite(spec.namespace, replica_pod_name(spec.name, attempt, i), str(placement.node), manifest)
            self.cache.assume(write.key, Charge(str(placement.node), placement.gpu_indices,
                                                spec.gpu_milli if spec.gpus else 0, spec.cpu_milli, spec.memory_mib))
            writes.append(write)
        nodes = {str(p.node) for p in placements}
        meta = tracked.body.get("metadata") or {}
        path = tj_path(spec.namespace, spec.name)
        status = self.book.view(path, str(meta.get("uid")), tracked.body.get("status"))
        where = self._placement_summary(placements)
        message = f"placed {spec.replicas} replica{'s' if spec.replicas != 1 else ''} on {where['text']}"
        if not moved:
            status["admittedAt"] = rfc3339(self.clock())
            # Written together with "Running" when the pods start within the hold (one write, not two).
            self.book.hold(path, ADMITTED_WRITE_HOLD_SECONDS, "Admitted")
        status["placement"] = where["placement"]
        self._set_phase(status, status.get("phase", "Pending") if moved else "Pending", "Admitted", message)
        set_condition(status, "Admitted", True, "Admitted", message)
        preempted = condition(status, "Preempted")
        if preempted is not None and preempted.get("status") == "True" and not moved:
            set_condition(status, "Preempted", False, "Admitted", "admitted again after the eviction")
        # An Event only for a change of reason the tenant was told about: a job admitted at first sight
        # has its Admitted condition and the audit record; one Event per admission cost the API
        # server 0.7 ms and the operator a request per job (docs/operator-throughput.md).
        self._event(path, meta, "Admitted", message, post=self.book.last_reason(path) is not None or moved)
        log.debug("bind %s: %s", key, message, extra={"fields": {  # the audit logs the decision at INFO
            "event": "bind", "job": key, "queue": spec.queue, "nodes": sorted(nodes), "message": message}})

        whole = set() if spec.is_fraction else {(str(p.node), g) for p in placements for g in p.gpu_indices}

        def ready() -> bool:
            theirs = self.cache.job_pods(key)
            if any(k not in {w.key for w in writes} or k in self.cache.evicted for k in theirs):
                return False  # older pods of this job (moved, restarted) still exist
            return self._room_is_free(nodes, whole)

        task = self.binder.start(writes, ready)
        self._dirty.add(key)
        tracked.task, tracked.removing, tracked.pod_keys = task, False, tuple(w.key for w in writes)
        tracked.bound_at, tracked.bind_ok = self.clock(), False

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is not None:
                error = "cancelled" if t.cancelled() else str(t.exception())
                if not t.cancelled() and isinstance(t.exception(), TransportError):
                    # No answer: the API server may have created and bound them before the connection
                    # dropped (a kube-apiserver killed mid-request). Keep their GPUs promised until
                    # the informer shows what happened; forgetting them double-booked a GPU.
                    until = self.clock() + UNCERTAIN_SECONDS
                    tracked.uncertain.update({w.key: until for w in writes})
                    self._follow_at(until, key)
                else:
                    for write in writes:
                        self.cache.forget(write.key)
                tracked.pod_keys = ()
                tracked.retry_after = self.clock() + self.config.bind_retry_seconds
                status.pop("admittedAt", None)
                self._set_phase(status, "Pending", "BindFailed",
                                f"{error}; retrying in {self.config.bind_retry_seconds:g} s")
                set_condition(status, "Admitted", False, "BindFailed", error)
                self.book.touch(path)
                log.warning("bind %s failed: %s", key, error)
            else:
                tracked.bind_ok = True
            self._dirty.add(key)
            self.wake.set()

        task.add_done_callback(done)

    def _bind_plain(self, pod: PodRecord, placement: ReplicaPlacement) -> None:
        charge = Charge(str(placement.node), placement.gpu_indices,
                        pod.gpu_milli if (pod.gpus or pod.fraction_milli) else 0, pod.cpu_milli, pod.memory_mib)
        self.cache.assume(pod.key, charge)
        write = PodWrite(pod.namespace, pod.name, str(placement.node), None,
                         {ASSIGNED_GPUS: ",".join(str(g) for g in placement.gpu_indices)})
        task = self.binder.start([write], lambda: self._room_is_free(
            {write.node}, {(write.node, g) for g in placement.gpu_indices} if not pod.fraction_milli else set()))
        self.plain_tasks[pod.key] = task
        self.decisions.record(
            time=self.clock(), kind="admit", job=str(plain_pod_job_id(pod)), queue=pod.queue,
            namespace=pod.namespace, reason="Admitted", message=f"bound to {placement.node}",
            nodes=(str(placement.node),), gpus_milli=charge.gpu_milli * max(1, len(charge.gpu_indices)),
            cycle=self.last.cycle_id,
        )

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or t.exception() is not None:
                self.plain_tasks.pop(pod.key, None)
                self.cache.forget(pod.key)
                self.plain_retry[pod.key] = self.clock() + self.config.bind_retry_seconds
                log.warning("bind of pod %s failed: %s", pod.key, "cancelled" if t.cancelled() else t.exception())
            self.wake.set()

        task.add_done_callback(done)

    def _room_is_free(self, nodes: set[str], whole_gpus: set[tuple[str, int]]) -> bool:
        """Nothing that gave up this room still holds it on the API server: no pod Leitstand evicted is
        left on these nodes, and no GPU reservation pod is left on a GPU a whole-GPU pod is about to
        take (a kubelet would refuse the pod while the reservation holds the device)."""
        if any(self.cache.pods[k].node in nodes for k in self.cache.evicted if k in self.cache.pods):
            return False
        if whole_gpus & self.reservations_creating:
            return False
        return not any(
            (p.planned_node or p.node, p.assigned[0]) in whole_gpus for p in self.cache.reservations.values()
            if p.assigned
        )

    def _placement_summary(self, placements: Iterable[ReplicaPlacement]) -> dict[str, Any]:
        nodes = sorted({str(p.node) for p in placements})
        state = self.cache.state
        idx = [state.node_index[NodeName(n)] for n in nodes if NodeName(n) in state.node_index]
        domain, level = "", ""
        for lvl in range(state.n_levels - 1, -1, -1):
            ids = {int(state.domain[i, lvl]) for i in idx}
            if len(ids) == 1 and -1 not in ids:
                # the tightest common level is the lowest one all nodes share
                level = self.levels[lvl]
                domain = state.domain_names[lvl][ids.pop()]
                break
        if len(nodes) == 1:
            level, domain = "node", nodes[0]
        shown = nodes[:PLACEMENT_NODES_SHOWN]
        text = ", ".join(shown) + (f" and {len(nodes) - len(shown)} more" if len(nodes) > len(shown) else "")
        if level and level != "node":
            text += f" ({level} {domain})"
        placement: dict[str, Any] = {"nodes": shown, "nodeCount": len(nodes)}
        if level:
            placement.update(level=level, domain=domain)
        return {"placement": placement, "text": text}

    # -- pending reasons, phases, events ----------------------------------------------------------

    def _say_pending(self, job_id: JobId, code: str, message: str, plain: Mapping[JobId, PodRecord]) -> None:
        key = str(job_id)
        tracked = self.jobs.get(key)
        if tracked is None:
            if "/pod/" in key:
                self._say_pod_pending(key, code, message)
            return
        meta = tracked.body.get("metadata") or {}
        path = tj_path(str(meta.get("namespace")), str(meta.get("name")))
        status = self.book.view(path, str(meta.get("uid")), tracked.body.get("status"))
        if status.get("phase") not in (None, "Pending"):
            return
        admitted = condition(status, "Admitted")
        now = self.clock()
        if (
            admitted is not None and admitted.get("status") == "False" and admitted.get("reason") == code
            and now - self._pending_said_at.get(path, 0.0) < PENDING_REFRESH_SECONDS
        ):
            return  # same reason, new numbers: refreshed at most every PENDING_REFRESH_SECONDS
        self._pending_said_at[path] = now
        set_condition(status, "Admitted", False, code, message)
        preempted = condition(status, "Preempted")
        if preempted is not None and preempted.get("status") == "True":
            # Evicted and not admitted since: the phase's reason stays the eviction (`kubectl get tj`
            # shows Reclaimed, not a bare Insufficient a cycle later); what blocks it now is in the
            # message and in the Admitted condition.
            self._set_phase(status, "Pending", str(preempted.get("reason")),
                            f"{preempted.get('message')}; waiting: {message}")
        else:
            self._set_phase(status, "Pending", code, message)
        self._event(path, meta, code, message, "Normal")

    def _say_pod_pending(self, key: str, code: str, message: str) -> None:
        """A plain pod that waits says why where `kubectl describe pod` shows it, as kube-scheduler does:
        condition PodScheduled False, reason Unschedulable, the code and message (once per change)."""
        namespace, _, name = key.partition("/pod/")
        pod = self.cache.pods.get(f"{namespace}/{name}")
        if pod is None or pod.node or pod.deleting or self.plain_said.get(pod.key) == (code, message):
            return
        self.plain_said[pod.key] = (code, message)
        scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": f"{code}: {message}"[:1024], "lastTransitionTime": rfc3339(self.clock())}
        task = asyncio.get_running_loop().create_task(self._when_binds_allow(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": {"conditions": [scheduled]}},
            content_type=STRATEGIC_MERGE_PATCH,
        ))
        self.reservation_tasks.add(task)  # keep a reference until done
        task.add_done_callback(self.reservation_tasks.discard)

    async def _when_binds_allow(self, method: str, path: str, body: Any,
                                content_type: str = "application/json") -> tuple[int, Any]:
        """A write that only informs (an Event, a plain pod's PodScheduled condition): while gangs are being
        created and bound, at most `INFORM_WRITES_WHILE_BINDING` such writes share the client with them.

        Best effort: when the API server does not answer, the write is dropped with one warning line
        (status 0). It runs as a task nobody awaits, so an exception here used to end as an asyncio
        "Task exception was never retrieved" traceback (128 of them in a factory run whose
        kube-apiserver stalled for seconds)."""
        try:
            if self.binder.active:
                async with self._inform_slots:
                    return await self.client.request(method, path, body, content_type=content_type)
            return await self.client.request(method, path, body, content_type=content_type)
        except KubeClientError as exc:
            self.inform_failures += 1
            log.warning("%s %s not written (an Event or a pod condition; not retried): %s", method, path, exc)
            return 0, None

    @staticmethod
    def _set_phase(status: dict[str, Any], phase: str, reason: str | None = None, message: str | None = None) -> None:
        status["phase"] = phase
        if reason is not None:
            status["reason"] = reason
        if message is not None:
            status["message"] = message

    def _event(self, path: str, meta: Mapping[str, Any], reason: str, message: str, kind: str = "Normal",
               *, by: str = "", post: bool = True) -> None:
        """One audit record, and unless `post` is False one Event, per change of reason of a TrainingJob."""
        if not self.book.said(path, reason, message):
            return
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        tracked = self.jobs.get(key)
        spec = tracked.spec if tracked is not None else None
        by_tracked = self.jobs.get(by) if by else None
        self.decisions.record(
            time=self.clock(),
            kind=DECISION_KINDS.get(reason, "reject"),
            job=key,
            queue=spec.queue if isinstance(spec, TrainingJobSpec) else "",
            namespace=str(meta.get("namespace", "")),
            reason=reason,
            message=message,
            by=by,
            by_queue=by_tracked.spec.queue if by_tracked and isinstance(by_tracked.spec, TrainingJobSpec) else "",
            nodes=tuple((self.book.desired.get(path, {}).get("placement") or {}).get("nodes", ()))
            if reason == "Admitted" else (),
            gpus_milli=spec.total_milli if isinstance(spec, TrainingJobSpec) else 0,
            cycle=self.last.cycle_id,
        )
        if post:
            self._post_event(meta, reason, message, kind)

    def _post_event(self, meta: Mapping[str, Any], reason: str, message: str, kind: str) -> None:
        involved = {
            "apiVersion": API_VERSION,
            "kind": "TrainingJob",
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        }
        body = event_body(involved, reason, message, kind)
        task = asyncio.get_running_loop().create_task(
            self._when_binds_allow("POST", f"/api/v1/namespaces/{meta.get('namespace')}/events", body)
        )
        self.reservation_tasks.add(task)  # keep a reference until done
        task.add_done_callback(self.reservation_tasks.discard)

    # -- 6. queues and reservations ----------------------------------------------------------------

    def _queue_status(self, queues: Mapping[QueueName, Queue], errors: Mapping[str, str],
                      running: list[RunningJob], pending: list[Job], plan: Plan | None, now: float) -> None:
        # One dict update per running job (this runs every cycle over every running job): milli-GPUs
        # and jobs per (queue, namespace); the per-queue sums follow from it.
        per: dict[tuple[str, str], list[int]] = {}
        for held in running:
            job = held.job
            key = (job.queue, job.id.partition("/")[0])
            entry = per.get(key)
            if entry is None:
                per[key] = [held.gpu_milli_total, 1]
            else:
                entry[0] += held.gpu_milli_total
                entry[1] += 1
        allocated: Counter[str] = Counter()
        running_jobs: Counter[str] = Counter()
        for (queue, _namespace), (milli, count) in per.items():
            allocated[queue] += milli
            running_jobs[queue] += count
        by_namespace = {key: milli for key, (milli, _count) in per.items()}
        self.usage.tick(now, by_namespace, self.config.scheduler.usage_half_life_seconds)
        write_usage = now - self._usage_written_at >= USAGE_WRITE_SECONDS
        if write_usage:
            self._usage_written_at = now
        waiting: Counter[str] = Counter()
        waiting_milli: Counter[str] = Counter()
        bound = {b.job_id for b in plan.bindings} if plan else set()
        for job in pending:
            if job.id not in bound:
                waiting[job.queue] += 1
                waiting_milli[job.queue] += job.gpu_milli_total
        parents = {name: q.parent for name, q in queues.items()}
        for table in (allocated, running_jobs, waiting, waiting_milli):
            for leaf, amount in list(table.items()):
                parent = parents.get(QueueName(leaf))
                while parent is not None:
                    table[parent] += amount
                    parent = parents.get(parent)
        shares = plan.fair_share_milli if plan else {}
        inner = {str((b.get("spec") or {}).get("parent")) for b in self.queue_bodies.values()
                 if (b.get("spec") or {}).get("parent")}
        # Continue each leaf's usage from its status (a parent's holds its subtree's sum: resuming it
        # would count twice), charging the gap since the last write from the pods (usage.py).
        fresh = {name: body.get("status") for name, body in self.queue_bodies.items()
                 if name not in inner and not self.usage.resumed(name)}
        if fresh:
            gaps = self.usage.resume(fresh, self.cache.pods.values())
            if gaps:
                log.info("usage resumed; GPU-seconds charged for the time before this process counted: %s",
                         {q: round(v, 1) for q, v in sorted(gaps.items())})
        for name, body in self.queue_bodies.items():
            meta = body.get("metadata") or {}
            path = queue_path(name)
            status = self.book.view(path, str(meta.get("uid")), body.get("status"))
            if write_usage:  # leaf totals; a parent's is the sum of its subtree's; both with their moment
                status["usageGPUSeconds"] = round(sum(
                    v for q, v in self.usage.totals.items() if q == name or name in self._ancestors(q, parents)), 1)
                status["usageUpdatedAt"] = rfc3339_precise(self.usage.last_tick or now)
            view = {
                "allocated": gpus_text(allocated[name]),
                "allocatedMilli": int(allocated[name]),
                "runningJobs": running_jobs[name],
                "pendingJobs": waiting[name],
                "pendingGPUs": gpus_text(waiting_milli[name]),
            }
            if QueueName(name) in shares:
                view["fairShare"] = gpus_text(shares[QueueName(name)])
            elif "fairShare" not in status:
                view["fairShare"] = "0"
            changed = any(status.get(k) != v for k, v in view.items())
            status.update(view)
            if name in errors:
                set_condition(status, "Valid", False, "InvalidSpec", errors[name])
            else:
                set_condition(status, "Valid", True, "Valid", "the queue is part of the scheduling tree")
            if changed:
                status["lastUpdated"] = rfc3339(now)
            self.queue_view[name] = dict(status)

    @staticmethod
    def _ancestors(queue: str, parents: Mapping[QueueName, QueueName | None]) -> set[str]:
        found: set[str] = set()
        parent = parents.get(QueueName(queue))
        while parent is not None and parent not in found:
            found.add(parent)
            parent = parents.get(parent)
        return found

    def policy_context(self) -> PolicyContext | None:
        """The placement policy with the configured typical shapes (`scheduler.typical_shapes`), built
        once per cluster state (again when nodes come or go); None lets the cycle use the defaults."""
        state = self.cache.state
        if self._policy is None or self._policy[0] is not state:
            typical = self.config.scheduler.typical_tasks(state.model_codes)
            if typical is None:
                return None
            self._policy = (state, PolicyContext.build(state, self.core_config.policy, typical=typical))
        return self._policy[1]

    def _reservations(self) -> None:
        """One pod requesting `nvidia.com/gpu: 1` per shared GPU in use, so other schedulers see it taken."""
        wanted: set[tuple[str, int]] = set()
        for key in self.cache.shared:
            charge = self.cache.charges[key]
            pod = self.cache.pods.get(key)
            milli = charge.gpu_milli
            if 0 < milli < GPU_MILLI and (pod is None or pod.role != ROLE_RESERVATION):
                wanted.update((charge.node, g) for g in charge.gpu_indices)
        have: dict[tuple[str, int], PodRecord] = {}
        for pod in self.cache.reservations.values():
            if pod.assigned and not pod.deleting:
                have[(pod.planned_node or pod.node, pod.assigned[0])] = pod
        ns = self.config.system_namespace
        seen = {(p.planned_node or p.node, p.assigned[0]) for p in self.cache.reservations.values() if p.assigned}
        self.reservations_creating &= {spot for spot in self.reservations_creating if spot not in seen}
        # A spot whose old reservation is still terminating waits for it to go: the new pod would have
        # its name, and the API server refuses the create (409, "object is being deleted") until then.
        terminating = {(p.planned_node or p.node, p.assigned[0]) for p in self.cache.reservations.values()
                       if p.assigned and p.deleting}
        for node, gpu in wanted - set(have) - self.reservations_creating - terminating:
            name = f"gpu-reservation-{node}-{gpu}"[:253]
            manifest = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {ROLE_LABEL: ROLE_RESERVATION},
                    "annotations": {ASSIGNED_GPUS: str(gpu), "leitstand.dev/node": node},
                },
                "spec": {
                    "schedulerName": self.config.scheduler_name,
                    "restartPolicy": "Never",
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "hold",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"limits": {GPU_RESOURCE: "1"}},
                    }],
                },
            }
            write = PodWrite(ns, name, node, manifest)
            # Known from this moment (before the watch shows it), so no whole-GPU pod is bound there
            # while the reservation is on its way (`_room_is_free`).
            spot = (node, gpu)
            self.reservations_creating.add(spot)
            # Like the fraction pods it serves, the reservation waits until the pods evicted to make room
            # are gone (it requests a whole GPU: a kubelet would count it next to them).
            task = self.binder.start([write], functools.partial(self._room_is_free, {node}, set()))
            self.reservation_tasks.add(task)
            task.add_done_callback(self.reservation_tasks.discard)
            task.add_done_callback(functools.partial(self._reservation_done, spot))
        for spot in set(have) - wanted:
            pod = have[spot]
            task = asyncio.get_running_loop().create_task(self.binder.delete_pod(pod.namespace, pod.name))
            self.reservation_tasks.add(task)
            task.add_done_callback(self.reservation_tasks.discard)


    def _reservation_done(self, spot: tuple[str, int], task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.reservations_creating.discard(spot)  # it will not appear; try again next cycle
            if not task.cancelled():  # (counted in leitstand_bind_failures_total; unlogged, they went unexplained)
                log.warning("GPU reservation on %s GPU %d failed: %s", spot[0], spot[1], task.exception())


def _followed_fields_differ(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a TrainingJob event changes anything `_follow` reads: the object's identity, its spec
    (immutable, so its generation), its deletion. Its status is not read after first sight (the status
    book is authoritative while this process leads), so the echo of our own status write is no reason
    to follow the job again."""
    a, b = old.get("metadata") or {}, new.get("metadata") or {}
    return (
        a.get("uid") != b.get("uid") or a.get("generation") != b.get("generation")
        or a.get("deletionTimestamp") != b.get("deletionTimestamp") or old.get("spec") != new.get("spec")
    )


def _detached(queue: Queue) -> Queue:
    """The queue alone (no parent), to validate its own amounts with the core's rules."""
    from dataclasses import replace

    return replace(queue, parent=None)
