"""Streams for the replay simulator (leitstand.scheduler.sim.workloads) and the cycle behind the seam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import make_job, make_node, make_queue

from leitstand.scheduler.sim.replay import CycleScheduler, GreedyScheduler, Task, Workload, cycle_config, replay
from leitstand.scheduler.sim.workloads import _gang, offered_load, openb_workload, philly_workload


def write_openb(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn-0,64000,262144,2,T4\nn-1,64000,262144,4,T4\n")
    pods = tmp_path / "openb_pod_list_tiny.csv"
    rows = [
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"
    ]
    for i in range(12):
        qos = "BE" if i % 3 == 0 else "LS"
        milli = 1000 if i % 2 else 500
        rows.append(f"p-{i:02d},4000,1024,1,{milli},,{qos},Running,{100 * (11 - i)},{100 * (11 - i) + 60 + 10 * i},0")
    pods.write_text("\n".join(rows) + "\n")
    return pods, nodes


def test_openb_stream_hits_the_offered_load_in_trace_order_and_is_seeded(tmp_path: Path) -> None:
    pods, nodes = write_openb(tmp_path)
    a = openb_workload(pods, nodes, load=0.9, window_seconds=600.0, seed=7)
    b = openb_workload(pods, nodes, load=0.9, window_seconds=600.0, seed=7)
    c = openb_workload(pods, nodes, load=0.9, window_seconds=600.0, seed=8)
    assert [t.arrival_seconds for t in a.tasks] == [t.arrival_seconds for t in b.tasks]
    assert [t.arrival_seconds for t in a.tasks] != [t.arrival_seconds for t in c.tasks]
    assert a.params["offered_load"] == pytest.approx(0.9, rel=1e-3)
    # trace order is creation time: p-11 was created first; the trace cycles with "#k" suffixes
    assert [t.job.id for t in a.tasks[:2]] == ["p-11", "p-10"]
    assert a.tasks[12].job.id == "p-11#1"
    assert a.tasks[0].duration_seconds == 60 + 110
    assert {t.job.id: t.job.preemptible for t in a.tasks[:12]}["p-09"] is True  # BE
    assert {t.job.id: t.job.preemptible for t in a.tasks[:12]}["p-10"] is False  # LS
    arrivals = np.array([t.arrival_seconds for t in a.tasks])
    durations = np.array([t.duration_seconds for t in a.tasks])
    milli = np.array([t.job.gpu_milli_total for t in a.tasks], dtype=np.float64)
    assert offered_load(arrivals, durations, milli, 6000.0) == pytest.approx(0.9, rel=1e-2)


def test_philly_gangs_and_queues(tmp_path: Path) -> None:
    assert _gang(4, 8) == (1, 4)
    assert _gang(16, 8) == (2, 8)
    assert _gang(12, 8) == (3, 4)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-02 00:00:00,3600,8,28800,vc-a\n"
        "2017-10-02 00:10:00,600,1,600,vc-b\n"
        "2017-10-02 01:00:00,1200,16,19200,vc-a\n"
        "2017-10-05 00:00:00,60,1,60,vc-c\n"
    )
    machines = tmp_path / "machines.csv"
    machines.write_text(",machineId,number of GPUs\n0,m0,8\n1,m1,8\n2,m2,4\n3,m3,0\n")
    w = philly_workload(jobs, machines, start="2017-10-02", days=1.0, load=None)
    assert [t.arrival_seconds for t in w.tasks] == [0.0, 600.0, 3600.0]
    assert (w.tasks[2].job.replicas, w.tasks[2].job.gpus) == (2, 8)
    assert sorted(q.name for q in w.queues) == ["vc-a", "vc-b"]
    assert sum(q.quota_milli for q in w.queues) <= 20_000
    r = replay(w, GreedyScheduler("bestfit"))
    assert r.finished == 3 and set(r.queues) == {"vc-a", "vc-b"}


def test_cycle_scheduler_behind_the_seam() -> None:
    w = Workload(
        name="cycle",
        nodes=(make_node("n0", 1),),
        queues=(make_queue("a", quota_gpus=1),),
        tasks=(
            Task(make_job("a", gpus=1, preemptible=False), 0.0, 100.0),
            Task(make_job("b", gpus=1, preemptible=False), 10.0, 50.0),
        ),
    )
    r = replay(w, CycleScheduler(w.nodes, w.queues, cycle_config(policy="leitstand", consolidation=True)))
    assert r.waits_seconds == (0.0, 90.0)
    assert r.end_seconds == 150.0
