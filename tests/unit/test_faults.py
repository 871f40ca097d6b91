"""The fault campaigns' own judges: over-booking, half-bound gangs, replicas started twice and pods on lost
nodes are found in a list of pods; bad options and unknown components are refused by name."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import typer

from leitstand.operator.cluster import controlplane
from leitstand.operator.faults import (
    FaultResult,
    _durations,
    _pick_nodes,
    bound_pods,
    burst,
    check_pods,
    duplicate_replicas,
    jobs_on,
    live_placements,
    run_restarts,
)


def pod(name: str, node: str, gpus: str, *, whole: int = 1, fraction: str | None = None, job: str | None = None,
        phase: str = "Running") -> dict[str, Any]:
    annotations = {"leitstand.dev/gpus": gpus}
    if fraction:
        annotations["leitstand.dev/gpu-fraction"] = fraction
    limits = {} if fraction else {"nvidia.com/gpu": str(whole)}
    return {
        "metadata": {"name": name, "namespace": "t", "annotations": annotations,
                     "labels": {"leitstand.dev/job": job} if job else {}},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def test_two_whole_gpu_pods_on_one_index_are_found() -> None:
    findings, _ = check_pods([pod("a", "n0", "3"), pod("b", "n0", "3")], {"n0": 8})
    assert findings == ["node n0 GPU 3: 2000 milli-GPU booked by t/a, t/b"]


def test_slices_add_up_and_finished_pods_do_not_count() -> None:
    pods = [pod("a", "n0", "1", fraction="0.5"), pod("b", "n0", "1", fraction="0.5"),
            pod("c", "n0", "1", phase="Succeeded")]
    assert check_pods(pods, {"n0": 8}) == ([], set())
    findings, _ = check_pods([*pods, pod("d", "n0", "1", fraction="0.25")], {"n0": 8})
    assert findings == ["node n0 GPU 1: 1250 milli-GPU booked by t/a, t/b, t/d"]


def test_more_gpus_requested_than_the_node_has_is_found() -> None:
    findings, _ = check_pods([pod("a", "n0", "0,1,2,3,4,5,6,7", whole=8), pod("b", "n1", "0", whole=1),
                              pod("c", "n1", "1", whole=1)], {"n0": 8, "n1": 1})
    assert findings == ["node n1: pods request 2 GPUs, the node has 1 (t/b=1@0, t/c=1@1)"]


def test_a_gang_with_some_replicas_unbound_is_partial() -> None:
    bound = pod("g-x-0", "n0", "0", job="g")
    unbound = pod("g-x-1", "", "", job="g")
    unbound["spec"].pop("nodeName")
    assert check_pods([bound, unbound], {"n0": 8})[1] == {"t/g"}


def test_the_burst_is_seeded_and_mixes_shapes() -> None:
    jobs = burst(100, seed=5)
    assert jobs == burst(100, seed=5)
    shapes = {j["metadata"]["name"].rsplit("-", 1)[1] for j in jobs}
    assert shapes == {"one", "node", "pair", "quad", "half"}
    assert {j["metadata"]["namespace"] for j in jobs} == {"tenant-a", "tenant-b"}


# -- the failover, restart and node campaigns' judges -------------------------------------------------


def replica(name: str, job: str, index: int, node: str = "n0", *, phase: str = "Running",
            deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "t",
                            "labels": {"leitstand.dev/job": job, "leitstand.dev/replica": str(index),
                                       "leitstand.dev/role": "replica"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def test_two_live_pods_for_one_replica_are_a_duplicate() -> None:
    pods = [replica("g-aaaaa-0", "g", 0), replica("g-aaaaa-1", "g", 1), replica("g-bbbbb-0", "g", 0, "n1")]
    assert duplicate_replicas(pods) == ["t/g replica 0: g-aaaaa-0, g-bbbbb-0"]


def test_a_replica_re_created_after_its_old_pod_is_deleting_or_failed_is_no_duplicate() -> None:
    pods = [replica("g-aaaaa-0", "g", 0, deleting=True), replica("g-bbbbb-0", "g", 0),
            replica("h-aaaaa-0", "h", 0, phase="Failed"), replica("h-bbbbb-0", "h", 0)]
    assert duplicate_replicas(pods) == []


def test_a_replica_that_succeeded_twice_is_a_duplicate() -> None:
    pods = [replica("g-aaaaa-0", "g", 0, phase="Succeeded"), replica("g-bbbbb-0", "g", 0, phase="Succeeded")]
    assert duplicate_replicas(pods) == ["t/g replica 0: g-aaaaa-0, g-bbbbb-0"]


def test_live_placements_leave_out_finished_and_deleting_pods() -> None:
    pods = [replica("a-0", "a", 0, "n0"), replica("b-0", "b", 0, "n1", phase="Succeeded"),
            replica("c-0", "c", 0, "n2", deleting=True)]
    assert live_placements(pods) == {"t/a-0": "n0"}
    assert bound_pods(pods) == {"t/a-0", "t/b-0", "t/c-0"}


def test_jobs_on_lost_nodes_and_the_nodes_picked_prefer_gangs_across_nodes() -> None:
    pods = [replica("g-0", "g", 0, "n0"), replica("g-1", "g", 1, "n1"), replica("s-0", "s", 0, "n2"),
            replica("d-0", "d", 0, "n3", phase="Succeeded")]
    assert jobs_on(pods, {"n1", "n2", "n3"}) == {"t/g": {"n1"}, "t/s": {"n2"}}
    assert set(_pick_nodes(pods, 2, random.Random(1))) == {"n0", "n1"}
    with pytest.raises(RuntimeError, match="only 3 nodes hold running pods"):
        _pick_nodes(pods, 4, random.Random(1))


def test_bad_durations_name_the_option_and_the_fix() -> None:
    assert _durations("10-30") == (10, 30)
    with pytest.raises(typer.BadParameter, match=r"LOW-HIGH, e\.g\. 10-30"):
        _durations("30")
    with pytest.raises(typer.BadParameter, match="1 <= LOW <= HIGH"):
        _durations("30-10")


def test_the_restart_campaign_refuses_other_components() -> None:
    with pytest.raises(ValueError, match="restart kube-apiserver or etcd"):
        run_restarts(components=("kube-scheduler",))


def test_restart_names_the_components_it_knows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEITSTAND_RUN", str(tmp_path / "run"))
    with pytest.raises(controlplane.ClusterError, match="the components are etcd, kube-apiserver"):
        controlplane.restart("kubelet")
    with pytest.raises(controlplane.ClusterError, match="no cluster recorded"):
        controlplane.restart("etcd")


def test_a_campaign_result_with_a_duplicate_or_a_problem_is_not_ok() -> None:
    base: dict[str, Any] = dict(campaign="x", jobs=1, succeeded=1, failed=[], unfinished=[], seconds=1.0, samples=3,
                                sample_errors=0, overbooked=[], duplicates=[], max_partial_seconds=0.0, faults=[],
                                operator_exits=[])
    assert FaultResult(**base).ok
    assert not FaultResult(**{**base, "duplicates": ["t/g replica 0: a, b"]}).ok
    assert not FaultResult(**base, extra={"problems": ["no NodeLost Event"]}).ok


def test_restart_starts_a_component_again_with_its_recorded_command_line_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    monkeypatch.setenv("LEITSTAND_RUN", str(run))
    state = controlplane.State(str(run), "https://127.0.0.1:1", {})
    state.save()
    first = controlplane._spawn(state, "kwok", ["sleep", "60"])
    last = controlplane._spawn(state, "kube-controller-manager", ["sleep", "60"])
    try:
        restarted = controlplane.restart("kwok", grace_seconds=2)
        saved = controlplane.State.load(run)
        assert saved is not None
        assert [p.name for p in saved.processes] == ["kwok", "kube-controller-manager"]  # order kept for `down`
        again = saved.processes[0]
        assert (restarted.old_pid, restarted.new_pid) == (first.pid, again.pid) and again.pid != first.pid
        assert again.args == ["sleep", "60"] and controlplane.is_running(again)
        assert not controlplane.is_running(first)
        killed = controlplane.restart("kwok", kill=True)
        assert killed.old_pid == again.pid and not controlplane.is_running(again)
    finally:
        for record in [*(controlplane.State.load(run) or state).processes, first, last]:
            controlplane.stop_process(record, grace_seconds=2)
