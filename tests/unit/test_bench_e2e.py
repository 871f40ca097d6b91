"""The pure parts of `leitstand bench e2e`: the workload, the raw loop's packing, kube-scheduler's pods and
client settings, the placement outcome (partial gangs, stranded GPUs), the rates, the tables and the
option errors. The cluster runs are a benchmark (numbers printed), not tested here."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from rich.console import Console
from typer.testing import CliRunner

from leitstand.operator.bench_e2e import (
    GANG_REPLICAS,
    Job,
    Options,
    PathResult,
    check_options,
    fmt_duration,
    kai_sizes,
    kube_pod,
    mixed_workload,
    parse_paths,
    placement_outcome,
    raw_plan,
    render,
    scheduler_client_settings,
    summarize,
    tight_packing,
    workload_summary,
)

NODES = [(f"n{i:02d}", 8) for i in range(16)]


def test_the_mixed_workload_fills_the_cluster_exactly_with_the_three_shapes() -> None:
    jobs = mixed_workload(256, seed=1)
    summary = workload_summary(jobs)
    assert summary["gang"] == {"jobs": 32, "pods": 128, "gpus": 1024}
    assert summary["8-gpu"] == {"jobs": 64, "pods": 64, "gpus": 512}
    assert summary["one-gpu"] == {"jobs": 512, "pods": 512, "gpus": 512}
    assert sum(e["gpus"] for e in summary.values()) == 256 * 8
    assert all(job.replicas == GANG_REPLICAS for job in jobs if job.kind == "gang")
    assert len({job.name for job in jobs}) == len(jobs)


def test_the_order_is_seeded_and_mixes_the_shapes() -> None:
    a, b, c = mixed_workload(64, seed=7), mixed_workload(64, seed=7), mixed_workload(64, seed=8)
    assert [j.name for j in a] == [j.name for j in b]
    assert [j.name for j in a] != [j.name for j in c]
    first_kinds = {job.kind for job in a[:40]}
    assert first_kinds == {"gang", "8-gpu", "one-gpu"}


def test_the_raw_loop_packs_every_pod_on_whole_nodes_without_overbooking() -> None:
    jobs = mixed_workload(16, seed=3)
    subsets = tight_packing(jobs, NODES)
    assert len(subsets["gang"]) == 8 and len(subsets["8-gpu"]) == 4 and len(subsets["one-gpu"]) == 4
    pods, renamed = raw_plan(jobs, NODES, seed=3)
    assert len(pods) == sum(job.replicas for job in jobs)
    floor, floor_jobs = raw_plan(jobs, NODES, seed=3, prefix="floor-")  # the floor: the same plan, its own names
    assert [(node, m["metadata"]["labels"]["leitstand.dev/job"].removeprefix("floor-")) for _, node, m in floor] == [
        (node, m["metadata"]["labels"]["leitstand.dev/job"].removeprefix("raw-")) for _, node, m in pods]
    assert {j.name for j in floor_jobs} == {"floor-" + j.name.removeprefix("raw-") for j in renamed}
    used: Counter[str] = Counter()
    per_job: Counter[str] = Counter()
    gpus = {job.name: job.gpus for job in renamed}
    for _name, node, manifest in pods:
        job = manifest["metadata"]["labels"]["leitstand.dev/job"]
        per_job[job] += 1
        used[node] += gpus[job]
    assert max(used.values()) == 8 and sum(used.values()) == 16 * 8
    assert per_job == Counter({job.name: job.replicas for job in renamed})
    # a job's pods are submitted together
    order = [m["metadata"]["labels"]["leitstand.dev/job"] for _, _, m in pods]
    assert all(order.index(j) + per_job[j] - 1 == len(order) - 1 - order[::-1].index(j) for j in per_job)


def test_a_workload_larger_than_the_cluster_is_refused_for_the_raw_loop() -> None:
    with pytest.raises(ValueError, match="more than the 4 nodes"):
        tight_packing(mixed_workload(8, seed=1), NODES[:4])


def test_kube_scheduler_pods_ask_for_gpus_by_limit_and_name_their_scheduler() -> None:
    pod = kube_pod(Job("gang-0003", "gang", 4, 8), 2, "default-scheduler")
    assert pod["metadata"]["name"] == "gang-0003-2"
    assert pod["metadata"]["labels"]["leitstand.dev/job"] == "gang-0003"
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert "nodeName" not in pod["spec"]


def test_kube_scheduler_client_settings_default_or_from_flags() -> None:
    assert scheduler_client_settings(["kube-scheduler", "--kubeconfig=x", "--v=1"]) == {
        "qps": 50.0, "burst": 100, "defaults": True, "config": None}
    raised = scheduler_client_settings(["kube-scheduler", "--kube-api-qps=500", "--kube-api-burst=800"])
    assert (raised["qps"], raised["burst"], raised["defaults"]) == (500.0, 800, False)
    assert scheduler_client_settings(["kube-scheduler", "--config=/c.yaml"])["config"] == "/c.yaml"


def _bound(*placements: tuple[str, str, str]) -> dict[str, tuple[str, str]]:
    return {pod: (job, node) for pod, job, node in placements}


def test_outcome_counts_partial_gangs_and_the_gpus_they_hold() -> None:
    nodes = [("a", 8), ("b", 8), ("c", 8)]
    jobs = [Job("g", "gang", 4, 8), Job("s", "one-gpu", 1, 1)]
    out = placement_outcome(jobs, _bound(("g-0", "g", "a"), ("g-1", "g", "b"), ("s-0", "s", "c")), nodes)
    assert out["partial_gangs"] == 1 and out["partial_gang_gpus"] == 16
    assert out["pods_bound"] == 3 and out["pods_total"] == 5 and out["jobs_waiting"] == 1
    # 7 GPUs free on c, but the waiting gang needs 2 more whole nodes: stranded
    assert out["free_gpus"] == 7 and out["stranded_gpus"] == 7


def test_free_gpus_a_waiting_job_can_use_are_not_stranded() -> None:
    nodes = [("a", 8), ("b", 8)]
    jobs = [Job("w", "8-gpu", 1, 8), Job("s1", "one-gpu", 1, 1), Job("x", "8-gpu", 1, 8)]
    spread = placement_outcome(jobs, _bound(("w-0", "w", "a"), ("s1-0", "s1", "b")), nodes)
    assert spread["jobs_waiting"] == 1 and spread["free_gpus"] == 7 and spread["stranded_gpus"] == 7
    # a waiting one-GPU job could use any free GPU
    more = [*jobs, Job("s2", "one-gpu", 1, 1)]
    usable = placement_outcome(more, _bound(("w-0", "w", "a"), ("s1-0", "s1", "b")), nodes)
    assert usable["stranded_gpus"] == 0
    # nothing waiting: free GPUs are idle, not stranded
    done = placement_outcome(jobs[:2], _bound(("w-0", "w", "a"), ("s1-0", "s1", "b")), nodes)
    assert done["jobs_waiting"] == 0 and done["free_gpus"] == 7 and done["stranded_gpus"] == 0


def test_a_complete_gang_is_not_partial_and_pods_of_unknown_jobs_are_ignored() -> None:
    nodes = [(n, 8) for n in "abcd"]
    jobs = [Job("g", "gang", 4, 8)]
    out = placement_outcome(jobs, _bound(*((f"g-{i}", "g", n) for i, n in enumerate("abcd")),
                                         ("stray", "other", "a")), nodes)
    assert out["partial_gangs"] == 0 and out["pods_bound"] == 4 and out["free_gpus"] == 0


def _result(path: str, pods: int, seconds: float, total: int = 100) -> PathResult:
    return PathResult(path, path, total, pods_bound=pods, all_bound=pods == total, first_to_last_bind=seconds)


def test_rates_and_ratios() -> None:
    results = [_result("raw", 100, 1.0), _result("kube-scheduler", 90, 3.0), _result("kube-scheduler-qps", 90, 1.5),
               _result("leitstand", 100, 1.25)]
    summary = summarize(results)
    rows = {r["path"]: r for r in summary["paths"]}
    assert rows["raw"]["pods_per_second"] == 100.0 and rows["leitstand"]["pods_per_second"] == 80.0
    assert rows["kube-scheduler"]["time_to_all_bound"] is None and rows["leitstand"]["time_to_all_bound"] == 1.25
    assert summary["ratios"] == {"x_kube-scheduler": 2.67, "x_kube-scheduler-qps": 1.33, "percent_of_raw": 80.0,
                                 "percent_of_floor": None, "floor_percent_of_raw": None,
                                 "floor_x_kube-scheduler": None, "floor_x_kube-scheduler-qps": None}
    with_floor = summarize([*results, _result("floor", 100, 1.1)])["ratios"]  # 90.9 pods/s
    assert with_floor["percent_of_floor"] == 88.0 and with_floor["floor_percent_of_raw"] == 90.9
    assert with_floor["floor_x_kube-scheduler"] == 3.03 and with_floor["floor_x_kube-scheduler-qps"] == 1.52
    assert _result("raw", 0, 0.0).pods_per_second == 0.0
    assert summarize([_result("leitstand", 10, 1.0)])["ratios"]["percent_of_raw"] is None


def test_kai_sizes_scale_with_the_cluster() -> None:
    assert kai_sizes(500) == {"singles": 4000, "hero_pods": 500, "topology_pods": 512, "topology_gpus": 2}
    assert kai_sizes(16)["topology_pods"] == 64
    assert fmt_duration(397.0) == "6 min 37.0 s" and fmt_duration(49.0) == "49.0 s" and fmt_duration(None) == "–"


def test_the_tables_render_every_path_and_shape() -> None:
    results = [_result("raw", 100, 1.0), _result("floor", 100, 1.1), _result("kube-scheduler", 90, 3.0),
               _result("leitstand", 100, 1.25)]
    report = {
        "cluster": {"nodes": 16, "gpus": 128, "nodes_per_rack": 32, "kubernetes": "1.34.10", "cores": 2},
        "commit": "abc1234",
        "side_by_side": {"workload": workload_summary(mixed_workload(16, 1)), "kube_scheduler_client": "QPS 50",
                         **summarize(results), "notes": []},
        "kai": {"nodes": 16, "prep": {"refill": "x"}, "shapes": [
            {"key": "fill", "what": "128 one-GPU jobs", "seconds": 2.5, "complete": True, "pods": 128,
             "expected": 128, "waited_seconds": 2.5, "kai_text": "6 min 37 s", "operator_cpu_seconds": 1.0},
            {"key": "reclaim-hero", "what": "hero", "seconds": 0.0, "complete": False, "pods": 0, "expected": 16,
             "waited_seconds": 60.0, "kai_text": "85 s", "evicted": 0, "operator_exited": "leitstand run exited"},
        ]},
    }
    out = io.StringIO()
    render(report, Console(file=out, width=250))
    text = out.getvalue()
    for needle in ("raw", "kube-scheduler", "leitstand", "never (10 unbound)", "2.7× kube-scheduler",
                   "80 % of the raw", "floor (no operator can do less per job): 3.0× kube-scheduler",
                   "91 % of raw; Leitstand at 88 % of it", "6 min 37 s", "0/16 after 1 min 00.0 s",
                   "leitstand run exited"):
        assert needle in text, needle


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nodes": 4}, "--nodes 4"),
        ({"nodes_per_rack": 0}, "--nodes-per-rack"),
        ({"kube_qps": -1.0}, "--kube-qps"),
        ({"concurrency": 0}, "--concurrency"),
        ({"settle": 0.0}, "--settle"),
        ({"timeout": 0.0}, "--timeout"),
        ({"kai": True, "nodes": 1}, "KAI shapes need at least 2"),
    ],
)
def test_bad_options_name_the_option(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_options(Options(**changes))  # type: ignore[arg-type]


def test_paths_are_checked() -> None:
    assert parse_paths("leitstand, raw") == ("leitstand", "raw")
    with pytest.raises(ValueError, match="unknown volcano"):
        parse_paths("raw,volcano")
    with pytest.raises(ValueError, match="choose from"):
        parse_paths(" , ")


def test_the_cli_refuses_bad_options_before_touching_a_cluster() -> None:
    from leitstand.operator.cli import app

    result = CliRunner().invoke(app, ["bench", "e2e", "--nodes", "3"])
    assert result.exit_code == 2
    assert "needs at least 8 nodes" in result.output
    result = CliRunner().invoke(app, ["bench", "e2e", "--paths", "raw,kai"])
    assert result.exit_code == 2 and "unknown kai" in result.output
