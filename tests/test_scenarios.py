"""Scenario tier: every tests/scenarios/*.yaml is loaded, run and checked against its `expect` block.

`only: fairshare` files are checked with `compute_fair_shares` alone. All other files run one cycle
(`leitstand.scheduler.cycle.run_cycle(snapshot, config) -> Plan`); a cycle module that is missing or
fails to import fails every one of them (it is never a reason to skip). The format is in
tests/scenarios/README.md.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scenarios.loader import ONLY_FAIRSHARE, Scenario, ScenarioError, load_scenario

from leitstand.scheduler.model import (
    GPU_MILLI,
    NODE_LEVEL,
    EvictionKind,
    Plan,
    SchedulerConfig,
    Snapshot,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"
SCENARIO_FILES = sorted(SCENARIO_DIR.glob("*.yaml"))
CYCLE_MODULE = "leitstand.scheduler.cycle"


def _run_cycle() -> Callable[[Snapshot, SchedulerConfig], Plan]:
    # Imported normally (no find_spec guard, no importorskip): a missing or broken cycle fails here.
    module = importlib.import_module(CYCLE_MODULE)
    run: Callable[[Snapshot, SchedulerConfig], Plan] = module.run_cycle
    return run


def test_a_cycle_that_cannot_be_imported_fails_the_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    """An import error reaches the test as an error, never as `pytest.skip` (a skipped tier hides it)."""
    monkeypatch.setitem(sys.modules, CYCLE_MODULE, None)  # what Python does for a module that failed
    with pytest.raises(ImportError):
        _run_cycle()


def test_scenarios_exist() -> None:
    assert len(SCENARIO_FILES) >= 6, f"expected scenario files in {SCENARIO_DIR}"


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.stem for p in SCENARIO_FILES])
def test_scenario(path: Path) -> None:
    scenario = load_scenario(path)
    if scenario.only == ONLY_FAIRSHARE:
        result = scenario.fair_shares()
        check_fair_shares(scenario, result.share_milli, source="compute_fair_shares")
        return
    plan = _run_cycle()(scenario.snapshot, scenario.config)
    check_plan(scenario, plan)


def check_fair_shares(scenario: Scenario, share_milli: dict[str, float], *, source: str) -> None:
    tol = scenario.expect.tolerance_gpus
    wrong = []
    for queue, want_gpus in scenario.expect.fair_share_gpus.items():
        if queue not in share_milli:
            wrong.append(f"{queue}: no fair share in the result of {source}")
            continue
        got_gpus = share_milli[queue] / GPU_MILLI
        if abs(got_gpus - want_gpus) > tol:
            wrong.append(f"{queue}: expected {want_gpus:g} GPUs, got {got_gpus:.4g}")
    all_shares = {q: round(v / GPU_MILLI, 4) for q, v in share_milli.items()}
    assert not wrong, f"{scenario.name}: fair share ({source}):\n  " + "\n  ".join(wrong) + f"\nall: {all_shares}"


def check_plan(scenario: Scenario, plan: Plan) -> None:
    snap = scenario.snapshot
    name = scenario.name
    nodes = {n.name: n for n in snap.nodes}
    pending_jobs = {j.id: j for j in snap.pending}
    running_ids = {r.job.id for r in snap.running}

    # Sanity of the plan itself, whatever the file expects.
    bound_ids = [b.job_id for b in plan.bindings]
    assert len(bound_ids) == len(set(bound_ids)), f"{name}: a job is bound twice: {bound_ids}"
    # A running job moved by consolidation is evicted (kind consolidate) and bound again in the same plan.
    moved = {e.job_id for e in plan.evictions if e.kind is EvictionKind.CONSOLIDATE}
    bindable = {**pending_jobs, **{r.job.id: r.job for r in snap.running if r.job.id in moved}}
    for b in plan.bindings:
        assert b.job_id in bindable, f"{name}: bound {b.job_id}, which is not pending"
        job = bindable[b.job_id]
        low = job.replicas if job.min_replicas is None else job.min_replicas
        assert low <= len(b.placements) <= job.replicas, (
            f"{name}: {b.job_id}: {len(b.placements)} of {job.replicas} replicas (minimum {low})"
        )
        for p in b.placements:
            assert p.node in nodes, f"{name}: {b.job_id} placed on unknown node {p.node}"
            assert len(p.gpu_indices) == job.gpus, f"{name}: {b.job_id}: {p.gpu_indices} on {p.node}"
            assert all(0 <= g < nodes[p.node].gpus for g in p.gpu_indices), f"{name}: {b.job_id}: {p}"
    for ev in plan.evictions:
        assert ev.job_id in running_ids, f"{name}: evicted {ev.job_id}, which is not running"
    check_resizes(scenario, plan)

    expect = scenario.expect
    want_bound = {b.job_id for b in expect.bound}
    got_bound = set(bound_ids)
    reasons = {p.job_id: f"{p.code}: {p.message}" for p in plan.pending}
    if got_bound != want_bound:
        missing = {j: reasons.get(j, "no pending reason given") for j in sorted(want_bound - got_bound)}
        raise AssertionError(
            f"{name}: bound jobs differ\n  expected but not bound: {missing}\n"
            f"  bound but not expected: {sorted(got_bound - want_bound)}"
        )
    bindings = {b.job_id: b for b in plan.bindings}
    for b in expect.bound:
        placements = bindings[b.job_id].placements
        for level in b.same_levels:
            index = snap.topology.level_index(level)
            domains = {p.node if level == NODE_LEVEL else nodes[p.node].topology[index] for p in placements}
            assert len(domains) == 1, f"{name}: {b.job_id} expected in one {level}, spans {sorted(domains)}"
        if b.nodes is not None:
            outside = sorted({p.node for p in placements} - b.nodes)
            assert not outside, f"{name}: {b.job_id} expected on {sorted(b.nodes)}, also on {outside}"
        if b.replicas is not None:
            assert len(placements) == b.replicas, (
                f"{name}: {b.job_id} started {len(placements)}, not {b.replicas} replicas"
            )

    want_evicted = {e.job_id: e.kind for e in expect.evicted}
    got_evicted = {e.job_id: e for e in plan.evictions}
    assert set(got_evicted) == set(want_evicted), (
        f"{name}: evictions differ: expected {sorted(want_evicted)}, got "
        + str({j: f"{e.kind.value} for {e.for_job}: {e.reason}" for j, e in got_evicted.items()})
    )
    for job_id, kind in want_evicted.items():
        if kind is not None:
            got = got_evicted[job_id].kind
            assert got == kind, f"{name}: {job_id} expected evicted by {kind.value}, got {got.value}"

    for job_id, code in expect.pending.items():
        assert job_id not in got_bound, f"{name}: {job_id} expected pending ({code}) but was bound"
        got_code = next((p.code for p in plan.pending if p.job_id == job_id), None)
        assert got_code == code, f"{name}: {job_id} expected pending with {code}, got {reasons.get(job_id)}"

    if expect.fair_share_gpus:
        check_fair_shares(scenario, dict(plan.fair_share_milli), source="run_cycle")
    for model, want in expect.model_fair_share_gpus.items():
        got = plan.model_fair_share_milli.get(model)
        assert got is not None, (
            f"{name}: no fair share of GPU model {model} in the plan: {sorted(plan.model_fair_share_milli)}"
        )
        wrong = {
            q: round(got[q] / GPU_MILLI, 4)
            for q, v in want.items()
            if abs(got[q] / GPU_MILLI - v) > expect.tolerance_gpus
        }
        assert not wrong, f"{name}: fair share of {model} differs for {wrong}; expected {want}"


def check_resizes(scenario: Scenario, plan: Plan) -> None:
    """Shrinks and growths: only of running elastic jobs, never below the minimum or above full size,
    never on a GPU the job did not hold (shrink); and exactly the ones the file expects."""
    name = scenario.name
    running = {r.job.id: r for r in scenario.snapshot.running}
    evicted = {e.job_id for e in plan.evictions}
    for s in plan.shrinks:
        held = running.get(s.job_id)
        assert held is not None and held.job.min_replicas is not None, f"{name}: shrank {s.job_id}, not running elastic"
        assert s.job_id not in evicted, f"{name}: {s.job_id} both shrunk and evicted"
        rest = list(held.placements)
        for p in s.placements:
            assert p in rest, f"{name}: {s.job_id}: shrink removes {p}, which it does not hold"
            rest.remove(p)
        assert len(rest) >= held.job.min_replicas, (
            f"{name}: {s.job_id} shrunk to {len(rest)} replicas, below its minimum"
        )
    for g in plan.grows:
        held = running.get(g.job_id)
        assert held is not None and held.job.min_replicas is not None, f"{name}: grew {g.job_id}, not running elastic"
        assert len(held.placements) + len(g.placements) <= held.job.replicas, (
            f"{name}: {g.job_id} grown above full size"
        )
        assert g.job_id not in evicted, f"{name}: {g.job_id} both grown and evicted"
    for section, want, got in (
        ("shrunk", scenario.expect.shrunk, {s.job_id: (s.placements, s.kind) for s in plan.shrinks}),
        ("grown", scenario.expect.grown, {g.job_id: (g.placements, None) for g in plan.grows}),
    ):
        assert {w.job_id for w in want} == set(got), (
            f"{name}: {section} differ: expected {[w.job_id for w in want]}, got {sorted(got)}"
        )
        for w in want:
            placements, kind = got[w.job_id]
            if w.replicas is not None:
                assert len(placements) == w.replicas, (
                    f"{name}: {w.job_id} {section} by {len(placements)}, not {w.replicas}"
                )
            if w.kind is not None:
                assert kind == w.kind, f"{name}: {w.job_id} {section} by {kind}, not {w.kind.value}"


# --- the loader's own error messages ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("queues: []\nexpect: {}\nbogus: 1\n", r"bad\.yaml: unknown key\(s\) bogus"),
        (
            "only: fairshare\ncluster: {capacity_gpus: 8}\nqueues: [{name: a, quota: many}]\n"
            "expect: {fair_share: {a: 1}}\n",
            r"bad\.yaml: queues\[0\]\.quota: expected a number, got 'many'",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\npending: [{id: p, queue: nope}]\nexpect: {}\n",
            r"pending\[0\]\.queue: queue 'nope' is not defined",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\n"
            "running: [{id: r, queue: a, gpus: 8, placement: [{node: n7}]}]\nexpect: {}\n",
            r"running\[0\]\.placement\[0\]\.node: unknown node 'n7'",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\npending: [{id: p, queue: a}]\n"
            "expect: {bound: [{id: p, same_row: true}]}\n",
            r"expect\.bound\[0\]: unknown key\(s\) same_row",
        ),
        (
            "only: fairshare\ncluster: {capacity_gpus: 8}\nqueues: [{name: a}]\n"
            "expect: {bound: [], fair_share: {a: 0}}\n",
            r"`only: fairshare` runs no cycle: drop bound",
        ),
        (
            "cluster: {nodes: [{count: 2}]}\nqueues: [{name: a}]\n"
            "pending: [{id: p, queue: a, allowed_nodes: [n1, n9, gpu-0]}]\nexpect: {}\n",
            r"pending\[0\]\.allowed_nodes: unknown node\(s\) 'gpu-0', 'n9' \(nodes: n0, n1\)",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\n"
            "pending: [{id: p, queue: a, jurisdiction: de, jurisdictions: [fr]}]\nexpect: {}\n",
            r"pending\[0\]\.jurisdictions: give jurisdiction \(one\) or jurisdictions \(a list\), not both",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\n"
            "pending: [{id: p, queue: a, replicas: 2, min_replicas: 3}]\nexpect: {}\n",
            r"pending\[0\]\.min_replicas: expected at most replicas \(2\), got 3",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\n"
            "running: [{id: r, queue: a, gpus: 1, replicas: 4, min_replicas: 2, placement: [{node: n0}]}]\n"
            "expect: {}\n",
            r"running\[0\]\.placement: 2 to 4 replica\(s\) but 1 placement entries",
        ),
        (
            "cluster: {nodes: [{count: 1}]}\nqueues: [{name: a}]\npending: [{id: p, queue: a}]\n"
            "expect: {shrunk: [{id: p, kind: consolidate}]}\n",
            r"expect\.shrunk\[0\]\.kind: expected reclaim or preempt, got 'consolidate'",
        ),
    ],
)
def test_loader_errors_name_the_file_and_field(tmp_path: Path, text: str, match: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ScenarioError, match=match):
        load_scenario(bad)


def test_loader_reads_eligibility_keys(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "cluster: {nodes: [{count: 2}]}\nqueues: [{name: a}]\n"
        "pending: [{id: p, queue: a, allowed_nodes: [n1], jurisdictions: [de, fr]},"
        " {id: q, queue: a, jurisdiction: de}, {id: r, queue: a}]\nexpect: {}\n"
    )
    p, q, r = load_scenario(path).snapshot.pending
    assert p.allowed_nodes == {"n1"} and p.jurisdictions == {"de", "fr"}
    assert q.allowed_nodes is None and q.jurisdictions == {"de"}
    assert r.allowed_nodes is None and r.jurisdictions == frozenset()
