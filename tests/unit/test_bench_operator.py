"""`leitstand bench operator` without a cluster: options, the workload plan, the raw loop's pods, the
watch's bookkeeping, the parsers (cycle log lines, kube-apiserver metrics) and the report."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from leitstand.operator import bench_operator as bo
from leitstand.operator.commands import bench_app


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"nodes": 0}, "--nodes"),
        ({"single": -1}, "--single"),
        ({"single": 0, "gangs": 0}, "nothing to measure"),
        ({"gang_replicas": 0}, "--gang-replicas"),
        ({"gang_gpus": 9}, "--gang-gpus"),
        ({"gang_gpus": 0}, "--gang-gpus"),
        ({"concurrency": 0}, "--concurrency"),
        ({"timeout": 0.0}, "--timeout"),
    ],
)
def test_check_options_names_the_option(changes: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=option):
        bo.check_options(bo.Options(**changes))


def test_defaults_are_valid() -> None:
    bo.check_options(bo.Options())


def test_cli_rejects_bad_arguments_before_touching_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cluster(*_: Any, **__: Any) -> None:
        raise AssertionError("the benchmark must not start for invalid options")

    monkeypatch.setattr(bo, "run", no_cluster)
    result = CliRunner().invoke(bench_app, ["operator", "--gang-gpus", "9"])
    assert result.exit_code == 2
    assert "--gang-gpus" in result.output
    result = CliRunner().invoke(bench_app, ["operator", "--single", "0", "--gangs", "0"])
    assert result.exit_code == 2
    assert "nothing to measure" in result.output


def test_plan_full_scale_times_the_gangs_that_fit() -> None:
    single, gangs = bo.plan_workloads([8] * 256, bo.Options())
    assert (single.jobs, single.fit_jobs, single.fit_pods) == (1000, 1000, 1000)
    assert "all fit at once" in single.note
    assert (gangs.jobs, gangs.replicas, gangs.gpus, gangs.fit_jobs, gangs.fit_pods) == (100, 8, 8, 32, 256)
    assert "6400 GPUs on 2048 GPUs" in gangs.note
    assert "32 gangs (256 pods)" in gangs.note and "68 must stay Pending" in gangs.note


def test_plan_small_and_partial() -> None:
    plans = bo.plan_workloads([8] * 32, bo.Options(nodes=32, single=300, gangs=10))
    assert [(p.name, p.fit_jobs, p.fit_pods) for p in plans] == [("single", 256, 256), ("gangs", 4, 32)]
    assert "256 fit at once" in plans[0].note
    # 4-GPU replicas: two per node
    (gangs,) = bo.plan_workloads([8] * 4, bo.Options(single=0, gangs=5, gang_replicas=2, gang_gpus=4))
    assert gangs.fit_jobs == 4


def test_job_names_are_distinct_per_workload() -> None:
    single, gangs = bo.plan_workloads([8] * 2, bo.Options(single=2, gangs=2, gang_replicas=1))
    assert single.job_name(7) == "s-0007"
    assert gangs.job_name(7) == "g-0007"


def test_raw_pods_have_the_operators_shape_without_an_owner() -> None:
    (workload,) = bo.plan_workloads([8] * 4, bo.Options(single=0, gangs=3, gang_replicas=2, gang_gpus=8))
    nodes = [(f"n{i}", 8) for i in range(4)]
    pods = bo.raw_pods(workload, nodes)
    assert len(pods) == workload.fit_pods == 4
    assert len({name for name, _, _ in pods}) == 4
    assert sorted(node for _, node, _ in pods) == ["n0", "n1", "n2", "n3"]  # round-robin, one per node
    for name, node, manifest in pods:
        meta, spec = manifest["metadata"], manifest["spec"]
        assert meta["name"] == name and meta["namespace"] == bo.NAMESPACE
        assert "ownerReferences" not in meta
        assert meta["labels"][bo.JOB_LABEL].startswith("raw-g-")
        assert meta["annotations"]["leitstand.dev/gpus"] == "0,1,2,3,4,5,6,7"
        assert meta["annotations"]["leitstand.dev/node"] == node
        assert spec["schedulerName"] == "leitstand" and "nodeName" not in spec
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_raw_single_pods_share_nodes_on_distinct_gpus() -> None:
    (workload,) = bo.plan_workloads([2, 2], bo.Options(single=4, gangs=0))
    pods = bo.raw_pods(workload, [("a", 2), ("b", 2)])
    placed = sorted((node, m["metadata"]["annotations"]["leitstand.dev/gpus"]) for _, node, m in pods)
    assert placed == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]


def test_trainingjob_body() -> None:
    body = bo.trainingjob("g-0001", 8, 8)
    assert body["spec"]["queue"] == bo.QUEUE and body["metadata"]["namespace"] == bo.NAMESPACE
    assert (body["spec"]["replicas"], body["spec"]["gpus"]) == (8, 8)
    assert "leitstand.dev/sim-duration" not in json.dumps(body)  # long-running: bound pods stay bound


def test_percentiles() -> None:
    assert bo.percentiles([]) == {}
    stats = bo.percentiles(float(v) for v in range(1, 101))
    assert stats["n"] == 100 and stats["max"] == 100.0
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p99"] == pytest.approx(99.01)
    assert bo.percentiles([3.0]) == {"n": 1, "p50": 3.0, "p90": 3.0, "p99": 3.0, "max": 3.0}


LOG = """\
2026-12-05 20:34:28,961 INFO leitstand.run: leading as dbg: scheduling
2026-12-05 20:34:44,987 INFO leitstand.operator.service.loop: cycle 2: 1 bound, 0 evicted, 0 pending, 0 running; \
observe=0.1ms follow=0.1ms decide=0.6ms core_allocate=0.4ms apply=0.3ms status=0.0ms
2026-12-05 20:34:45,188 INFO leitstand.operator.service.loop: bind bench/t-2: placed 2 replicas on b200-0002
2026-12-05 20:34:45,188 INFO leitstand.operator.service.loop: cycle 3: 2 bound, 1 evicted, 4 pending, 1 running; \
observe=0.2ms follow=0.2ms decide=0.7ms core_allocate=0.4ms apply=0.5ms status=0.1ms; nodes held back: b200-0001
"""


def test_cycle_summary() -> None:
    summary = bo.cycle_summary(LOG)
    assert summary["cycles"] == 2 and summary["jobs_bound"] == 3 and summary["evictions"] == 1
    assert summary["last_pending"] == 4
    assert summary["cycle_ms_total"] == pytest.approx(2.8)
    assert summary["cycle_ms_max"] == pytest.approx(1.7)
    assert summary["phase_ms"]["core_allocate"] == pytest.approx(0.8)
    assert next(iter(summary["phase_ms"])) == "decide"  # largest first
    assert bo.cycle_summary("nothing here")["cycles"] == 0


def metrics(dispatched: int, rejected: int, wait_sum: float, waited: int, binds: int) -> str:
    flow = 'flow_schema="global-default",priority_level="global-default"'
    return f"""\
