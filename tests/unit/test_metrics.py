"""The Prometheus metrics (`leitstand.operator.api.metrics`) against a real `Scheduler` without a cluster:
names and labels follow the rules, scrape-time gauges read the scheduler's own state, event counters
follow the listeners, stranded GPUs are exactly what the definition says."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from leitstand.operator.api.metrics import SPECS, Metrics, cluster_gpus, metric_sample_names
from leitstand.operator.cluster.layout import repo_root
from leitstand.operator.service.audit import Decision
from leitstand.operator.service.cache import Charge, ClusterCache
from leitstand.operator.service.config import ServiceConfig
from leitstand.operator.service.loop import CycleReport, Scheduler
from leitstand.operator.service.records import node_record
from leitstand.scheduler.model import Binding, Job, JobId, PendingReason, Plan, QueueName

NOW = 10_000.0


class FakeClient:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {("GET", "2xx"): 7, ("POST", "4xx"): 2, ("PATCH", "error"): 1}

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return 200, {}


def node(name: str, gpus: int, *, model: str = "NVIDIA-B200", pool: str = "b200", rack: str = "rack-000",
         cpu: str = "224", ready: bool = True, jurisdiction: str = "eu-de") -> Any:
    record = node_record({
        "metadata": {"name": name, "labels": {
            "leitstand.dev/spine": "spine-00", "leitstand.dev/rack": rack, "leitstand.dev/nvlink-domain": f"nvl-{name}",
            "nvidia.com/gpu.product": model, "leitstand.dev/node-pool": pool,
            "leitstand.dev/jurisdiction": jurisdiction}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": "2Ti", "nvidia.com/gpu": str(gpus)},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    })
    assert record is not None
    return record


def make_scheduler(*nodes: Any) -> Scheduler:
    config = ServiceConfig()
    cache = ClusterCache(config.core_topology)
    for record in nodes:
        cache.on_node("ADDED", record.name, None, record)
    cache.refresh()
    return Scheduler(config, FakeClient(), cache, clock=lambda: NOW)


def queue_body(name: str, **gpu: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"gpu": gpu}
    if "parent" in gpu:
        spec["parent"] = gpu.pop("parent")
    if "nodePool" in gpu:
        spec["nodePool"] = gpu.pop("nodePool")
    return {"metadata": {"name": name}, "spec": spec}


def scrape(metrics: Metrics, *, first: bool = False) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → labels → value, parsed back from the text exposition of a second scrape (a new
    counter label set shows 0 on its first: `test_a_new_counter_series_starts_at_zero_for_rate`)."""
    if not first:
        metrics.render(None)
    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def decision(kind: str, queue: str, reason: str, by_queue: str = "", gpus_milli: int = 0) -> Decision:
    return Decision(seq=1, time=NOW, kind=kind, job="ns/j", queue=queue, namespace="ns", reason=reason,
                    message="m", by_queue=by_queue, gpus_milli=gpus_milli)


# -- the rules -------------------------------------------------------------------------------------------


def test_names_units_and_labels_follow_the_rules() -> None:
    assert len({s.name for s in SPECS}) == len(SPECS)
    for spec in SPECS:
        assert re.fullmatch(r"leitstand_[a-z0-9_]+", spec.name), spec.name
        assert spec.kind in ("gauge", "counter", "histogram")
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.buckets) == sorted(spec.buckets), spec.name
        assert not re.search(r"_(milli|ms|minutes|hours|percent)(_|$)", spec.name), f"{spec.name}: base units"
        assert not {"job", "name", "pod", "namespace", "node", "uid"} & set(spec.labels), spec.name
        assert spec.help.strip()
    assert "leitstand_queue_admission_wait_seconds_bucket" in metric_sample_names()


def test_docs_describe_every_metric() -> None:
    text = (repo_root() / "docs" / "metrics.md").read_text()
    missing = [s.name for s in SPECS if f"`{s.name}`" not in text]
    assert not missing, f"docs/metrics.md does not describe {missing}"


def test_the_collector_exposes_every_family_it_documents_and_nothing_else() -> None:
    scheduler = make_scheduler(node("b200-0000", 8))
    metrics = Metrics(scheduler)
    body = metrics.render(None)[0].decode()
    families = {f.name for f in text_string_to_metric_families(body)}
    documented = {s.name.removesuffix("_total") for s in SPECS}
    assert families <= documented
    # the families that exist before any queue, cycle or decision (labelled series appear with data)
    assert {"leitstand_leader", "leitstand_ready", "leitstand_cluster_gpus", "leitstand_binds",
            "leitstand_kube_api_requests", "leitstand_build_info"} <= families


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics(make_scheduler())
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
    assert "leitstand_binds_total 0.0" in body.decode()


