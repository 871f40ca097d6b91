"""A platform engineer measures the operator's throughput on a small cluster: `leitstand bench operator
--nodes 8` starts its own cluster, runs one-GPU TrainingJobs and gangs three ways — the raw create+bind
loop, the TrainingJob floor (the tenant's TrainingJob, its pods, their binds and one status write per
job, with no scheduling) and `leitstand run` — prints JSON, and stops everything it started.

Outcomes only (the speeds are what the numbers are for, never asserted): every path bound every pod
that fits, the floor's requests all succeeded, Leitstand's TrainingJobs all show Running on the API
server, and the ratios the closing notes quote are in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-c", "from leitstand.operator.cli import main; main()"]


@pytest.mark.skipif(bool(os.environ.get("LEITSTAND_E2E_KUBECONFIG")),
                    reason="starts a cluster of its own (8 simulated nodes)")
def test_raw_floor_and_leitstand_bind_the_same_pods_on_eight_nodes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "LEITSTAND_RUN": str(run)}
    proc = subprocess.run([*CLI, "bench", "operator", "--nodes", "8", "--single", "24", "--gangs", "3",
                           "--gang-replicas", "2", "--gang-gpus", "8", "--api-costs", "0", "--timeout", "180",
                           "--log-dir", str(tmp_path), "--json"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
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
    # everything it started is gone: the cluster's run folder was removed by `down`
    assert not run.exists() or not (run / "state.json").exists()
