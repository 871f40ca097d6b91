"""The audit trail and the GPU-hour meter, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from leitstand.operator.service.audit import DecisionLog
from leitstand.operator.service.records import PodRecord, pod_record, timestamp
from leitstand.operator.service.usage import UsageMeter, rfc3339_precise


def decide(log: DecisionLog, t: float, kind: str, job: str, queue: str, by: str = "", by_queue: str = "") -> None:
    log.record(time=t, kind=kind, job=job, queue=queue, namespace=job.split("/")[0], reason=kind.title(),
               message="m", by=by, by_queue=by_queue)


def test_decisions_filter_and_page_in_order() -> None:
    log = DecisionLog(capacity=10)
    seen = []
    log.subscribe(seen.append)
    decide(log, 1, "admit", "a/j1", "qa")
    decide(log, 2, "reclaim", "b/j2", "qb", by="a/j3", by_queue="qa")
    decide(log, 3, "admit", "a/j3", "qa")
    assert [d.job for d in log.query(queue="qa")] == ["a/j1", "b/j2", "a/j3"]  # the other party counts too
    assert [d.job for d in log.query(namespace="b")] == ["b/j2"]
    assert [d.job for d in log.query(kind="admit", since=2)] == ["a/j3"]
    first = log.query(limit=2)
    assert [d.seq for d in first] == [1, 2] and [d.seq for d in log.query(after_seq=first[-1].seq)] == [3]
    assert [d.job for d in log.query(namespaces=frozenset({"a"}))] == ["a/j1", "a/j3"]
    assert len(seen) == 3
    for i in range(20):
        decide(log, 10 + i, "admit", f"a/x{i}", "qa")
    assert len(log) == 10  # bounded


def test_usage_integrates_allocation_over_time_per_queue_and_namespace() -> None:
    meter = UsageMeter(started=0.0)
    meter.tick(0.0, {("qa", "a"): 8000})          # 8 GPUs from t=0
    meter.tick(30.0, {("qa", "a"): 8000, ("qb", "b"): 500})
    meter.tick(90.0, {})
    assert meter.totals["qa"] == pytest.approx(8 * 90)
    assert meter.totals["qb"] == pytest.approx(0.5 * 60)
    rows = {r.key: r.gpu_seconds for r in meter.report(0.0, 120.0, by="queue")}
    assert rows == pytest.approx({"qa": 720.0, "qb": 30.0})
    by_ns = {r.key: r.gpu_hours for r in meter.report(0.0, 60.0, by="namespace")}
    assert by_ns["a"] == pytest.approx(8 * 60 / 3600)
    with pytest.raises(ValueError, match="by must be queue or namespace"):
        meter.report(0, 1, by="user")


def _pod(name: str, queue: str, *, gpus: int = 0, fraction: str | None = None, started: str | None = None,
         finished: str | None = None, phase: str = "Running", role: str = "replica", ns: str = "a") -> PodRecord:
    container: dict[str, Any] = {"name": "main", "resources": {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}}
    raw: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "uid": name, "labels": {
            "leitstand.dev/queue": queue, "leitstand.dev/role": role, "leitstand.dev/job": "j"},
            "annotations": {"leitstand.dev/gpu-fraction": fraction} if fraction else {}},
        "spec": {"nodeName": "n1", "schedulerName": "leitstand", "containers": [container]},
        "status": {"phase": phase, "startTime": started},
    }
    if finished:
        raw["status"]["containerStatuses"] = [
            {"name": "main", "state": {"terminated": {"finishedAt": finished, "reason": "Completed", "exitCode": 0}}}]
    record = pod_record(raw)
    assert record is not None
    return record


T0 = timestamp("2026-12-05T10:00:00Z")


def test_usage_resumes_from_the_queue_status_and_charges_the_gap_from_the_pods() -> None:
    """kill -9 at T0+35: the last write said 100 GPU-seconds up to T0+30; the new process ticks first at
    T0+60. A 2-GPU pod ran all along, a 1-GPU pod finished at T0+40, a half-GPU pod started at T0+50;
    the reservation pod holding the shared GPU is not charged again, nor a pod of another queue."""
    meter = UsageMeter(started=T0 + 55)
    meter.tick(T0 + 60, {("qa", "a"): 2500})
    pods = [
        _pod("long", "qa", gpus=2, started="2026-12-05T09:59:00Z"),
        _pod("short", "qa", gpus=1, started="2026-12-05T09:59:30Z", finished="2026-12-05T10:00:40Z",
             phase="Succeeded"),
        _pod("half", "qa", fraction="0.5", started="2026-12-05T10:00:50Z"),
        _pod("hold", "qa", gpus=1, started="2026-12-05T10:00:50Z", role="gpu-reservation"),
        _pod("other", "qb", gpus=8, started="2026-12-05T09:00:00Z"),
    ]
    gaps = meter.resume({"qa": {"usageGPUSeconds": 100.0, "usageUpdatedAt": "2026-12-05T10:00:30.000Z"}}, pods)
    assert gaps == pytest.approx({"qa": 2 * 30 + 1 * 10 + 0.5 * 10})
    assert meter.totals["qa"] == pytest.approx(175.0)
    assert "qb" not in meter.totals  # not resumed here: its status was not given
    assert meter.resume({"qa": {"usageGPUSeconds": 999.0}}, pods) == {}  # once per queue
    meter.tick(T0 + 120, {})
    assert meter.totals["qa"] == pytest.approx(175.0 + 2.5 * 60)
    # The per-minute history before the first tick is rebuilt from the pods' runs.
    rows = {r.key: r.gpu_seconds for r in meter.report(T0 - 60, T0 + 60, by="queue")}
    assert rows["qa"] == pytest.approx(2 * 120 + 1 * 70 + 0.5 * 10)
    assert meter.history_from == pytest.approx(T0 - 60)
    assert meter.covered_from == pytest.approx(T0 + 60)


def test_usage_of_a_queue_never_counted_is_charged_from_its_pods_starts() -> None:
    meter = UsageMeter(started=T0)
    meter.tick(T0, {})
    pods = [_pod("p", "qa", gpus=4, started="2026-12-05T09:59:00Z")]
    meter.resume({"qa": None}, pods)
    assert meter.totals["qa"] == pytest.approx(4 * 60)
    legacy = UsageMeter(started=T0)  # a total written by a version without usageUpdatedAt: no gap
    legacy.tick(T0, {})
    legacy.resume({"qa": {"usageGPUSeconds": 50.0}}, pods)
    assert legacy.totals["qa"] == pytest.approx(50.0)


def test_usage_resume_needs_the_first_tick() -> None:
    with pytest.raises(RuntimeError, match="first tick"):
        UsageMeter(started=0.0).resume({"qa": None}, [])


def test_usage_updated_at_round_trips_to_the_millisecond() -> None:
    assert timestamp(rfc3339_precise(T0 + 1.2345)) == pytest.approx(T0 + 1.234, abs=1e-6)


def test_a_window_ending_now_counts_the_current_minute_in_full() -> None:
    """The minute in progress holds only what was counted so far: a window ending now must not scale it
    down as if the whole minute had passed."""
    meter = UsageMeter(started=T0)
    meter.tick(T0, {("qa", "a"): 4000})
    meter.tick(T0 + 15, {("qa", "a"): 4000})
    assert {r.key: r.gpu_seconds for r in meter.report(T0, T0 + 15)} == pytest.approx({"qa": 60.0})
    assert {r.key: r.gpu_seconds for r in meter.report(T0 + 5, T0 + 15)} == pytest.approx({"qa": 40.0})


def test_decayed_usage_halves_after_a_half_life() -> None:
    meter = UsageMeter(started=0.0)
    meter.tick(0.0, {("qa", "a"): 1000}, half_life_seconds=100)
    meter.tick(10.0, {}, half_life_seconds=100)
    before = meter.decayed_milli_seconds()["qa"]
    meter.tick(110.0, {}, half_life_seconds=100)
    assert meter.decayed_milli_seconds()["qa"] == pytest.approx(before / 2)