# -- queues ----------------------------------------------------------------------------------------------


def test_queue_gauges_read_the_spec_and_the_status_the_loop_wrote() -> None:
    scheduler = make_scheduler(node("b200-0000", 8))
    metrics = Metrics(scheduler)
    scheduler.queue_bodies.update({
        "dept": queue_body("dept", quota=24, limit=48),
        "team-a": queue_body("team-a", quota=16, overQuotaWeight=2, parent="dept"),
        "broken": {"metadata": {"name": "broken"}, "spec": {"gpu": {"quota": -1}}},
    })
    scheduler.queue_view.update({
        "team-a": {"fairShare": "20.5", "allocatedMilli": 16500, "runningJobs": 3, "pendingJobs": 2,
                   "pendingGPUs": "8.25", "allocated": "16.5"},
        "gone": {"fairShare": "1"},  # a deleted queue's last status: not exposed
    })
    samples = scrape(metrics)
    assert value(samples, "leitstand_queue_quota_gpus", queue="team-a") == 16
    assert value(samples, "leitstand_queue_over_quota_weight", queue="team-a") == 2
    assert value(samples, "leitstand_queue_limit_gpus", queue="dept") == 48
    assert ("queue", "team-a") not in {k[0] for k in samples["leitstand_queue_limit_gpus"]}  # unlimited: absent
    assert value(samples, "leitstand_queue_info", queue="team-a", parent="dept") == 1
    assert value(samples, "leitstand_queue_info", queue="dept", parent="") == 1
    assert value(samples, "leitstand_queue_fair_share_gpus", queue="team-a") == 20.5
    assert value(samples, "leitstand_queue_allocated_gpus", queue="team-a") == 16.5
    assert value(samples, "leitstand_queue_running_jobs", queue="team-a") == 3
    assert value(samples, "leitstand_queue_pending_jobs", queue="team-a") == 2
    assert value(samples, "leitstand_queue_pending_gpus", queue="team-a") == 8.25
    assert all(dict(k).get("queue") != "gone" for k in samples["leitstand_queue_fair_share_gpus"])
    assert all(dict(k).get("queue") != "broken" for k in samples["leitstand_queue_quota_gpus"])
    # every queue has a GPU-seconds series from the start (0 until its jobs run)
    assert value(samples, "leitstand_queue_gpu_seconds_total", queue="team-a") == 0
    # a queue deleted from the cluster is gone from the gauges at the next scrape (no drift)
    del scheduler.queue_bodies["team-a"]
    assert all(dict(k).get("queue") != "team-a" for k in scrape(metrics)["leitstand_queue_quota_gpus"])


def test_a_cycle_records_phases_admission_waits_pending_reasons_and_gpu_seconds() -> None:
    scheduler = make_scheduler(node("b200-0000", 8))
    metrics = Metrics(scheduler)
    waited = Job(JobId("ns/admitted"), QueueName("team-a"), gpus=1, created_at=NOW - 42)
    left = Job(JobId("ns/left"), QueueName("team-b"), gpus=8, replicas=2, created_at=NOW - 5)
    scheduler.last_pending = [waited, left]
    scheduler.usage.totals["team-a"] = 3600.0  # e.g. seeded from the Queue status after a restart
    report = CycleReport(phase_seconds={"observe": 0.002, "decide": 0.03, "core_allocate": 0.01, "apply": 0.001},
                         reasons=Counter({"Insufficient": 1, "NamespaceNotAllowed": 2}))
    plan = Plan(bindings=(Binding(JobId("ns/admitted"), ()), Binding(JobId("ns/moved"), ())),
                pending=(PendingReason(JobId("ns/left"), "Insufficient", "no room"),))
    for listener in scheduler.cycle_listeners:
        listener(report, plan)
    scheduler.usage.totals["team-a"] = 3600.0 + 90.0
    scheduler.usage.totals["team-b"] = 10.0
    for listener in scheduler.cycle_listeners:
        listener(CycleReport(phase_seconds={"observe": 0.001}), None)
    samples = scrape(metrics)
    # one admission (the move is no admission), 42 s after its queuedAt
    assert value(samples, "leitstand_queue_admission_wait_seconds_count", queue="team-a") == 1
    assert value(samples, "leitstand_queue_admission_wait_seconds_sum", queue="team-a") == 42
    assert value(samples, "leitstand_queue_admission_wait_seconds_bucket", queue="team-a", le="30.0") == 0
    assert value(samples, "leitstand_queue_admission_wait_seconds_bucket", queue="team-a", le="60.0") == 1
    assert value(samples, "leitstand_queue_admission_wait_seconds_bucket", queue="team-a", le="+Inf") == 1
    # phases, and the whole cycle without double-counting the core's phases inside decide
    assert value(samples, "leitstand_cycle_duration_seconds_count", phase="total") == 2
    assert value(samples, "leitstand_cycle_duration_seconds_sum", phase="total") == pytest.approx(0.034)
    assert value(samples, "leitstand_cycle_duration_seconds_sum", phase="core_allocate") == pytest.approx(0.01)
    assert value(samples, "leitstand_last_cycle_timestamp_seconds") == NOW
    # the last cycle left nothing waiting: the reasons of the first are gone
    assert samples.get("leitstand_pending_jobs_by_reason", {}) == {}
    # GPU-seconds: the first sight is the baseline; then what the meter added
    assert value(samples, "leitstand_queue_gpu_seconds_total", queue="team-a") == 90
    assert value(samples, "leitstand_queue_gpu_seconds_total", queue="team-b") == 0


