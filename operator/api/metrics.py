"""Prometheus metrics of `leitstand run`: every `leitstand_*` series, defined in this one module.

Who calls it: the HTTP API of `leitstand run` builds one `Metrics(scheduler)` per process and answers
`GET /metrics` with `Metrics.render(accept_header)`. The e2e test `tests/e2e/test_prometheus.py`
scrapes it with a real Prometheus; `dashboard.py` builds the Grafana dashboard from the names here.

Where the numbers come from — never a second copy of the scheduler's state:
- events, counted as they happen: `Scheduler.cycle_listeners` (cycle phase times, admission waits,
  pending reasons, GPU-seconds), `Scheduler.decisions` (the audit trail: decisions, evictions and
  who caused them), `Binder.bind_listeners` (pods bound, per-gang bind latency);
- state, read at scrape time by one custom collector (so a gauge can never drift from what the
  scheduler believes): `queue_bodies` (quota, limit, over-quota weight), `queue_view` (the Queue
  status the loop last wrote: fair share, allocated, pending, running), the cache's `ClusterState`
  arrays (free, allocated and stranded GPUs by model and pool, per topology domain, nodes), the
  KubeClient's request counters, `leading` and `ready`.

Rules (`STYLE.md`): the `leitstand_` prefix, base units (seconds, GPUs — a GPU slice is a fraction
of one GPU, so 0.5 is half a GPU), `_seconds` / `_total` suffixes, bounded label sets: queue,
by_queue, kind, reason, phase, model, pool, level, domain, verb, status_class — never a job, pod or
namespace name. The full list with meanings is `SPECS` below and `docs/metrics.md`.

What this must not do: decide, write to the cluster, or hold a lock the scheduling loop waits on.
Counters kept here are process-local (they restart at 0 with the process, which Prometheus'
`rate`/`increase` handle); totals that must survive a restart live on the Queue status.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from leitstand.operator.service.jobs import QueueSpec, SpecError, parse_queue
from leitstand.scheduler.codes import NONE
from leitstand.scheduler.model import GPU_MILLI, Job, Plan, reasons_by_job

if TYPE_CHECKING:
    from leitstand.operator.service.audit import Decision
    from leitstand.operator.service.loop import CycleReport, Scheduler

EVICTION_KINDS = frozenset({"reclaim", "preempt", "move", "requeue", "shrink"})
"""Audit kinds that take a running job's GPUs away (`audit.KINDS`)."""

MAX_DOMAINS_PER_LEVEL = 1024
"""Topology levels with more domains than this get no per-domain series (an NVLink domain per node
at factory scale would be one series per node)."""
MAX_STRANDED_SHAPES = 256
"""Distinct waiting job shapes the stranded-GPU count considers (the most common ones first)."""

WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
CYCLE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BIND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    """The family name as exposed (counters end in `_total`)."""
    kind: str
    """gauge, counter or histogram."""
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The series names PromQL sees."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def _gauge(name: str, labels: tuple[str, ...], text: str) -> MetricSpec:
    return MetricSpec(name, "gauge", labels, text)


def _counter(name: str, labels: tuple[str, ...], text: str) -> MetricSpec:
    return MetricSpec(name, "counter", labels, text)


def _histogram(name: str, labels: tuple[str, ...], text: str, buckets: tuple[float, ...]) -> MetricSpec:
    return MetricSpec(name, "histogram", labels, text, buckets)


Q = ("queue",)
MP = ("model", "pool")

