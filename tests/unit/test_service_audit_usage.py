"""The audit trail and the GPU-hour meter, without a cluster."""

from __future__ import annotations

import pytest

from leitstand.operator.service.audit import DecisionLog
from leitstand.operator.service.usage import UsageMeter


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


def test_usage_totals_continue_from_the_queue_status_after_a_restart() -> None:
    meter = UsageMeter(started=100.0)
    meter.seed("qa", 3600.0)
    meter.seed("qa", 99.0)  # only the first seed counts
    meter.tick(100.0, {("qa", "a"): 1000})
    meter.tick(160.0, {})
    assert meter.totals["qa"] == pytest.approx(3660.0)


def test_decayed_usage_halves_after_a_half_life() -> None:
    meter = UsageMeter(started=0.0)
    meter.tick(0.0, {("qa", "a"): 1000}, half_life_seconds=100)
    meter.tick(10.0, {}, half_life_seconds=100)
    before = meter.decayed_milli_seconds()["qa"]
    meter.tick(110.0, {}, half_life_seconds=100)
    assert meter.decayed_milli_seconds()["qa"] == pytest.approx(before / 2)