def test_pending_reasons_carry_the_queue_when_the_core_saw_the_job() -> None:
    scheduler = make_scheduler(node("b200-0000", 8))
    metrics = Metrics(scheduler)
    scheduler.last_pending = [Job(JobId("ns/a"), QueueName("team-a"), gpus=8, replicas=2),
                              Job(JobId("ns/b"), QueueName("team-a"), gpus=8, replicas=4)]
    plan = Plan(pending=(PendingReason(JobId("ns/a"), "QueueAtLimit", "x"),
                         PendingReason(JobId("ns/b"), "Insufficient", "y")))
    metrics.on_cycle(CycleReport(reasons=Counter({"QueueAtLimit": 1, "Insufficient": 1, "InvalidSpec": 1})), plan)
    samples = scrape(metrics)["leitstand_pending_jobs_by_reason"]
    assert samples == {
        (("queue", "team-a"), ("reason", "QueueAtLimit")): 1,
        (("queue", "team-a"), ("reason", "Insufficient")): 1,
        (("queue", ""), ("reason", "InvalidSpec")): 1,
    }


# -- decisions, binds, the API client ---------------------------------------------------------------------


def test_evictions_count_who_caused_them_and_every_decision_counts_by_kind() -> None:
    scheduler = make_scheduler()
    metrics = Metrics(scheduler)
    scheduler.decisions.record(time=NOW, kind="reclaim", job="b/x", queue="team-b", namespace="b",
                               reason="Reclaimed", message="m", by="a/y", by_queue="team-a", gpus_milli=16000)
    metrics.on_decision(decision("preempt", "team-a", "Preempted", by_queue="team-a", gpus_milli=8000))
    metrics.on_decision(decision("requeue", "team-a", "NodeLost", gpus_milli=500))
    metrics.on_decision(decision("admit", "team-a", "Admitted"))
    metrics.on_decision(decision("reject", "team-a", "QueueAtLimit"))
    samples = scrape(metrics)
    evictions = samples["leitstand_queue_evictions_total"]
    assert evictions == {
        (("by_queue", "team-a"), ("kind", "reclaim"), ("queue", "team-b"), ("reason", "Reclaimed")): 1,
        (("by_queue", "team-a"), ("kind", "preempt"), ("queue", "team-a"), ("reason", "Preempted")): 1,
        (("by_queue", ""), ("kind", "requeue"), ("queue", "team-a"), ("reason", "NodeLost")): 1,
    }
    assert value(samples, "leitstand_queue_evicted_gpus_total", queue="team-b", kind="reclaim", by_queue="team-a") == 16
    assert value(samples, "leitstand_queue_evicted_gpus_total", queue="team-a", kind="requeue", by_queue="") == 0.5
    assert value(samples, "leitstand_decisions_total", queue="team-a", kind="admit", reason="Admitted") == 1
    assert value(samples, "leitstand_decisions_total", queue="team-a", kind="reject", reason="QueueAtLimit") == 1
    assert sum(samples["leitstand_decisions_total"].values()) == 5