# HELP apiserver_flowcontrol_dispatched_requests_total [BETA] Number of requests executed by API Priority and Fairness
apiserver_flowcontrol_dispatched_requests_total{{{flow}}} {dispatched}
apiserver_flowcontrol_dispatched_requests_total{{flow_schema="exempt",priority_level="exempt"}} 999
apiserver_flowcontrol_rejected_requests_total{{{flow},reason="queue-full"}} {rejected}
apiserver_flowcontrol_request_wait_duration_seconds_sum{{execute="true",{flow}}} {wait_sum}
apiserver_flowcontrol_request_wait_duration_seconds_count{{execute="true",{flow}}} {waited}
apiserver_flowcontrol_request_wait_duration_seconds_sum{{execute="false",{flow}}} 50
apiserver_flowcontrol_nominal_limit_seats{{priority_level="global-default"}} 123
apiserver_flowcontrol_current_limit_seats{{priority_level="global-default"}} 142
apiserver_request_total{{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",\
subresource="binding",verb="POST",version="v1"}} {binds}
apiserver_request_total{{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/healthz",\
verb="GET",version=""}} 7
"""


def test_flowcontrol_and_deltas() -> None:
    before = bo.flowcontrol(metrics(10, 0, 0.5, 10, 3))
    after = bo.flowcontrol(metrics(210, 2, 0.9, 210, 103))
    assert before["seats"]["global-default"] == {"nominal": 123.0, "current": 142.0}
    delta = bo.flow_delta(before, after, "global-default/global-default")
    assert delta == {"dispatched": 200.0, "rejected": 2.0, "mean_wait_ms": pytest.approx(2.0)}
    assert bo.request_delta(before, after) == {"POST pods/binding 201": 100}
    assert bo.flow_delta({}, {}, "x/y") == {"dispatched": 0.0, "rejected": 0.0, "mean_wait_ms": 0.0}


def test_apiserver_flags() -> None:
    flags = bo.apiserver_flags(["kube-apiserver", "--max-requests-inflight=1000", "--v=1"])
    assert flags["--max-requests-inflight"] == "1000"
    assert flags["--max-mutating-requests-inflight"] == "200 (default)"
    assert flags["--enable-priority-and-fairness"] == "true (default)"


def pod(name: str, job: str, node: str = "", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {bo.JOB_LABEL: job}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T20:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def test_pod_watch_counts_live_bound_pods_and_rollbacks() -> None:
    watch = bo.PodWatch(client=None)  # type: ignore[arg-type]  # no request is made here
    watch.on_event("ADDED", pod("a-x-0", "a"), 1.0)
    watch.on_event("MODIFIED", pod("a-x-0", "a", "n1"), 2.0)
    watch.on_event("MODIFIED", pod("a-x-0", "a", "n1"), 2.5)  # kwok's status update: not a new bind
    assert watch.bound == {"a-x-0": 2.0} and watch.binds == 1
    # the operator rolls the pod back and makes a new one for the same job
    watch.on_event("MODIFIED", pod("a-x-0", "a", "n1", deleting=True), 3.0)
    assert watch.bound == {} and watch.unbound == 1
    watch.on_event("DELETED", pod("a-x-0", "a", "n1", deleting=True), 3.5)
    assert watch.unbound == 1 and watch.deleted == 1
    watch.on_event("ADDED", pod("a-y-0", "a"), 4.0)
    watch.on_event("MODIFIED", pod("a-y-0", "a", "n2"), 5.0)
    assert watch.bound_count(replicas=1) == 1 and watch.binds == 2 and watch.added == 2
    # two live pods of a one-replica job count once
    watch.on_event("ADDED", pod("a-z-0", "a", "n3"), 6.0)
    assert len(watch.bound) == 2 and watch.bound_count(replicas=1) == 1
    watch.on_event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}, 7.0)
    assert watch.added == 3


def test_latencies_from_the_creating_object() -> None:
    watch = bo.PodWatch(client=None)  # type: ignore[arg-type]
    watch.on_event("ADDED", pod("j-aaaaa-0", "j"), 10.0)
    watch.on_event("MODIFIED", pod("j-aaaaa-0", "j", "n"), 10.5)
    sub = bo.Submission(created={"j": 9.0})
    made, seen = bo.latencies(sub, watch, lambda p: watch.job[p])
    assert made == [pytest.approx(1500.0)] and seen == [pytest.approx(500.0)]


def result(workload: str, path: str, pods: int, wall: float) -> bo.PhaseResult:
    r = bo.PhaseResult(workload, path, jobs_submitted=pods, pods_expected=pods, pods_bound=pods, complete=True,
                       wall_seconds=wall, cores=2)
    r.cpu_seconds = {"kube-apiserver": wall, "bench client": 0.1, "other": 0.0}
    if path == "leitstand":
        r.cpu_seconds["leitstand run"] = 0.5
        r.operator_threads = {"main": 0.3, "other": 0.2}
        r.cycles = bo.cycle_summary(LOG)
        r.job_phases = {"Running": pods}
        r.bound_after_settle = pods
        r.pods_created = r.binds_seen = pods + 1
        r.bound_pods_deleted = 1
    r.latency_ms = {"p50": 100.0, "p99": 200.0}
    return r


def test_summarize_and_render() -> None:
    results = [result("single", "raw", 1000, 5.0), result("single", "leitstand", 1000, 10.0),
               result("gangs", "raw", 256, 1.0), result("gangs", "leitstand", 256, 1.25)]
    summary = bo.summarize(results)
    assert summary["ratio_percent"] == {"single": 50.0, "gangs": 80.0, "all": pytest.approx(53.3, abs=0.1)}
    assert summary["totals"]["raw"]["pods_bound"] == 1256
    # CPU per pod: raw 5.0 + 0.1 s, ours 10.0 + 0.1 + 0.5 s for 1,000 pods, on 2 cores
    assert summary["cpu_bound_ratio_percent"]["single"] == pytest.approx(100 * 5.1 / 10.6, abs=0.1)
    single_raw = summary["phases"][0]
    assert single_raw["cpu_ms_per_pod"] == pytest.approx(5.1) and single_raw["cpu_bound_rate"] == pytest.approx(392.2)
    report = {
        "cluster": {"nodes": 256, "gpus": 2048, "kubernetes": "1.34.10", "cores": 2},
        "concurrency": 64,
        "workload_notes": ["1000 one-GPU jobs on 2048 GPUs: all fit at once"],
        "apf": {"flow_schema": "global-default", "priority_level": "global-default", "nominal_seats": 123,
                "current_seats": 142, "flags": {"--max-requests-inflight": "1000"}},
        "operator_log": "/tmp/x.log",
        **summary,
    }
    json.dumps(report, allow_nan=False)  # --json prints strict JSON
    console = Console(record=True, width=220)
    bo.render(report, console)
    text = console.export_text()
    assert "50 %" in text and "80 %" in text and "53 %" in text
    assert "misses the 80 % goal" in text
    assert "1001 pods created" in text and "1 bound pods were deleted again" in text
    assert "global-default" in text


def test_the_floor_sits_between_the_raw_loop_and_leitstand_in_the_summary_and_the_table() -> None:
    results = [result("single", "raw", 1000, 5.0), result("single", "floor", 1000, 7.5),
               result("single", "leitstand", 1000, 10.0)]
    summary = bo.summarize(bo._order(list(reversed(results))))
    assert [row["path"] for row in summary["phases"]] == ["raw", "floor", "leitstand"]
    assert summary["ratio_percent"]["single"] == 50.0  # Leitstand against the raw loop, as before
    assert summary["floor_ratio_percent"]["single"] == {"floor_of_raw": 66.7, "leitstand_of_floor": 75.0}
    assert summary["floor_ratio_percent"]["all"] == {"floor_of_raw": 66.7, "leitstand_of_floor": 75.0}
    report = {"cluster": {"nodes": 256, "gpus": 2048, "kubernetes": "1.34.10", "cores": 2}, "concurrency": 64,
              "workload_notes": [], "apf": {"flags": {}}, **summary}
    console = Console(record=True, width=220)
    bo.render(report, console)
    text = console.export_text()
    assert "67 %" in text and "75 %" in text
    assert "floor (the tenant's TrainingJob, its pods and binds; one status write each after the last bind; no " \
        "scheduling, no watch) reaches 67 % of the raw loop's rate" in " ".join(text.split())
    assert "Leitstand reaches 75 % of the floor" in " ".join(text.split())


def test_the_floor_makes_each_jobs_trainingjob_pods_and_binds_then_one_status_write_per_job() -> None:
    import asyncio

    workload = bo.Workload("gangs", 2, 2, 8, 2, "")
    pods = bo.raw_pods(workload, [("n1", 8), ("n2", 8), ("n3", 8), ("n4", 8)], bo.FLOOR_PREFIX)
    calls: list[tuple[str, str]] = []
    owners: list[Any] = []
    shapes: list[tuple[int, int]] = []

    class Api:
        async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                          content_type: str = "application/json") -> tuple[int, Any]:
            calls.append((method, path.rsplit("/", 2)[-2] if path.endswith(("/binding", "/status")) else path))
            if path.endswith("/trainingjobs"):
                shapes.append((body["spec"]["replicas"], body["spec"]["gpus"]))
                return 201, {"metadata": {"uid": f"uid-{body['metadata']['name']}"}}
            if path.endswith("/pods"):
                owners.append(body["metadata"]["ownerReferences"][0])
            return (200 if method == "PATCH" else 201), {}

    sub = bo.Submission()
    api = Api()
    asyncio.run(bo.submit_floor(api, api, pods, 1, sub))  # type: ignore[arg-type]
    assert not sub.errors and len(sub.created) == 4
    # per job its TrainingJob, 2 pods, 2 binds; the status writes after every job is bound
    assert [m for m, _ in calls] == ["POST"] * 10 + ["PATCH"] * 2
    assert [p for _, p in calls[-2:]] == ["floor-g-0000", "floor-g-0001"]
    assert {o["uid"] for o in owners} == {"uid-floor-g-0000", "uid-floor-g-0001"}
    assert shapes == [(2, 8), (2, 8)]  # each TrainingJob asks for its pods' shape
    assert all(o["kind"] == "TrainingJob" and o["controller"] for o in owners)


def test_cost_rows_put_the_raw_pod_first() -> None:
    raw = result("single", "raw", 1000, 5.0)
    raw.cpu_seconds.update({"etcd": 0.5, "kube-controller-manager": 0.2})
    probe = bo.ApiCost("Event create", 500, 1.5, {"kube-apiserver": 1.0, "etcd": 0.25})
    rows = bo.cost_rows([probe], [raw, result("single", "leitstand", 1000, 9.0)])
    assert [r["kind"] for r in rows] == ["pod create + bind (raw loop, per pod)", "Event create"]
    assert (rows[0]["apiserver_ms"], rows[0]["etcd_ms"], rows[0]["kcm_ms"]) == (5.0, 0.5, 0.2)
    assert (rows[1]["apiserver_ms"], rows[1]["etcd_ms"], rows[1]["kcm_ms"]) == (2.0, 0.5, 0.0)
    assert bo.cost_rows([], []) == []