SPECS: tuple[MetricSpec, ...] = (
    # -- queues (read at scrape time: Queue spec and the status the loop last wrote) -----------------
    _gauge("leitstand_queue_info", ("queue", "parent"),
           "1 per Queue; parent is its parent queue (empty for a root): join on queue to roll leaves up."),
    _gauge("leitstand_queue_quota_gpus", Q, "Deserved quota of the queue (spec.gpu.quota), GPUs."),
    _gauge("leitstand_queue_limit_gpus", Q, "Limit of the queue (spec.gpu.limit), GPUs; absent when unlimited."),
    _gauge("leitstand_queue_over_quota_weight", Q, "Over-quota weight of the queue (spec.gpu.overQuotaWeight)."),
    _gauge("leitstand_queue_fair_share_gpus", Q,
           "Fair share the last cycle computed for the queue, GPUs (a parent's covers its subtree)."),
    _gauge("leitstand_queue_allocated_gpus", Q,
           "GPUs held by the queue's running jobs (a parent's includes its children's), GPUs."),
    _gauge("leitstand_queue_running_jobs", Q, "Running jobs of the queue (a parent's includes its children's)."),
    _gauge("leitstand_queue_pending_jobs", Q, "Jobs of the queue waiting after the last cycle (subtree for a parent)."),
    _gauge("leitstand_queue_pending_gpus", Q, "GPUs the queue's waiting jobs ask for (subtree for a parent), GPUs."),
    _counter("leitstand_queue_gpu_seconds_total", Q,
             "GPU-seconds held by the queue's jobs, counted by this process (the all-time total survives "
             "restarts on the Queue status usageGPUSeconds)."),
    _histogram("leitstand_queue_admission_wait_seconds", Q,
               "Seconds from a job's queuedAt (creation, or its last requeue) to the cycle that admitted it.",
               WAIT_BUCKETS),
    _counter("leitstand_queue_evictions_total", ("queue", "kind", "reason", "by_queue"),
             "Running jobs of the queue evicted (kind reclaim, preempt, move) or requeued by the operator "
             "(kind requeue: NodeLost, IncompleteGang, Restarting); by_queue is the queue of the job that "
             "caused it."),
    _counter("leitstand_queue_evicted_gpus_total", ("queue", "kind", "by_queue"),
             "GPUs of the evicted or requeued jobs of the queue (as in leitstand_queue_evictions_total), GPUs."),
    _counter("leitstand_decisions_total", ("queue", "kind", "reason"),
             "Audit decisions by kind (admit, reclaim, preempt, move, reject, finish, fail, requeue, grow, shrink) and "
             "reason code; reject means a job's pending reason changed."),
    _gauge("leitstand_pending_jobs_by_reason", ("queue", "reason"),
           "Jobs waiting after the last cycle by pending reason code; queue is empty for jobs the operator "
           "held back before the core saw them (NamespaceNotAllowed, QueueInvalid, UnknownPriorityClass, "
           "InvalidSpec, BindFailed)."),
    # -- the scheduler ------------------------------------------------------------------------------
    _histogram("leitstand_cycle_duration_seconds", ("phase",),
               "Duration of each phase of a scheduling cycle (observe, follow, decide, apply, status; core_* "
               "are the core's own phases inside decide; total is the whole cycle), seconds.",
               CYCLE_BUCKETS),
    _gauge("leitstand_last_cycle_timestamp_seconds", (), "Unix time the last scheduling cycle ended."),
    _counter("leitstand_binds_total", (), "Pods bound by the binder (replica pods, plain pods, GPU reservations)."),
    _histogram("leitstand_bind_duration_seconds", (),
               "Per gang: seconds from its first pod create to its last bind (after the room was free).",
               BIND_BUCKETS),
    _counter("leitstand_bind_failures_total", (), "Gang binds that failed and were rolled back (retried later)."),
    _counter("leitstand_status_write_failures_total", (),
             "TrainingJob and Queue status writes the API server refused (each is tried again)."),
    _gauge("leitstand_status_writes_due", (), "TrainingJob and Queue statuses waiting to be written."),
    _gauge("leitstand_status_write_lag_seconds", (),
           "How long the oldest status waiting to be written has waited (0 when none waits), seconds."),
    _gauge("leitstand_status_writers_allowed", (),
           "Status writes allowed in flight now: sixteen, or while binds are in flight two plus two per 10 s "
           "the oldest waiting status has waited."),
    _counter("leitstand_inform_failures_total", (),
             "Events and pod conditions that could not be written (the API server did not answer) and were dropped."),
    _counter("leitstand_kube_api_requests_total", ("verb", "status_class"),
             "Requests to the Kubernetes API by HTTP verb and status class (2xx, 4xx, 5xx, error = no answer)."),
    _gauge("leitstand_leader", (), "1 while this process holds the Lease and schedules, else 0."),
    _gauge("leitstand_ready", (), "1 once the kernels are compiled and the informers synced (what /readyz says)."),
    _gauge("leitstand_binder_gangs_in_flight", (),
           "Gangs admitted and not yet created and bound; at max_binds_in_flight the cycle admits nothing."),
    _gauge("leitstand_build_info", ("version",), "1; the version of leitstand running."),
    # -- the cluster (read at scrape time from the cache's arrays) -------------------------------------
    _gauge("leitstand_cluster_gpus", MP, "GPU capacity of all nodes, GPUs."),
    _gauge("leitstand_cluster_gpus_allocated", MP,
           "GPUs held by pods (whoever scheduled them) or promised to pods being bound, GPUs."),
    _gauge("leitstand_cluster_gpus_free", MP, "Free GPUs on schedulable nodes (slices count as fractions), GPUs."),
    _gauge("leitstand_cluster_gpus_stranded", MP,
           "Free GPUs on schedulable nodes where no waiting job's per-replica shape fits (GPUs x milli-GPU, "
           "CPU, memory, model, pool, jurisdiction, node constraints); 0 when nothing waits, GPUs."),
    _gauge("leitstand_cluster_nodes", ("model", "pool", "schedulable"),
           "Nodes by schedulability (ready, not cordoned, not held back by a conflict)."),
    _gauge("leitstand_topology_gpus", ("level", "domain"), "GPU capacity per topology domain, GPUs."),
    _gauge("leitstand_topology_gpus_allocated", ("level", "domain"), "GPUs held per topology domain, GPUs."),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}