def test_binds_api_requests_leader_and_ready() -> None:
    scheduler = make_scheduler()
    metrics = Metrics(scheduler)
    for listener in scheduler.binder.bind_listeners:
        listener(4, 0.3)
    metrics.on_bind(1, 0.02)
    scheduler.binder.stats.failures = 2
    scheduler.leading, scheduler.ready = True, True
    samples = scrape(metrics)
    assert value(samples, "leitstand_binds_total") == 5
    assert value(samples, "leitstand_bind_duration_seconds_count") == 2
    assert value(samples, "leitstand_bind_duration_seconds_bucket", le="0.025") == 1
    assert value(samples, "leitstand_bind_failures_total") == 2
    assert value(samples, "leitstand_kube_api_requests_total", verb="POST", status_class="4xx") == 2
    assert value(samples, "leitstand_kube_api_requests_total", verb="PATCH", status_class="error") == 1
    assert value(samples, "leitstand_leader") == 1 and value(samples, "leitstand_ready") == 1
    assert next(iter(samples["leitstand_build_info"].values())) == 1
    assert value(samples, "leitstand_status_writes_due") == 0
    assert value(samples, "leitstand_status_write_lag_seconds") == 0


def test_status_writes_waiting_and_failed_and_dropped_events() -> None:
    scheduler = make_scheduler()
    metrics = Metrics(scheduler)
    book = scheduler.book
    clock = [100.0]
    book.clock = lambda: clock[0]
    for i in range(3):
        book.view(f"/tj/{i}", f"u{i}", {}).update(phase="Pending")
    book.dirty()  # what a flush sees first: three statuses due from now
    clock[0] += 12.5
    book.errors, scheduler.inform_failures = 4, 7
    samples = scrape(metrics)
    assert value(samples, "leitstand_status_writes_due") == 3
    assert value(samples, "leitstand_status_write_lag_seconds") == 12.5
    assert value(samples, "leitstand_status_write_failures_total") == 4
    assert value(samples, "leitstand_inform_failures_total") == 7
    assert value(samples, "leitstand_status_writers_allowed") == 16  # no binds in flight
    book.busy = lambda: True  # binds in flight: two, and two more per 10 s the oldest has waited
    assert value(scrape(metrics), "leitstand_status_writers_allowed") == 4


# -- the cluster ----------------------------------------------------------------------------------------


def test_cluster_gpus_by_model_pool_and_rack() -> None:
    scheduler = make_scheduler(node("b200-0000", 8), node("b200-0001", 8, ready=False),
                               node("l40s-0000", 2, model="NVIDIA-L40S", pool="l40s", rack="rack-001"))
    scheduler.cache.assume("ns/p0", Charge("b200-0000", (0, 1, 2), 1000, 0, 0))
    scheduler.cache.assume("ns/p1", Charge("b200-0000", (3,), 500, 0, 0))
    samples = scrape(Metrics(scheduler))
    b200 = {"model": "NVIDIA-B200", "pool": "b200"}
    assert value(samples, "leitstand_cluster_gpus", **b200) == 16
    assert value(samples, "leitstand_cluster_gpus_allocated", **b200) == 3.5
    assert value(samples, "leitstand_cluster_gpus_free", **b200) == 4.5  # the NotReady node's 8 are not free
    assert value(samples, "leitstand_cluster_nodes", schedulable="true", **b200) == 1
    assert value(samples, "leitstand_cluster_nodes", schedulable="false", **b200) == 1
    assert value(samples, "leitstand_cluster_gpus", model="NVIDIA-L40S", pool="l40s") == 2
    assert value(samples, "leitstand_topology_gpus", level="rack", domain="rack-000") == 16
    assert value(samples, "leitstand_topology_gpus_allocated", level="rack", domain="rack-000") == 3.5
    assert value(samples, "leitstand_topology_gpus", level="spine", domain="spine-00") == 18
    assert value(samples, "leitstand_cluster_gpus_stranded", **b200) == 0  # nothing waits


