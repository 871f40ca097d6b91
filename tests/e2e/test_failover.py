"""A platform engineer runs two replicas of `leitstand run` for high availability and pulls the plug on
the one that leads (SIGKILL) while tenants' TrainingJobs are being scheduled. The other replica takes
the Lease and carries on; every job still ends Succeeded; the pods on the API server (sampled twice a
second throughout) never book a GPU twice nor run a replica twice; and before the kill the replica
that does not lead answered /readyz and the read API on its own port. The full campaign
(`leitstand bench failover --jobs 200 --kills 5`, the default 15 s lease) is run by hand for the
numbers in docs/faults.md; here the lease is 6 s so the scenario stays short."""

from __future__ import annotations

from pathlib import Path

import pytest

from leitstand.operator.faults import run_failover


def test_killing_the_leading_replica_hands_scheduling_to_the_other_without_double_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEITSTAND_RUN", str(tmp_path / "run"))
    lines: list[str] = []
    result = run_failover(jobs=24, kills=1, seed=5, nodes=8, seconds=(4, 10), lease_seconds=6,
                          timeout_seconds=300, report=lines.append)
    assert len(result.faults) == 1, lines
    kill = result.faults[0]
    assert kill["new_leader"] != kill["killed"]
    assert kill["lease_taken_after_seconds"] is not None, lines  # the Lease names the survivor
    assert kill["first_bind_after_seconds"] is not None, lines  # ... and it binds pods
    assert result.extra["problems"] == []  # the follower answered /readyz and /v1/jobs before the kill
    assert result.overbooked == [] and result.duplicates == [], (result.overbooked, result.duplicates)
    assert result.unfinished == [] and result.failed == [] and result.succeeded == 24
    assert result.operator_exits == []  # the survivor never had to restart
    assert result.samples > 20
    assert not (tmp_path / "run" / "state.json").exists()  # the cluster it started is gone
