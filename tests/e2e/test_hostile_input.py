"""A platform engineer's bad day at small volume: tenants send malformed and hostile TrainingJobs and a
platform engineer hostile Queues, while tenant-a's ordinary jobs are being scheduled. Every malformed
object is refused at `kubectl apply` time naming its field; the hostile ones are taken in by the API
server and each ends with a status that says why it waits; `leitstand run` neither crashes nor fails a
cycle; the ordinary jobs all succeed. The campaign at volume (`leitstand bench hostile`, 1,000 + 1,000)
is run by hand for the numbers in the notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from leitstand.operator.hostile import run_hostile


def test_malformed_and_hostile_objects_beside_ordinary_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEITSTAND_RUN", str(tmp_path / "run"))
    lines: list[str] = []
    result = run_hostile(malformed_count=120, hostile_count=80, valid=8, nodes=8, settle_seconds=120,
                         timeout_seconds=240, report=lines.append)
    assert result.accepted_malformed == [] and result.unnamed == [], (result.accepted_malformed, result.unnamed)
    assert result.refused == result.refused_naming_field == 120
    assert result.hostile_accepted == 80 and not result.hostile_refused
    assert result.statuses_complete_seconds is not None, lines  # every hostile object got a status
    assert result.hostile_without_reason == [], result.hostile_without_reason
    assert sum(result.hostile_outcomes.values()) == 80, result.hostile_outcomes
    assert any(o.startswith("huge-gang -> Pending/NeverFits") for o in result.hostile_outcomes), result.hostile_outcomes
    assert any(o.startswith("unknown-queue -> Pending/UnknownQueue") for o in result.hostile_outcomes)
    assert result.operator_restarts == 0 and result.failed_cycles == 0, lines
    assert result.valid_succeeded == 16, lines
    assert not (tmp_path / "run" / "state.json").exists()  # the cluster it started is gone
