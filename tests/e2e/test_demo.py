"""The README's main job, end to end: `leitstand demo` starts its own local cluster, installs the API and
the sample queues, runs `leitstand run` as the least-privilege operator identity, the tenants submit the
sample TrainingJobs from deploy/examples/ with their own tokens, and every job runs to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_sample_jobs_to_the_end_on_a_real_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "LEITSTAND_RUN": str(tmp_path / "run")}
    proc = subprocess.run(
        [sys.executable, "-m", "leitstand.operator.cli", "demo", "--json", "--timeout", "400"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert summary["unfinished"] == []
    assert summary["succeeded"] == sorted(summary["jobs"])
    # industry borrowed the idle cluster; the SME project's in-quota gang got its GPUs back by reclaim
    burst = [k for k in summary["preempted"] if k.startswith("industry/industry-burst-")]
    assert burst, summary["jobs"]
    assert summary["jobs"]["sme-vision/sme-vision-finetune"]["first_start_after_seconds"] < 30
    # data that must stay in France ran on the French nodes' pool (the only eu-fr nodes)
    assert summary["jobs"]["industry/industry-sovereign"]["phase"] == "Succeeded"
    # the cluster the demo started is gone again
    assert not (tmp_path / "run" / "state.json").exists()
