"""Smoke test of the benchmark drivers on a tiny cluster: the keys `leitstand bench core --json`
promises are there and both engines agree. Timings are printed by the CLI, never asserted."""

from __future__ import annotations

from leitstand.scheduler.bench import fill_cluster, make_cluster, make_jobs, run_core_bench


def test_cluster_generator_has_four_labelled_levels_and_fills() -> None:
    state = make_cluster(1000)
    assert state.n_nodes == 125 and state.n_levels == 4
    fill_cluster(state, 0.65)
    used = state.gpu_used_milli / state.gpu_capacity_milli
    assert 0.4 < used < 0.9
    assert len({(j.replicas, j.gpus, j.gpu_milli) for j in make_jobs(200)}) > 5


def test_run_core_bench_reports_the_promised_keys() -> None:
    result = run_core_bench((64, 128), gangs=30, cycle_jobs=40, cycle_gpus=128, reference_gangs=5, run_cycle=False)
    assert set(result["placement_us"]) == {"64", "128"}
    assert {"median", "p99"} <= set(result["placement_us"]["128"])
    assert result["placement_loop_seconds"] > 0
    assert result["reference_speedup"] > 0
    assert result["reference_identical"] is True
    assert result["score_cache_identical"] is True
