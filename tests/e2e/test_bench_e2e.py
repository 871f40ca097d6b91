"""A platform engineer compares schedulers on a small cluster: `leitstand bench e2e --nodes 16` starts its own
cluster with kube-scheduler, runs the same mixed workload (one-GPU jobs, 8-GPU jobs, gangs of 4 × 8 GPUs,
filling the cluster exactly) through the raw create+bind loop, the TrainingJob floor (TrainingJobs, their
pods and binds with no decision), kube-scheduler at its default client QPS,
a second kube-scheduler with raised QPS and `leitstand run`, prints JSON, and stops everything it started.

Outcomes only (no speeds are asserted: that is what the numbers are for): every path ran on the same
workload, the raw loop, the floor and Leitstand bound every pod, Leitstand left no gang partly placed and no GPU
stranded, and kube-scheduler's client settings are stated (its defaults on the local cluster)."""

from __future__ import annotations

from pathlib import Path

from .conftest import bench_json, own_cluster


@own_cluster
def test_the_same_workload_five_ways_on_sixteen_nodes(tmp_path: Path) -> None:
    report = bench_json(tmp_path, "e2e", "--nodes", "16", "--nodes-per-rack", "4", "--settle", "3", timeout=600)
    assert report["cluster"]["nodes"] == 16 and report["cluster"]["gpus"] == 128
    side = report["side_by_side"]
    assert sum(kind["gpus"] for kind in side["workload"].values()) == 128
    rows = {row["path"]: row for row in side["paths"]}
    assert set(rows) == {"raw", "floor", "kube-scheduler", "kube-scheduler-qps", "leitstand"}
    total = sum(kind["pods"] for kind in side["workload"].values())
    for path in ("raw", "floor", "leitstand"):
        row = rows[path]
        assert row["pods_total"] == total
        assert row["all_bound"] and row["pods_bound"] == total, (path, row)
        assert row["partial_gangs"] == 0 and row["stranded_gpus"] == 0 and row["free_gpus"] == 0, (path, row)
        assert not row["client_errors"], (path, row["client_errors"])
    for path in ("kube-scheduler", "kube-scheduler-qps"):
        assert rows[path]["pods_total"] == total and rows[path]["pods_bound"] > 0, rows[path]
    assert "QPS 50 / burst 100" in rows["kube-scheduler"]["scheduler"]
    assert "defaults" in side["kube_scheduler_client"]
    assert side["ratios"]["percent_of_raw"] is not None and side["ratios"]["percent_of_floor"] is not None
    assert side["ratios"]["floor_x_kube-scheduler"] is not None
