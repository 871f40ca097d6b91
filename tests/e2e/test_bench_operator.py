"""A platform engineer measures the operator's throughput on a small cluster: `leitstand bench operator
--nodes 8` starts its own cluster, runs one-GPU TrainingJobs and gangs three ways — the raw create+bind
loop, the TrainingJob floor (the tenant's TrainingJob, its pods, their binds and one status write per
job, with no scheduling) and `leitstand run` — prints JSON, and stops everything it started.

Outcomes only (the speeds are what the numbers are for, never asserted): every path bound every pod
that fits, the floor's requests all succeeded, Leitstand's TrainingJobs all show Running on the API
server, and the ratios the closing notes quote are in the report."""

from __future__ import annotations

from pathlib import Path

from .conftest import bench_json, own_cluster


@own_cluster
def test_raw_floor_and_leitstand_bind_the_same_pods_on_eight_nodes(tmp_path: Path) -> None:
    report = bench_json(tmp_path, "operator", "--nodes", "8", "--single", "24", "--gangs", "3",
                        "--gang-replicas", "2", "--gang-gpus", "8", "--api-costs", "0", "--timeout", "180")
    assert report["cluster"]["nodes"] == 8
    phases = {(row["workload"], row["path"]): row for row in report["phases"]}
    assert set(phases) == {(w, p) for w in ("single", "gangs") for p in ("raw", "floor", "leitstand")}
    for (workload, path), row in phases.items():
        assert row["complete"] and row["pods_bound"] == row["pods_expected"], (workload, path, row)
        assert not row["client_errors"], (workload, path, row["client_errors"])
    assert phases[("single", "leitstand")]["job_phases"] == {"Running": 24}
    assert phases[("gangs", "floor")]["pods_bound"] == 6
    floors = report["floor_ratio_percent"]
    assert floors["all"]["floor_of_raw"] > 0 and floors["all"]["leitstand_of_floor"] > 0
    assert report["ratio_percent"]["all"] is not None
