"""The contended-cycle benchmark builds what it says and reports what each phase did (no timings
are asserted: speed is printed by `leitstand bench core`, not tested)."""

from __future__ import annotations

from leitstand.scheduler.bench import make_contended_snapshot, run_contended_cycle_bench


def test_contended_snapshot_is_busy_and_layered() -> None:
    snap = make_contended_snapshot(n_gpus=8192, pending=300, seed=3)
    leaves = [q for q in snap.queues if "-p-" in q.name]
    assert len(leaves) == 200
    inner = {q.name for q in snap.queues} - {q.name for q in leaves}
    assert all(q.parent in inner for q in leaves)
    assert all(q.parent is None or q.parent.startswith("dept-") for q in snap.queues if q.name in inner)
    held = sum(r.job.gpu_milli_total for r in snap.running) / (8192 * 1000)
    assert 0.85 < held < 0.95
    assert len(snap.pending) == 300
    kinds = {j.queue.split("-p-")[1] for j in snap.pending}
    assert len(kinds) > 1


def test_contended_bench_reports_phases_and_counts() -> None:
    out = run_contended_cycle_bench(n_gpus=8192, pending=300, seed=3, repeats=1)
    assert set(out["phase_seconds"]) >= {"allocate", "reclaim", "preempt", "consolidate", "total"}
    assert set(out["phase_cpu_seconds"]) >= {"allocate", "reclaim", "preempt", "consolidate"}
    assert out["cpu_seconds"] > 0 and out["warm_cpu_seconds"] > 0  # both kinds of cycle were run
    for phase in ("reclaim", "preempt"):
        assert out[phase]["searches"] >= out[phase].get("search_failures", 0)
    assert out["allocate"]["bound"] > 0
    assert out["reclaim"]["bound"] > 0 and out["reclaim"]["evicted"] > 0  # reclaim acts on this state
    assert out["preempt"]["bound"] > 0 and out["preempt"]["evicted"] > 0  # and so does preemption
    waiting = sum(out["pending_by_reason"].values())
    bound = out["allocate"]["bound"] + out["reclaim"]["bound"] + out["preempt"]["bound"] + out["consolidate"]["bound"]
    assert waiting + bound == out["pending_jobs"]
    memory = out["memory_mib"]
    assert memory["process_resident"] > 0  # Linux /proc, as on every machine this runs on
    assert memory["snapshot_and_state"] >= 0
