"""A platform engineer's control plane crashes under load: kube-apiserver, then etcd, each killed
(SIGKILL) and started again with the same flags while tenants' TrainingJobs are being scheduled (four
8-GPU nodes, so jobs still wait at every restart). Scheduling resumes by itself (a `leitstand run` that
lost its Lease while the API was away is started again, as its Deployment would be), nothing is lost —
every job ends Succeeded — and the pods on the API server never book a GPU twice nor run a replica
twice. The full campaigns, with graceful restarts (TERM, 5 s grace, then KILL:
`leitstand bench restart --component kube-apiserver --restarts 3`, `--component etcd --restarts 2`),
are run by hand for the numbers in docs/faults.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from leitstand.operator.faults import run_restarts


def test_scheduling_resumes_after_kube_apiserver_and_etcd_restarts_and_loses_no_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEITSTAND_RUN", str(tmp_path / "run"))
    lines: list[str] = []
    result = run_restarts(components=("kube-apiserver", "etcd"), restarts=2, kill=True, jobs=24, seed=3, nodes=4,
                          seconds=(5, 10), gap_seconds=(2.0, 4.0), timeout_seconds=300, report=lines.append)
    assert [f["component"] for f in result.faults] == ["kube-apiserver", "etcd"], lines
    for restart in result.faults:
        assert restart["first_bind_after_seconds"] is not None, (restart, lines)  # pods bound again after it
    assert result.overbooked == [] and result.duplicates == [], (result.overbooked, result.duplicates)
    assert result.unfinished == [] and result.failed == [], (result.unfinished, result.failed)
    assert result.succeeded == 24
    # each component was really down (its process gone, then started again); the sampler may or may not
    # catch an etcd restart of 0.4 s between two of its looks, so its errors are not the proof
    assert all(restart["down_seconds"] > 0 for restart in result.faults), result.faults
    assert result.samples > 20  # the sampler looked many times
    assert not (tmp_path / "run" / "state.json").exists()