READ_AT_SCRAPE = frozenset({"leitstand_bind_failures_total", "leitstand_kube_api_requests_total",
                            "leitstand_status_write_failures_total", "leitstand_inform_failures_total"})
"""Counters whose values the service keeps itself (binder stats, the client's counts): read, not counted."""


def metric_sample_names() -> frozenset[str]:
    """Every series name a PromQL expression may use (histograms as _bucket, _sum, _count)."""
    return frozenset(name for spec in SPECS for name in spec.sample_names)


# -- process-local counters and histograms -------------------------------------------------------------


class _Histogram:
    """Cumulative-at-exposition buckets per label set (kept non-cumulative here, one bisect per sample)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts, total = self.series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        counts[bisect.bisect_left(self.bounds, value)] += 1
        total[0] += value

    def family(self, spec: MetricSpec, exposed: set[tuple[str, tuple[str, ...]]]) -> HistogramMetricFamily:
        """The exposition; a label set shown for the first time shows zeros (see `Metrics._first`)."""
        family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
        for labels, (counts, total) in sorted(self.series.items()):
            first = (spec.name, labels) not in exposed
            exposed.add((spec.name, labels))
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                running += 0 if first else count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
            family.add_metric(list(labels), buckets, 0.0 if first else total[0])
        return family


# -- the metrics ---------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics for one `Scheduler`, in a registry of their own."""

    def __init__(self, scheduler: Scheduler, client: Any = None) -> None:
        self.scheduler = scheduler
        self.client = client if client is not None else scheduler.client
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        """Guards the counters below: listeners run on the loop, a scrape may run on another thread."""
        self._counters: dict[str, defaultdict[tuple[str, ...], float]] = {
            s.name: defaultdict(float) for s in SPECS if s.kind == "counter" and s.name not in READ_AT_SCRAPE
        }
        self._histograms = {s.name: _Histogram(s.buckets) for s in SPECS if s.kind == "histogram"}
        self._pending_by_reason: Counter[tuple[str, str]] = Counter()
        self._waiting: list[Job] = []
        """Jobs the last cycle left waiting (their shapes decide which free GPUs are stranded)."""
        self._usage_seen: dict[str, float] = {}
        self._last_cycle_at: float | None = None
        self._exposed: set[tuple[str, tuple[str, ...]]] = set()
        """(counter or histogram, label values) already scraped once (see `_first`)."""
        self._scrape_lock = threading.Lock()
        """One scrape at a time (guards `_exposed`); never taken by the listeners."""
        try:
            self._version = metadata.version("leitstand")
        except metadata.PackageNotFoundError:
            self._version = "unknown"
        self.registry.register(_Collector(self))
        scheduler.cycle_listeners.append(self.on_cycle)
        scheduler.decisions.subscribe(self.on_decision)
        scheduler.binder.bind_listeners.append(self.on_bind)

    def render(self, accept_header: str | None = None) -> tuple[bytes, str]:
        """The exposition for `GET /metrics` and its content type (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type

    # -- listeners (the scheduler's event loop) --------------------------------------------------------

    def on_cycle(self, report: CycleReport, plan: Plan | None) -> None:
        scheduler = self.scheduler
        now = scheduler.clock()
        pending = {job.id: job for job in scheduler.last_pending}
        left = {job_id: why.code for job_id, why in reasons_by_job(plan.pending)} if plan is not None else {}
        by_reason: Counter[tuple[str, str]] = Counter()
        seen: Counter[str] = Counter()
        for job_id, code in left.items():
            job = pending.get(job_id)
            by_reason[(str(job.queue) if job is not None else "", code)] += 1
            seen[code] += 1
        for code, count in report.reasons.items():
            if count > seen[code]:  # held back by the operator before the core saw them
                by_reason[("", code)] += count - seen[code]
        usage = dict(scheduler.usage.totals)
        with self._lock:
            cycle = self._histograms["leitstand_cycle_duration_seconds"]
            for phase, seconds in report.phase_seconds.items():
                cycle.observe((phase,), seconds)
            cycle.observe(("total",), sum(s for p, s in report.phase_seconds.items() if not p.startswith("core_")))
            if plan is not None:
                waits = self._histograms["leitstand_queue_admission_wait_seconds"]
                for binding in plan.bindings:
                    job = pending.get(binding.job_id)
                    if job is not None:  # a consolidation move re-places a running job: no admission
                        waits.observe((str(job.queue),), max(0.0, now - job.created_at))
            self._pending_by_reason = by_reason
            self._waiting = [job for job_id, job in pending.items() if job_id in left]
            gpu_seconds = self._counters["leitstand_queue_gpu_seconds_total"]
            for queue, total in usage.items():
                before = self._usage_seen.get(queue)
                # The first sight is the baseline (it may be the total seeded from the Queue status).
                gpu_seconds[(queue,)] += max(0.0, total - before) if before is not None else 0.0
                self._usage_seen[queue] = total
            self._last_cycle_at = now

    def on_decision(self, decision: Decision) -> None:
        with self._lock:
            self._counters["leitstand_decisions_total"][(decision.queue, decision.kind, decision.reason)] += 1
            if decision.kind in EVICTION_KINDS:
                key = (decision.queue, decision.kind, decision.reason, decision.by_queue)
                self._counters["leitstand_queue_evictions_total"][key] += 1
                gpus = decision.gpus_milli / GPU_MILLI
                self._counters["leitstand_queue_evicted_gpus_total"][
                    (decision.queue, decision.kind, decision.by_queue)] += gpus

    def on_bind(self, pods: int, seconds: float) -> None:
        with self._lock:
            self._counters["leitstand_binds_total"][()] += pods
            self._histograms["leitstand_bind_duration_seconds"].observe((), seconds)

    # -- scrape time -------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._scrape_lock:
            families = self._families()
        for spec in SPECS:  # in the documented order
            if spec.name in families:
                yield families[spec.name]

    def _families(self) -> dict[str, Metric]:
        families: dict[str, Metric] = {}

        def family(name: str) -> Metric:
            spec = SPEC_BY_NAME[name]
            if name not in families:
                if spec.kind == "gauge":
                    families[name] = GaugeMetricFamily(name, spec.help, labels=spec.labels)
                else:
                    families[name] = CounterMetricFamily(name, spec.help, labels=spec.labels)
            return families[name]

        def add(name: str, labels: Iterable[str], value: float) -> None:
            metric = family(name)
            assert isinstance(metric, GaugeMetricFamily | CounterMetricFamily)
            values = tuple(labels)
            if isinstance(metric, CounterMetricFamily):
                value = self._first(name, values, value)
            metric.add_metric(list(values), value)

        self._collect_queues(add)
        self._collect_scheduler(add)
        self._collect_cluster(add)
        with self._lock:
            for name, values in self._counters.items():
                family(name)
                if not SPEC_BY_NAME[name].labels and not values:
                    add(name, (), 0.0)  # a label-less counter exists from the start
                for labels, value in sorted(values.items()):
                    add(name, labels, value)
            for name, histogram in self._histograms.items():
                families[name] = histogram.family(SPEC_BY_NAME[name], self._exposed)
            for (queue, reason), count in sorted(self._pending_by_reason.items()):
                add("leitstand_pending_jobs_by_reason", (queue, reason), count)
            family("leitstand_pending_jobs_by_reason")
        return families

    def _first(self, name: str, labels: tuple[str, ...], value: float) -> float:
        """A counter's label set appears at 0 on its first scrape and with its value from the next on.

        Prometheus' `rate` and `increase` count only what a series gains between two scrapes, so a
        series born at 1 (a first reclaim by a new pair of queues, a first 4xx of a verb) would never
        show that first event. Label sets like (queue, by_queue) cannot all be made up front, so each
        is shown at 0 once (the first event then shows one scrape interval late; a second scraper
        sees it at once, as without this). Caller holds `_scrape_lock`."""
        key = (name, labels)
        if key in self._exposed:
            return value
        self._exposed.add(key)
        return 0.0

    def _collect_queues(self, add: Any) -> None:
        bodies = dict(self.scheduler.queue_bodies)
        views = dict(self.scheduler.queue_view)
        used = self._counters["leitstand_queue_gpu_seconds_total"]
        for name in sorted(bodies):
            try:
                spec: QueueSpec | None = parse_queue(bodies[name])
            except SpecError:
                spec = None
            if spec is not None:
                queue = spec.queue
                add("leitstand_queue_info", (name, str(queue.parent or "")), 1.0)
                add("leitstand_queue_quota_gpus", (name,), queue.quota_milli / GPU_MILLI)
                if queue.limit_milli is not None:
                    add("leitstand_queue_limit_gpus", (name,), queue.limit_milli / GPU_MILLI)
                add("leitstand_queue_over_quota_weight", (name,), float(queue.over_quota_weight))
            with self._lock:
                used.setdefault((name,), 0.0)  # every queue has a GPU-seconds series, 0 until it runs jobs
            view = views.get(name)
            if view is None:
                continue  # not leading (yet): the loop writes the status part
            add("leitstand_queue_fair_share_gpus", (name,), _number(view.get("fairShare")))
            add("leitstand_queue_allocated_gpus", (name,), _number(view.get("allocatedMilli")) / GPU_MILLI)
            add("leitstand_queue_running_jobs", (name,), _number(view.get("runningJobs")))
            add("leitstand_queue_pending_jobs", (name,), _number(view.get("pendingJobs")))
            add("leitstand_queue_pending_gpus", (name,), _number(view.get("pendingGPUs")))

    def _collect_scheduler(self, add: Any) -> None:
        scheduler = self.scheduler
        add("leitstand_leader", (), 1.0 if scheduler.leading else 0.0)
        add("leitstand_ready", (), 1.0 if scheduler.ready else 0.0)
        add("leitstand_binder_gangs_in_flight", (), float(scheduler.binder.in_flight))
        add("leitstand_build_info", (self._version,), 1.0)
        if self._last_cycle_at is not None:
            add("leitstand_last_cycle_timestamp_seconds", (), self._last_cycle_at)
        add("leitstand_bind_failures_total", (), float(scheduler.binder.stats.failures))
        book = scheduler.book
        add("leitstand_status_write_failures_total", (), float(book.errors))
        add("leitstand_status_writes_due", (), float(book.due()))
        add("leitstand_status_write_lag_seconds", (), book.oldest_due() or 0.0)
        add("leitstand_status_writers_allowed", (), float(book.writers_allowed()))
        add("leitstand_inform_failures_total", (), float(scheduler.inform_failures))
        counts = getattr(self.client, "counts", None)
        if isinstance(counts, Mapping):
            for (verb, status_class), count in sorted(dict(counts).items()):
                add("leitstand_kube_api_requests_total", (str(verb), str(status_class)), float(count))

    def _collect_cluster(self, add: Any) -> None:
        with self._lock:
            waiting = list(self._waiting)
        cluster = cluster_gpus(self.scheduler, waiting)
        for (model, pool), row in sorted(cluster.by_model_pool.items()):
            add("leitstand_cluster_gpus", (model, pool), row[0])
            add("leitstand_cluster_gpus_allocated", (model, pool), row[1])
            add("leitstand_cluster_gpus_free", (model, pool), row[2])
            add("leitstand_cluster_gpus_stranded", (model, pool), row[3])
            add("leitstand_cluster_nodes", (model, pool, "true"), row[4])
            add("leitstand_cluster_nodes", (model, pool, "false"), row[5])
        for (level, domain), (capacity, allocated) in sorted(cluster.by_domain.items()):
            add("leitstand_topology_gpus", (level, domain), capacity)
            add("leitstand_topology_gpus_allocated", (level, domain), allocated)


class _Collector:
    """The registry's view of `Metrics` (prometheus_client calls `collect` on every scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


