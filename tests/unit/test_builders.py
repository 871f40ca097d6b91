"""The test builders (tests/builders.py) produce the model values other tests rely on."""

from __future__ import annotations

import pytest
from builders import make_cluster, make_job, make_queue, make_running, make_snapshot

from leitstand.scheduler.model import GPU_MILLI


def test_make_cluster_fills_racks_in_order() -> None:
    nodes, topology = make_cluster(6, gpus=4, racks=2, spines=1)
    assert topology.levels == ("spine", "rack")
    assert [n.name for n in nodes] == ["n0", "n1", "n2", "n3", "n4", "n5"]
    assert [n.topology for n in nodes] == [("s0", "r0")] * 3 + [("s0", "r1")] * 3
    assert {n.gpus for n in nodes} == {4}


def test_make_cluster_spreads_racks_over_spines() -> None:
    nodes, _ = make_cluster(4, racks=2, spines=2)
    assert [n.topology for n in nodes] == [("s0", "r0"), ("s0", "r1"), ("s1", "r2"), ("s1", "r3")]


def test_make_job_whole_and_fractional() -> None:
    whole = make_job("j", gpus=8, replicas=4)
    assert whole.gpu_milli_total == 32 * GPU_MILLI
    slice_ = make_job("s", gpu=0.25, replicas=2)
    assert (slice_.gpus, slice_.gpu_milli, slice_.gpu_milli_total) == (1, 250, 500)
    with pytest.raises(ValueError, match="fraction"):
        make_job(gpu=1.5)


def test_make_queue_converts_gpus_to_milli() -> None:
    q = make_queue("p", "dept", quota_gpus=0.7, limit_gpus=2)
    assert (q.parent, q.quota_milli, q.limit_milli) == ("dept", 700, 2000)
    assert make_queue().limit_milli is None


def test_make_running_and_snapshot() -> None:
    job = make_job("r", gpus=2, replicas=2)
    running = make_running(job, [("n0", [0, 1]), ("n1", [0, 1])], started_at=5.0)
    snap = make_snapshot(running=[running], now=10.0)
    assert len(snap.nodes) == 4 and snap.topology.levels == ("spine", "rack")
    assert snap.running[0].placements[1].node == "n1"
    with pytest.raises(ValueError, match="2 replicas but 1 placements"):
        make_running(job, [("n0", [0, 1])])


def test_make_job_eligibility_arguments() -> None:
    job = make_job(jurisdiction="eu-de", jurisdictions=["eu-fr"], allowed_nodes=["n1"])
    assert job.jurisdictions == {"eu-de", "eu-fr"}
    assert job.allowed_nodes == {"n1"}
    plain = make_job()
    assert plain.jurisdictions == frozenset() and plain.allowed_nodes is None
