"""The crash campaign's own judge: over-booking and half-bound gangs are found in a list of pods."""

from __future__ import annotations

from typing import Any

from leitstand.operator.faults import burst, check_pods


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