# -- cluster occupancy and stranded GPUs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterGpus:
    by_model_pool: dict[tuple[str, str], tuple[float, float, float, float, int, int]]
    """(model, pool) → capacity, allocated, free, stranded GPUs; schedulable, unschedulable nodes."""
    by_domain: dict[tuple[str, str], tuple[float, float]]
    """(level, domain) → capacity, allocated GPUs."""


def cluster_gpus(scheduler: Scheduler, waiting: Sequence[Job]) -> ClusterGpus:
    """GPU occupancy from the cache's `ClusterState`, O(nodes × GPUs × waiting shapes), numpy only.

    Stranded, exactly: a schedulable node's free GPU capacity (sum of free milli-GPU / 1000) counts as
    stranded when none of the waiting jobs' per-replica shapes fits on that node as it is now — a shape
    being `gpus` GPUs with at least `gpu_milli` free each, plus the replica's CPU and memory, on a node
    the job may use (its model, pool — reserved pools excluded as the core does — jurisdiction and
    node constraints). Gang size and topology are ignored (a per-node view); quotas too (a job at its
    queue's limit still counts as waiting for that shape). Nothing waiting → nothing stranded.
    """
    state = scheduler.cache.state
    n = len(state.node_names)
    capacity = state.gpu_count.astype(np.float64)
    free = state.gpu_free_milli.sum(axis=1, dtype=np.int64).astype(np.float64) / GPU_MILLI if n else capacity
    allocated = capacity - free
    schedulable = state.schedulable.copy()
    usable = _usable_nodes(scheduler, waiting) if waiting else np.zeros(n, dtype=np.bool_)
    stranded = np.where(schedulable & ~usable, free, 0.0) if waiting else np.zeros(n)
    free_ok = np.where(schedulable, free, 0.0)

    models = {code: name for name, code in state.model_codes.items()}
    pools = {code: name for name, code in state.pool_codes.items()}
    by_model_pool: dict[tuple[str, str], tuple[float, float, float, float, int, int]] = {}
    pairs = np.stack([state.gpu_model, state.node_pool], axis=1) if n else np.zeros((0, 2), dtype=np.int32)
    for model_code, pool_code in sorted({(int(a), int(b)) for a, b in pairs}):
        rows = (state.gpu_model == model_code) & (state.node_pool == pool_code)
        key = (models.get(model_code, "") if model_code != NONE else "",
               pools.get(pool_code, "") if pool_code != NONE else "")
        by_model_pool[key] = (
            float(capacity[rows].sum()), float(allocated[rows].sum()), float(free_ok[rows].sum()),
            float(stranded[rows].sum()), int((rows & schedulable).sum()), int((rows & ~schedulable).sum()),
        )

    by_domain: dict[tuple[str, str], tuple[float, float]] = {}
    for index, level in enumerate(state.topology.levels):
        count = int(state.domain_count[index]) if index < len(state.domain_count) else 0
        if count == 0 or count > MAX_DOMAINS_PER_LEVEL or index >= state.domain.shape[1]:
            continue
        ids = state.domain[:, index].astype(np.int64)
        labelled = ids >= 0
        caps = np.bincount(ids[labelled], weights=capacity[labelled], minlength=count)
        held = np.bincount(ids[labelled], weights=allocated[labelled], minlength=count)
        names = state.domain_names[index]
        for domain in range(count):
            by_domain[(level, names[domain])] = (float(caps[domain]), float(held[domain]))
    return ClusterGpus(by_model_pool, by_domain)


