"""A platform engineer's worst day, small: `leitstand run` is killed with SIGKILL twice while tenants'
TrainingJobs are being scheduled, and restarted each time. Every job still ends Succeeded, and the pods on
the API server (sampled twice a second throughout) never book a GPU twice. The full campaign
(`leitstand bench crash --jobs 200 --kills 3`, and more) is run by hand for the numbers in the notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from leitstand.operator.faults import run_campaign


def test_kill_9_during_a_burst_loses_no_job_and_double_books_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEITSTAND_RUN", str(tmp_path / "run"))
    lines: list[str] = []
    result = run_campaign(jobs=60, kills=2, seed=3, nodes=8, timeout_seconds=300, report=lines.append)
    assert result.operator_restarts == 2, lines
    assert result.overbooked == [], result.overbooked
    assert result.unfinished == [] and result.failed == [], (result.unfinished, result.failed)
    assert result.succeeded == 60
    assert result.samples > 20  # the check really looked, many times
    assert not (tmp_path / "run" / "state.json").exists()  # the cluster it started is gone
