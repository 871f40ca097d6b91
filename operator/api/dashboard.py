"""The Grafana dashboard for Leitstand, generated from code: `deploy/grafana/leitstand.json`.

Built with `grafana_foundation_sdk` (Grafana's own typed builders) from `PANELS`, a plain table of
titles and PromQL: the table is what people read and edit, the builders turn it into the JSON model.
Every expression uses only series that `metrics.SPECS` defines (a unit test checks it) and every one
has been evaluated against a real Prometheus scraping `leitstand run` (`tests/e2e/test_prometheus.py`).

Who calls it: `leitstand dashboard [--out FILE]` (regenerates the committed file; a unit test checks
the committed file equals this module's output) and the e2e test (which evaluates `expressions()`).

Template variables: `datasource` (a Prometheus data source) and `queue` (multi-select, "All" = `.*`);
expressions may use Grafana's `$__rate_interval` and `$__range`. Nothing here talks to a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

UID = "leitstand"
TITLE = "Leitstand: queues, fairness and GPUs"
DEFAULT_OUT = Path("deploy/grafana/leitstand.json")
DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
QUEUE = 'queue=~"$queue"'
"""The queue selector of the `queue` variable (All = `.*`, which also matches an empty queue label)."""


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class PanelSpec:
    kind: str
    """timeseries, stat or table."""
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "none"
    width: int = 12
    height: int = 8
    stacked: bool = False
    renames: dict[str, str] = field(default_factory=dict)
    """Table panels: column renames after the queries are merged ("Value #A" → "quota")."""


@dataclass(frozen=True, slots=True)
class RowSpec:
    title: str
    panels: tuple[PanelSpec, ...]


def _quantiles(metric: str, by: str, selector: str = "") -> tuple[Query, ...]:
    group = f"le, {by}" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Query(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{selector}[$__rate_interval])))",
              f"{legend}p{round(q * 100)}")
        for q in (0.5, 0.9, 0.99)
    )


ROWS: tuple[RowSpec, ...] = (
    RowSpec("Queues", (
        PanelSpec("timeseries", "Quota, fair share and allocated GPUs",
                  "Per queue: the deserved quota, the limit (if any), the fair share the last cycle computed, "
                  "and the GPUs its running jobs hold. A parent queue's values cover its subtree.",
                  (Query(f"leitstand_queue_quota_gpus{{{QUEUE}}}", "{{queue}} quota"),
                   Query(f"leitstand_queue_limit_gpus{{{QUEUE}}}", "{{queue}} limit"),
                   Query(f"leitstand_queue_fair_share_gpus{{{QUEUE}}}", "{{queue}} fair share"),
                   Query(f"leitstand_queue_allocated_gpus{{{QUEUE}}}", "{{queue}} allocated")),
                  width=16),
        PanelSpec("table", "Queues now",
                  "The queue table as `kubectl get queues` shows it, from the last scrape.",
                  (Query(f"leitstand_queue_quota_gpus{{{QUEUE}}}"),
                   Query(f"leitstand_queue_over_quota_weight{{{QUEUE}}}"),
                   Query(f"leitstand_queue_fair_share_gpus{{{QUEUE}}}"),
                   Query(f"leitstand_queue_allocated_gpus{{{QUEUE}}}"),
                   Query(f"leitstand_queue_running_jobs{{{QUEUE}}}"),
                   Query(f"leitstand_queue_pending_jobs{{{QUEUE}}}"),
                   Query(f"leitstand_queue_pending_gpus{{{QUEUE}}}")),
                  width=8,
                  renames={"Value #A": "quota", "Value #B": "weight", "Value #C": "fair share",
                           "Value #D": "allocated", "Value #E": "running", "Value #F": "pending jobs",
                           "Value #G": "pending GPUs"}),
        PanelSpec("timeseries", "Pending jobs and GPUs per queue",
                  "Jobs waiting after each cycle and the GPUs they ask for.",
                  (Query(f"leitstand_queue_pending_jobs{{{QUEUE}}}", "{{queue}} jobs"),
                   Query(f"leitstand_queue_pending_gpus{{{QUEUE}}}", "{{queue}} GPUs"))),
        PanelSpec("timeseries", "Running jobs per queue", "Jobs holding GPUs.",
                  (Query(f"leitstand_queue_running_jobs{{{QUEUE}}}", "{{queue}}"),), stacked=True),
    )),
    RowSpec("Waiting", (
        PanelSpec("timeseries", "Admission wait (all queues)",
                  "Seconds from queuedAt (creation, or the last requeue) to admission: p50, p90, p99.",
                  _quantiles("leitstand_queue_admission_wait_seconds", "", f"{{{QUEUE}}}"), unit="s"),
        PanelSpec("timeseries", "Admission wait p90 per queue and mean",
                  "The 90th percentile per queue, and the mean wait per queue.",
                  (Query("histogram_quantile(0.9, sum by (le, queue) "
                         f"(rate(leitstand_queue_admission_wait_seconds_bucket{{{QUEUE}}}[$__rate_interval])))",
                         "{{queue}} p90"),
                   Query(f"sum by (queue) (rate(leitstand_queue_admission_wait_seconds_sum{{{QUEUE}}}"
                         "[$__rate_interval])) / sum by (queue) "
                         f"(rate(leitstand_queue_admission_wait_seconds_count{{{QUEUE}}}[$__rate_interval]))",
                         "{{queue}} mean")),
                  unit="s"),
        PanelSpec("timeseries", "Pending jobs by reason",
                  "Why jobs wait, by reason code (QueueAtLimit, OverFairShare, NeverFits, NoTopologyDomain, ...).",
                  (Query(f"sum by (reason) (leitstand_pending_jobs_by_reason{{{QUEUE}}})", "{{reason}}"),),
                  stacked=True),
        PanelSpec("table", "Pending reasons per queue", "The same, per queue, now.",
                  (Query(f"sum by (queue, reason) (leitstand_pending_jobs_by_reason{{{QUEUE}}})"),),
                  renames={"Value": "jobs"}),
    )),
    RowSpec("Preemption and reclaim", (
        PanelSpec("timeseries", "Evictions per minute by kind",
                  "Running jobs evicted: reclaim (for a queue below its fair share), preempt (for a higher "
                  "priority job of the same queue), move (consolidation), requeue (node lost, gang "
                  "incomplete, restart after a failure).",
                  (Query(f"sum by (kind) (rate(leitstand_queue_evictions_total{{{QUEUE}}}[$__rate_interval])) * 60",
                         "{{kind}}"),),
                  stacked=True),
        PanelSpec("table", "Who took GPUs from whom",
                  "Over the dashboard's time range: GPUs reclaimed or preempted from each queue, by the queue "
                  "of the job that caused it (by_queue), and how many jobs that was.",
                  (Query('sum by (queue, by_queue, kind) (increase(leitstand_queue_evicted_gpus_total'
                         f'{{kind=~"reclaim|preempt", {QUEUE}}}[$__range]))'),
                   Query('sum by (queue, by_queue, kind) (increase(leitstand_queue_evictions_total'
                         f'{{kind=~"reclaim|preempt", {QUEUE}}}[$__range]))')),
                  renames={"Value #A": "GPUs", "Value #B": "jobs", "queue": "victim queue",
                           "by_queue": "caused by queue"}),
        PanelSpec("timeseries", "GPUs taken by preemptor queue",
                  "GPUs evicted per minute (reclaim and preempt), by the queue whose job caused it.",
                  (Query('sum by (by_queue, kind) (rate(leitstand_queue_evicted_gpus_total'
                         '{kind=~"reclaim|preempt"}[$__rate_interval])) * 60', "{{by_queue}} {{kind}}"),),
                  stacked=True),
        PanelSpec("timeseries", "Decisions per minute by kind",
                  "The audit trail's rate: admit, reclaim, preempt, move, reject (a pending reason changed), "
                  "finish, fail, requeue.",
                  (Query(f"sum by (kind) (rate(leitstand_decisions_total{{{QUEUE}}}[$__rate_interval])) * 60",
                         "{{kind}}"),),
                  stacked=True),
    )),
    RowSpec("Cluster", (
        PanelSpec("stat", "GPUs", "Capacity, allocated, free on schedulable nodes, and stranded.",
                  (Query("sum(leitstand_cluster_gpus)", "capacity"),
                   Query("sum(leitstand_cluster_gpus_allocated)", "allocated"),
                   Query("sum(leitstand_cluster_gpus_free)", "free"),
                   Query("sum(leitstand_cluster_gpus_stranded)", "stranded")),
                  width=8, height=5),
        PanelSpec("stat", "Nodes", "Schedulable and unschedulable (NotReady, cordoned, held back) nodes.",
                  (Query('sum(leitstand_cluster_nodes{schedulable="true"})', "schedulable"),
                   Query('sum(leitstand_cluster_nodes{schedulable="false"})', "unschedulable")),
                  width=8, height=5),
        PanelSpec("stat", "Scheduler", "Leader (holds the Lease), ready, seconds since the last cycle, version.",
                  (Query("max(leitstand_leader)", "leader"),
                   Query("min(leitstand_ready)", "ready"),
                   Query("time() - max(leitstand_last_cycle_timestamp_seconds)", "since last cycle (s)"),
                   Query("count by (version) (leitstand_build_info)", "version {{version}}")),
                  width=8, height=5),
        PanelSpec("timeseries", "GPU occupancy by model and pool",
                  "Allocated GPUs / capacity per GPU model and node pool.",
                  (Query("sum by (model, pool) (leitstand_cluster_gpus_allocated) / "
                         "sum by (model, pool) (leitstand_cluster_gpus)", "{{model}} {{pool}}"),),
                  unit="percentunit"),
        PanelSpec("timeseries", "GPU occupancy by rack",
                  "Allocated GPUs / capacity per rack (every topology level is exported; this panel shows racks).",
                  (Query('leitstand_topology_gpus_allocated{level="rack"} / leitstand_topology_gpus{level="rack"}',
                         "{{domain}}"),),
                  unit="percentunit"),
        PanelSpec("timeseries", "Free and stranded GPUs",
                  "Free GPUs on schedulable nodes, and the part of them that no waiting job's per-replica "
                  "shape fits (stranded: fragmentation as the waiting jobs see it).",
                  (Query("sum by (model, pool) (leitstand_cluster_gpus_free)", "{{model}} {{pool}} free"),
                   Query("sum by (model, pool) (leitstand_cluster_gpus_stranded)", "{{model}} {{pool}} stranded"))),
        PanelSpec("timeseries", "Nodes by schedulability", "Nodes per schedulable=true/false.",
                  (Query("sum by (schedulable) (leitstand_cluster_nodes)", "schedulable={{schedulable}}"),),
                  stacked=True),
    )),
    RowSpec("Scheduler", (
        PanelSpec("timeseries", "Cycle duration p99 by phase",
                  "observe, follow, decide (core_* inside it), apply, status, total.",
                  (Query("histogram_quantile(0.99, sum by (le, phase) "
                         "(rate(leitstand_cycle_duration_seconds_bucket[$__rate_interval])))", "{{phase}}"),),
                  unit="s"),
        PanelSpec("timeseries", "Cycles per second and mean cycle time",
                  "How often the loop runs, and the mean duration of a whole cycle.",
                  (Query('sum(rate(leitstand_cycle_duration_seconds_count{phase="total"}[$__rate_interval]))',
                         "cycles/s"),
                   Query('sum(rate(leitstand_cycle_duration_seconds_sum{phase="total"}[$__rate_interval])) / '
                         'sum(rate(leitstand_cycle_duration_seconds_count{phase="total"}[$__rate_interval]))',
                         "mean seconds")),
                  ),
        PanelSpec("timeseries", "Pods bound per second", "Binds through pods/binding, and failed gang binds.",
                  (Query("sum(rate(leitstand_binds_total[$__rate_interval]))", "pods/s"),
                   Query("sum(rate(leitstand_bind_failures_total[$__rate_interval]))", "failed gangs/s"))),
        PanelSpec("timeseries", "Gangs in the binder",
                  "Admitted gangs not yet created and bound; at max_binds_in_flight (512 by default) the cycle "
                  "admits nothing until the API server catches up.",
                  (Query("max(leitstand_binder_gangs_in_flight)", "gangs"),)),
        PanelSpec("timeseries", "Bind latency per gang",
                  "From the first pod create to the last bind of a gang: p50, p90, p99.",
                  _quantiles("leitstand_bind_duration_seconds", ""), unit="s"),
        PanelSpec("timeseries", "Status writes waiting",
                  "TrainingJob and Queue statuses not yet on the API server, how long the oldest has waited, how "
                  "many writes may be in flight, and writes that failed: status writes yield to binds (two "
                  "writers) until the oldest has waited 10 s, then more join; a lag that keeps growing means "
                  "tenants read stale status.",
                  (Query("max(leitstand_status_write_lag_seconds)", "oldest waited, s"),
                   Query("max(leitstand_status_writes_due)", "statuses waiting"),
                   Query("max(leitstand_status_writers_allowed)", "writers allowed"),
                   Query("sum(rate(leitstand_status_write_failures_total[$__rate_interval]))", "failed writes/s"),
                   Query("sum(rate(leitstand_inform_failures_total[$__rate_interval]))", "dropped Events/s"))),
        PanelSpec("timeseries", "Kubernetes API requests by verb and status class",
                  "Requests per second the operator sends; 4xx/5xx/error are the API errors.",
                  (Query("sum by (verb, status_class) (rate(leitstand_kube_api_requests_total[$__rate_interval]))",
                         "{{verb}} {{status_class}}"),),
                  unit="reqps", width=24),
    )),
    RowSpec("Usage", (
        PanelSpec("table", "GPU-hours per queue (time range)",
                  "GPU-hours each queue's jobs held over the dashboard's time range (showback).",
                  (Query(f"sum by (queue) (increase(leitstand_queue_gpu_seconds_total{{{QUEUE}}}[$__range])) / 3600"),),
                  width=8, renames={"Value": "GPU-hours"}),
        PanelSpec("table", "GPU-hours per department (time range)",
                  "The same rolled up to each queue's parent (empty: a root queue).",
                  (Query("sum by (parent) (increase(leitstand_queue_gpu_seconds_total[$__range]) "
                         "* on (queue) group_left (parent) leitstand_queue_info) / 3600"),),
                  width=8, renames={"Value": "GPU-hours"}),
        PanelSpec("timeseries", "GPUs in use per queue",
                  "GPU-seconds per second: the average number of GPUs each queue held.",
                  (Query(f"sum by (queue) (rate(leitstand_queue_gpu_seconds_total{{{QUEUE}}}[$__rate_interval]))",
                         "{{queue}}"),),
                  width=8, stacked=True),
    )),
)


def panels() -> list[PanelSpec]:
    return [p for row in ROWS for p in row.panels]


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, in dashboard order."""
    return [(p.title, q.expr) for p in panels() for q in p.queries]