def test_stranded_gpus_are_free_gpus_no_waiting_shape_fits() -> None:
    scheduler = make_scheduler(node("b200-0000", 8), node("b200-0001", 8), node("b200-0002", 8, cpu="4"),
                               node("l40s-0000", 2, model="NVIDIA-L40S", pool="l40s", rack="rack-001",
                                    jurisdiction="eu-fr"),
                               node("research-0000", 8, pool="research", rack="rack-002"))
    cache = scheduler.cache
    cache.assume("ns/a", Charge("b200-0000", (0, 1, 2, 3, 4), 1000, 0, 0))  # 3 whole GPUs free
    cache.assume("ns/b", Charge("b200-0001", (0,), 1000, 0, 0))              # 6 whole free
    cache.assume("ns/c", Charge("b200-0001", (1,), 250, 0, 0))               # + 0.75 of GPU 1
    scheduler.queue_bodies["research"] = queue_body("research", quota=8, nodePool="research")
    waiting = [
        Job(JobId("ns/big"), QueueName("team-a"), replicas=2, gpus=4, cpu_milli=8000),
        Job(JobId("ns/cpu"), QueueName("team-a"), gpus=0, cpu_milli=1000),  # uses no GPU: ignored
    ]
    result = cluster_gpus(scheduler, waiting).by_model_pool
    # 4 whole GPUs per replica, 8 CPUs: fits b200-0001 (6 whole free), not b200-0000 (3 free) nor
    # b200-0002 (8 free GPUs but 4 CPUs); not the 2-GPU L40S; research-0000 is reserved for its queue
    assert result[("NVIDIA-B200", "b200")][2:4] == (3 + 6.75 + 8, 3 + 8)
    assert result[("NVIDIA-L40S", "l40s")][3] == 2
    assert result[("NVIDIA-B200", "research")][3] == 8
    # a quarter-GPU job fits wherever any GPU has 250 milli free: nothing of b200 or l40s is stranded,
    # and it may not use the reserved research pool either
    slice_job = Job(JobId("ns/slice"), QueueName("team-a"), gpus=1, gpu_milli=250)
    result = cluster_gpus(scheduler, [*waiting, slice_job]).by_model_pool
    assert result[("NVIDIA-B200", "b200")][3] == 0 and result[("NVIDIA-L40S", "l40s")][3] == 0
    assert result[("NVIDIA-B200", "research")][3] == 8
    # the research queue's own job may use its pool; an eu-fr job only the French node
    own = Job(JobId("ns/r"), QueueName("research"), gpus=8)
    assert cluster_gpus(scheduler, [own]).by_model_pool[("NVIDIA-B200", "research")][3] == 0
    french = Job(JobId("ns/fr"), QueueName("team-a"), gpus=1, jurisdictions=frozenset({"eu-fr"}))
    result = cluster_gpus(scheduler, [french]).by_model_pool
    assert result[("NVIDIA-L40S", "l40s")][3] == 0 and result[("NVIDIA-B200", "b200")][3] == 3 + 6.75 + 8


def test_stranded_follows_the_jobs_the_last_cycle_left_waiting() -> None:
    scheduler = make_scheduler(node("b200-0000", 8), node("l40s-0000", 2, model="NVIDIA-L40S", pool="l40s"))
    metrics = Metrics(scheduler)
    big = Job(JobId("ns/big"), QueueName("team-a"), gpus=8)
    scheduler.last_pending = [big]
    metrics.on_cycle(CycleReport(), Plan(pending=(PendingReason(big.id, "QueueAtLimit", "x"),)))
    assert value(scrape(metrics), "leitstand_cluster_gpus_stranded", model="NVIDIA-L40S", pool="l40s") == 2
    metrics.on_cycle(CycleReport(), Plan(bindings=(Binding(big.id, ()),)))  # admitted: nothing waits
    assert value(scrape(metrics), "leitstand_cluster_gpus_stranded", model="NVIDIA-L40S", pool="l40s") == 0


def test_a_new_counter_series_starts_at_zero_for_rate() -> None:
    """Prometheus' rate/increase count what a series gains between scrapes: a series first scraped at 1
    would hide its first event, so every counter and histogram label set is first exposed at 0."""
    scheduler = make_scheduler()
    metrics = Metrics(scheduler)
    metrics.on_decision(decision("reclaim", "team-b", "Reclaimed", by_queue="team-a", gpus_milli=8000))
    scheduler.last_pending = [Job(JobId("ns/j"), QueueName("team-a"), created_at=NOW - 3)]
    metrics.on_cycle(CycleReport(), Plan(bindings=(Binding(JobId("ns/j"), ()),)))
    first = scrape(metrics, first=True)
    labels = {"queue": "team-b", "kind": "reclaim", "reason": "Reclaimed", "by_queue": "team-a"}
    assert value(first, "leitstand_queue_evictions_total", **labels) == 0
    assert value(first, "leitstand_queue_admission_wait_seconds_count", queue="team-a") == 0
    assert value(first, "leitstand_queue_admission_wait_seconds_bucket", queue="team-a", le="+Inf") == 0
    assert value(first, "leitstand_kube_api_requests_total", verb="GET", status_class="2xx") == 0
    second = scrape(metrics, first=True)
    assert value(second, "leitstand_queue_evictions_total", **labels) == 1
    assert value(second, "leitstand_queue_admission_wait_seconds_count", queue="team-a") == 1
    assert value(second, "leitstand_queue_admission_wait_seconds_sum", queue="team-a") == 3
    assert value(second, "leitstand_kube_api_requests_total", verb="GET", status_class="2xx") == 7
    # gauges are what they are from the first scrape on
    assert value(first, "leitstand_leader") == 0
