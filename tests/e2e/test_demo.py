"""The README's main job, end to end: `leitstand demo` starts its own local cluster, runs the
multi-tenant scenario through the scheduling core with real pods/binding calls, and stops the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_scenario_on_a_real_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "LEITSTAND_RUN": str(tmp_path / "run")}
    proc = subprocess.run(
        [sys.executable, "-m", "leitstand.operator.cli", "demo", "--json", "--timeout", "400"],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    # every job but the one asking for a jurisdiction no node has ran to completion
    assert summary["unfinished"] == ["tenant-a/a-sovereign"]
    assert "eu-fr" in summary["reasons"]["tenant-a/a-sovereign"]
    assert "tenant-a/a-finetune" in summary["finished"]
    # a-finetune needed a whole rack while tenant-b borrowed beyond its quota: GPUs were reclaimed
    assert any(e.get("kind") == "reclaim" for e in summary["events"]), summary["events"]
    # the cluster the demo started is gone again
    assert not (tmp_path / "run" / "state.json").exists()