def _target(query: Query, ref: str, instant: bool) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
    if query.legend:
        target = target.legend_format(query.legend)
    return target.instant().format(prometheus_models.PromQueryFormat.TABLE) if instant else target.range()


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel | stat.Panel | table.Panel:
    refs = [chr(ord("A") + i) for i in range(len(spec.queries))]
    built: timeseries.Panel | stat.Panel | table.Panel
    if spec.kind == "timeseries":
        built = (
            timeseries.Panel()
            .legend(common_builders.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).calcs([]))
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING))
            .fill_opacity(20 if spec.stacked else 0)
        )
        if spec.stacked:
            built = built.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        for query, ref in zip(spec.queries, refs, strict=True):
            built = built.with_target(_target(query, ref, instant=False))
    elif spec.kind == "stat":
        built = (
            stat.Panel()
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common.BigValueGraphMode.NONE)
            .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
            .color_mode(common.BigValueColorMode.NONE)
        )
        for query, ref in zip(spec.queries, refs, strict=True):
            built = built.with_target(_target(query, ref, instant=True))
    elif spec.kind == "table":
        built = table.Panel().show_header(True)
        for query, ref in zip(spec.queries, refs, strict=True):
            built = built.with_target(_target(query, ref, instant=True))
        if len(spec.queries) > 1:
            built = built.with_transformation(dashboard_models.DataTransformerConfig(id_val="merge", options={}))
        built = built.with_transformation(dashboard_models.DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": {"Time": True}, "renameByName": dict(spec.renames)},
        ))
    else:
        raise ValueError(f"unknown panel kind {spec.kind!r}")
    return (built.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
            .unit(spec.unit).span(spec.width).height(spec.height))


def build() -> dashboard_builders.Dashboard:
    board = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description("Leitstand's Prometheus metrics (docs/metrics.md): queues, waits, preemption and reclaim, "
                     "cluster occupancy, stranded GPUs, the scheduling loop, GPU-hours. Generated by "
                     "`leitstand dashboard`; do not edit the JSON by hand.")
        .tags(["leitstand", "gpu", "scheduler"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(common.TimeZoneBrowser)
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(dashboard_builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard_builders.QueryVariable("queue")
            .label("Queue")
            .datasource(DATASOURCE)
            .query("label_values(leitstand_queue_quota_gpus, queue)")
            .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    panel_id = 0
    for row in ROWS:
        panel_id += 1
        board = board.with_row(dashboard_builders.Row(row.title).id(panel_id))
        for spec in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(spec, panel_id))
    return board


def render() -> str:
    """The dashboard JSON as committed (sorted keys, two-space indent, trailing newline)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def write(out: Path = DEFAULT_OUT) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    return out
