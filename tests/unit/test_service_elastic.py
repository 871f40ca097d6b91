"""An elastic TrainingJob (`spec.minReplicas` below `spec.replicas`) in the operator's loop, without a
cluster: it starts with the replicas that fit, runs at that size, gets a replica when a node appears,
loses one to a shrink and keeps running with the rest, then succeeds. The pods the binder creates
are fed back to the cache as the informer would show them (bound, then Running, then Succeeded)."""

from __future__ import annotations

from typing import Any

import pytest
from test_api import NOW, node_json, rfc3339, tj_json
from test_service_followup import FakeApiServer, run, world

from leitstand.operator.service.cache import ClusterCache
from leitstand.operator.service.jobs import SpecError, parse_trainingjob
from leitstand.operator.service.loop import CycleReport, Scheduler, tj_path
from leitstand.operator.service.records import node_record, pod_record
from leitstand.scheduler.model import EvictionKind, JobId, NodeName, Plan, ReplicaPlacement, Shrink

KEY = "team/elastic"
PATH = tj_path("team", "elastic")


def created(api: FakeApiServer) -> list[dict[str, Any]]:
    return [body for method, path, body in api.calls if method == "POST" and path.endswith("/pods")]


def show(cache: ClusterCache, manifest: dict[str, Any], phase: str = "Running") -> None:
    """The informer shows a created pod: bound where it was planned, in `phase`."""
    raw = {**manifest, "metadata": {**manifest["metadata"], "uid": f"uid-{manifest['metadata']['name']}",
                                    "creationTimestamp": rfc3339(NOW)}}
    raw["spec"] = {**manifest["spec"], "nodeName": manifest["metadata"]["annotations"]["leitstand.dev/node"]}
    raw["status"] = {"phase": phase, "startTime": rfc3339(NOW)}
    if phase == "Succeeded":
        raw["status"]["containerStatuses"] = [{"name": "m", "state": {"terminated": {
            "exitCode": 0, "reason": "Completed", "finishedAt": rfc3339(NOW + 60)}}}]
    record = pod_record(raw)
    assert record is not None
    old = cache.pods.get(record.key)
    cache.on_pod("MODIFIED" if old else "ADDED", record.key, old, record)


def step(scheduler: Scheduler, clock: list[float], seconds: float = 1.0) -> None:
    def body() -> None:
        clock[0] += seconds
        scheduler.cycle()
    run(body)


def test_an_elastic_job_starts_at_what_fits_grows_on_a_new_node_and_keeps_running_when_shrunk() -> None:
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "elastic", "team", replicas=3, gpus=8, minReplicas=1))

    step(scheduler, clock)  # two 8-GPU nodes: 2 of its 3 replicas fit, and it needs only 1
    first = created(api)
    assert len(first) == 2
    assert scheduler.book.desired[PATH]["reason"] == "Admitted"
    for manifest in first:
        show(cache, manifest)
    step(scheduler, clock)
    status = scheduler.book.desired[PATH]
    assert status["phase"] == "Running" and status["replicas"] == 2
    assert status["message"] == "2 of 3 replicas running (elastic, at least 1)"

    node = node_record(node_json("b200-0002"))  # a node joins: the job grows on it
    assert node is not None
    cache.on_node("ADDED", node.name, None, node)
    step(scheduler, clock)
    grown = created(api)[2:]
    assert len(grown) == 1
    assert grown[0]["metadata"]["labels"]["leitstand.dev/replica"] == "2"  # the lowest index not in use
    assert grown[0]["metadata"]["annotations"]["leitstand.dev/node"] == "b200-0002"
    assert grown[0]["metadata"]["name"].rsplit("-", 2)[1] != first[0]["metadata"]["name"].rsplit("-", 2)[1]
    assert [d.kind for d in scheduler.decisions.query(job=KEY)][-1] == "grow"
    assert scheduler.book.desired[PATH]["phase"] == "Running"  # never back to Pending while it grows
    show(cache, grown[0])
    step(scheduler, clock)
    assert scheduler.book.desired[PATH]["replicas"] == 3

    # Reclaim takes the replica on b200-0002 (the plan names its placement); the other two keep running.
    gone = next(p for p in cache.job_pods(KEY).values() if p.node == "b200-0002")
    shrink = Shrink(JobId(KEY), (ReplicaPlacement(NodeName("b200-0002"), tuple(range(8))),), EvictionKind.RECLAIM,
                    JobId("other/big"), "queue other is below its fair share")
    run(lambda: scheduler._apply(Plan(shrinks=(shrink,)), {}, CycleReport()))
    removals = [path for method, path, _ in api.calls if path.endswith("/eviction") or method == "DELETE"]
    assert removals == [f"/api/v1/namespaces/team/pods/{gone.name}/eviction"]
    last = [d for d in scheduler.decisions.query(job=KEY)][-1]
    assert (last.kind, last.reason, last.by, last.gpus_milli) == ("shrink", "Reclaimed", "other/big", 8000)
    cache.on_pod("DELETED", gone.key, gone, None)
    step(scheduler, clock)
    status = scheduler.book.desired[PATH]
    assert status["phase"] == "Running" and status["preemptions"] == 0  # shrunk, not evicted nor requeued
    assert [m["metadata"]["name"] for m in created(api)[:3]] == [p["metadata"]["name"] for p in first + grown]
    # The job the GPUs were taken for is not in this test, so they are free again: the job grows back.
    again = created(api)[3:]
    assert len(again) == 1 and again[0]["metadata"]["annotations"]["leitstand.dev/node"] == "b200-0002"
    show(cache, again[0])
    step(scheduler, clock)
    assert scheduler.book.desired[PATH]["replicas"] == 3

    for pod in list(cache.job_pods(KEY).values()):  # all three finish
        manifest = next(m for m in created(api) if m["metadata"]["name"] == pod.name)
        show(cache, manifest, "Succeeded")
    step(scheduler, clock)
    status = scheduler.book.desired[PATH]
    assert (status["phase"], status["message"]) == ("Succeeded", "all 3 replicas succeeded")


def test_a_rigid_gang_still_waits_for_all_its_replicas() -> None:
    api = FakeApiServer()
    scheduler, _cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "rigid", "team", replicas=3, gpus=8))
    step(scheduler, clock)
    assert created(api) == []
    assert scheduler.book.desired[tj_path("team", "rigid")]["phase"] == "Pending"


@pytest.mark.parametrize(("value", "words"), [(4, "more than spec.replicas (3)"), (0, "integer >= 1"),
                                               ("2", "integer >= 1")])
def test_a_wrong_minimum_names_the_field_and_the_fix(value: Any, words: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_trainingjob(tj_json("team", "bad", "team", replicas=3, minReplicas=value), ("rack",))
    assert "spec.minReplicas" in str(error.value) and words in str(error.value), error.value