def _usable_nodes(scheduler: Scheduler, waiting: Sequence[Job]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Nodes on which at least one waiting job's per-replica shape fits now."""
    state = scheduler.cache.state
    reserved = _reserved_pools(scheduler)
    all_reserved = frozenset(p for p in reserved.values() if p)
    shapes: Counter[tuple[Any, ...]] = Counter()
    for job in waiting:
        if job.gpus <= 0:
            continue  # CPU-only work uses no GPU
        own = reserved.get(str(job.queue))
        pool = own if own is not None else job.node_pool
        excluded = tuple(sorted(p for p in all_reserved if p != own))
        shapes[(job.gpus, job.gpu_milli, job.cpu_milli, job.memory_mib, pool, excluded, job.gpu_models,
                job.jurisdictions, job.allowed_nodes)] += 1
    usable = np.zeros(len(state.node_names), dtype=np.bool_)
    whole: dict[int, np.ndarray[Any, np.dtype[np.int64]]] = {}
    for shape, _count in shapes.most_common(MAX_STRANDED_SHAPES):
        gpus, milli, cpu, memory, pool, excluded, models, places, allowed = shape
        if milli not in whole:
            whole[milli] = (state.gpu_free_milli >= milli).sum(axis=1)
        mask = state.node_mask(node_pool=pool, jurisdictions=places, gpu_models=models, excluded_pools=excluded,
                               allowed_nodes=allowed)
        usable |= (mask & (whole[milli] >= gpus) & (state.cpu_free_milli >= cpu)
                   & (state.memory_free_mib >= memory))
    return usable


def _reserved_pools(scheduler: Scheduler) -> dict[str, str | None]:
    """Each queue's node pool reservation: its own `nodePool` or its nearest ancestor's (as the core)."""
    queues: dict[str, tuple[str | None, str | None]] = {}
    for name, body in dict(scheduler.queue_bodies).items():
        try:
            queue = parse_queue(body).queue
        except SpecError:
            continue
        queues[name] = (queue.parent, queue.node_pool)
    found: dict[str, str | None] = {}
    for name in queues:
        current: str | None = name
        seen: set[str] = set()
        pool = None
        while current is not None and current in queues and current not in seen:
            seen.add(current)
            parent, own = queues[current]
            if own:
                pool = own
                break
            current = parent
        found[name] = pool
    return found


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
