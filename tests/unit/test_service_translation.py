"""The operator's translation layer, without a cluster: raw API JSON → slim records → the core's values,
node eligibility, replica pod manifests, and the cache's accounting rules (docs/operator.md)."""

from __future__ import annotations

from typing import Any

import pytest

from leitstand.operator.service.cache import Charge, ClusterCache
from leitstand.operator.service.eligibility import ConstraintError, Eligibility, node_allowed
from leitstand.operator.service.jobs import (
    PriorityClassInfo,
    SpecError,
    core_job,
    new_attempt,
    parse_queue,
    parse_trainingjob,
    replica_pod,
    replica_pod_name,
)
from leitstand.operator.service.records import (
    NodeLabels,
    cpu_milli,
    memory_mib,
    node_record,
    pod_record,
    quantity,
)
from leitstand.operator.service.status import set_condition
from leitstand.scheduler.model import GPU_MILLI, NodeName, ReplicaPlacement, Topology

LEVELS = ("spine", "rack", "nvlink-domain")


def node_json(name: str = "b200-0000", gpus: str = "8", *, ready: bool = True, taints: list[Any] | None = None,
              unschedulable: bool = False, rack: str = "rack-001", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {
            "leitstand.dev/spine": "spine-00", "leitstand.dev/rack": rack, "leitstand.dev/nvlink-domain": "nvl-1",
            "nvidia.com/gpu.product": "NVIDIA-B200", "leitstand.dev/node-pool": "b200",
            "leitstand.dev/jurisdiction": "eu-de", **labels}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": "224", "memory": "2Ti", "nvidia.com/gpu": gpus},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                   "lastHeartbeatTime": "2026-12-05T20:00:00Z"}]},
    }


def tj_json(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"queue": "team-a", "template": {"spec": {"containers": [
        {"name": "main", "image": "x", "resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}]}}}
    base.update(spec)
    return {"metadata": {"name": "train", "namespace": "team-a", "uid": "u-1",
                         "creationTimestamp": "2026-12-05T20:00:00Z"}, "spec": base}


# -- quantities and records ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("2Gi", 2 * 2**30),
                                             ("1e3", 1000.0), ("64Mi", 64 * 2**20), (8, 8.0)])
def test_quantities(text: Any, value: float) -> None:
    assert quantity(text) == pytest.approx(value)


def test_cpu_and_memory_units() -> None:
    assert cpu_milli("224") == 224_000 and cpu_milli("250m") == 250
    assert memory_mib("2Ti") == 2 * 1024 * 1024 and memory_mib("512M") == 488


def test_a_heartbeat_does_not_change_the_node_record() -> None:
    before = node_json()
    after = node_json()
    after["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-12-05T20:00:20Z"
    assert node_record(before) == node_record(after)


def test_node_record_reads_capacity_labels_and_readiness() -> None:
    record = node_record(node_json(ready=False))
    assert record is not None
    node = record.node
    assert (node.gpus, node.cpu_milli, node.gpu_model, node.node_pool, node.jurisdiction) == (
        8, 224_000, "NVIDIA-B200", "b200", "eu-de")
    assert node.topology == ("spine-00", "rack-001", "nvl-1") and not node.schedulable
    cordoned = node_record(node_json(unschedulable=True))
    assert cordoned is not None and not cordoned.node.schedulable
    custom = node_record(node_json(zone="z1"), NodeLabels(topology=("zone",)))
    assert custom is not None and custom.node.topology == ("z1",)


def test_pod_record_of_a_replica_pod() -> None:
    raw = {
        "metadata": {"name": "train-abcde-0", "namespace": "team-a", "uid": "p1",
                     "labels": {"leitstand.dev/job": "train", "leitstand.dev/queue": "team-a",
                                "leitstand.dev/role": "replica", "leitstand.dev/replica": "0"},
                     "annotations": {"leitstand.dev/gpus": "2,3", "leitstand.dev/node": "n1"},
                     "ownerReferences": [{"kind": "TrainingJob", "uid": "u-1"}]},
        "spec": {"schedulerName": "leitstand", "nodeName": "n1", "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "4"}}}]},
        "status": {"phase": "Running", "startTime": "2026-12-05T20:00:05Z"},
    }
    pod = pod_record(raw)
    assert pod is not None
    assert (pod.job, pod.owner_uid, pod.node, pod.gpus, pod.assigned, pod.cpu_milli) == (
        "train", "u-1", "n1", 2, (2, 3), 4000)
    assert pod.holds_resources and pod.gpu_milli == GPU_MILLI and pod.started > 0


def test_pod_record_of_a_fraction_and_of_a_finished_pod() -> None:
    raw = {"metadata": {"name": "nb", "namespace": "t", "annotations": {"leitstand.dev/gpu-fraction": "0.25"}},
           "spec": {"nodeName": "n0", "containers": [{}]},
           "status": {"phase": "Succeeded", "containerStatuses": [
               {"name": "main", "state": {"terminated": {"exitCode": 0, "finishedAt": "2026-12-05T20:01:00Z"}}}]}}
    pod = pod_record(raw)
    assert pod is not None and pod.fraction_milli == 250 and pod.gpus == 0 and pod.gpu_milli == 250
    assert pod.terminal and not pod.holds_resources and pod.finished > 0


# -- eligibility ----------------------------------------------------------------------------------


def test_node_selector_affinity_and_taints() -> None:
    gpu = node_record(node_json("g", accelerator="b200"))
    tainted = node_record(node_json("t", taints=[{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]))
    assert gpu is not None and tainted is not None
    assert node_allowed(gpu, {"nodeSelector": {"accelerator": "b200"}})
    assert not node_allowed(tainted, {"nodeSelector": {"accelerator": "b200"}})
    assert not node_allowed(tainted, {})
    assert node_allowed(tainted, {"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    assert node_allowed(tainted, {"tolerations": [{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]})
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "leitstand.dev/rack", "operator": "In", "values": ["rack-009"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["g"]}]},
    ]}}}
    assert node_allowed(gpu, {"affinity": affinity})
    assert not node_allowed(tainted, {"affinity": affinity, "tolerations": [{"operator": "Exists"}]})


def test_an_unknown_operator_is_an_error_naming_the_field() -> None:
    node = node_record(node_json())
    assert node is not None
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Near"}]}]}}}}
    with pytest.raises(ConstraintError, match=r"nodeSelectorTerms\[0\]\.matchExpressions\[0\]: unknown operator"):
        node_allowed(node, spec)


def test_eligibility_is_none_without_constraints_and_shared_per_key() -> None:
    nodes = [r for r in (node_record(node_json("a", accelerator="x")), node_record(node_json("b"))) if r]
    eligibility = Eligibility()
    eligibility.set_nodes(nodes)
    assert eligibility.allowed({}, "k0") is None
    spec = {"nodeSelector": {"accelerator": "x"}}
    first = eligibility.allowed(spec, "k1")
    assert first == frozenset({NodeName("a")}) and eligibility.allowed(spec, "k1") is first


# -- TrainingJobs and Queues ---------------------------------------------------------------------


def test_a_training_job_becomes_a_core_job() -> None:
    spec = parse_trainingjob(tj_json(replicas=4, gpus=8, topology={"required": "rack"}, gpuModel="NVIDIA-B200",
                                     dataResidency=["eu-de", "eu-fr"], maxRuntimeSeconds=3600), LEVELS)
    assert (spec.replicas, spec.gpus, spec.gpu_milli, spec.cpu_milli, spec.memory_mib) == (4, 8, 1000, 8000, 65536)
    job = core_job(spec, PriorityClassInfo(50, None), queued_at=10.0, allowed_nodes=None)
    assert job.id == "team-a/train" and job.required_level == "rack" and job.is_preemptible
    assert job.jurisdictions == {"eu-de", "eu-fr"} and job.gpu_models == {"NVIDIA-B200"}
    assert job.gpu_milli_total == 32 * GPU_MILLI
    build = core_job(spec, PriorityClassInfo(100, False), queued_at=10.0, allowed_nodes=None)
    assert not build.is_preemptible


@pytest.mark.parametrize(("spec", "field"), [
    ({"gpus": 1, "gpuFraction": 0.5}, "spec.gpuFraction"),
    ({"gpuFraction": 1.5}, "spec.gpuFraction"),
    ({"topology": {"required": "row"}}, "spec.topology.required"),
    ({"replicas": 0}, "spec.replicas"),
    ({"queue": ""}, "spec.queue"),
    ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers"),
])
def test_an_unusable_spec_names_its_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_trainingjob(tj_json(**spec), LEVELS)
    assert caught.value.field == field and str(caught.value).startswith(field)


def test_queue_amounts_are_exact_milli_gpus_and_unset_limit_means_no_cap() -> None:
    q = parse_queue({"metadata": {"name": "sme"}, "spec": {"gpu": {"quota": 2.5, "overQuotaWeight": 2},
                                                           "namespaces": ["a"]}})
    assert (q.queue.quota_milli, q.queue.limit_milli, q.queue.over_quota_weight) == (2500, None, 2.0)
    assert q.namespaces == {"a"}


def test_queue_quota_per_gpu_model() -> None:
    q = parse_queue({"metadata": {"name": "lab"}, "spec": {"gpu": {"quota": 24, "models": {
        "NVIDIA-B200": {"quota": 16, "limit": 24}, "NVIDIA-H100": {"quota": 8, "overQuotaWeight": 2}}}}})
    b200, h100 = q.queue.model_quotas
    assert (b200.model, b200.quota_milli, b200.limit_milli, b200.over_quota_weight) == ("NVIDIA-B200", 16e3, 24e3, None)
    assert (h100.model, h100.quota_milli, h100.limit_milli, h100.over_quota_weight) == ("NVIDIA-H100", 8e3, None, 2.0)
    with pytest.raises(SpecError, match=r"spec\.gpu\.models\.NVIDIA-B200\.quota: must be >= 0"):
        parse_queue({"metadata": {"name": "lab"}, "spec": {"gpu": {"models": {"NVIDIA-B200": {"quota": -1}}}}})
    with pytest.raises(SpecError, match=r"spec\.gpu\.models: expected a map"):
        parse_queue({"metadata": {"name": "lab"}, "spec": {"gpu": {"models": ["NVIDIA-B200"]}}})


def test_replica_pods_carry_placement_owner_and_whole_gpus() -> None:
    spec = parse_trainingjob(tj_json(replicas=2, gpus=8), LEVELS)
    attempt = new_attempt()
    pod = replica_pod(spec, 1, ReplicaPlacement(NodeName("n3"), (0, 1, 2, 3, 4, 5, 6, 7)),
                      PriorityClassInfo(50, None), "leitstand", attempt)
    meta, pod_spec = pod["metadata"], pod["spec"]
    assert meta["name"] == replica_pod_name("train", attempt, 1) == f"train-{attempt}-1"
    assert meta["labels"]["leitstand.dev/job"] == "train" and meta["labels"]["leitstand.dev/replica"] == "1"
    assert meta["annotations"]["leitstand.dev/gpus"] == "0,1,2,3,4,5,6,7"
    assert meta["annotations"]["leitstand.dev/node"] == "n3"
    assert meta["ownerReferences"][0]["uid"] == "u-1" and meta["ownerReferences"][0]["controller"]
    assert pod_spec["schedulerName"] == "leitstand" and "nodeName" not in pod_spec
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert new_attempt() != attempt or new_attempt() != attempt  # fresh per placement


def test_a_fraction_pod_requests_no_whole_gpu() -> None:
    spec = parse_trainingjob(tj_json(gpuFraction=0.5), LEVELS)
    pod = replica_pod(spec, 0, ReplicaPlacement(NodeName("n0"), (3,)), PriorityClassInfo(50, None), "leitstand", "x")
    assert pod["metadata"]["annotations"]["leitstand.dev/gpu-fraction"] == "0.5"
    assert "nvidia.com/gpu" not in str(pod["spec"]["containers"])


# -- the cache's accounting ------------------------------------------------------------------------


def cache_with(*nodes: str) -> ClusterCache:
    cache = ClusterCache(Topology(levels=LEVELS))
    for name in nodes:
        record = node_record(node_json(name))
        assert record is not None
        cache.on_node("ADDED", name, None, record)
    cache.refresh()
    return cache


def bound_pod(name: str, node: str, gpus: str, *, scheduler: str = "leitstand", phase: str = "Running",
              planned: str = "", **extra: Any) -> Any:
    annotations = {"leitstand.dev/gpus": gpus} if gpus else {}
    if planned:
        annotations["leitstand.dev/node"] = planned
    count = len(gpus.split(",")) if gpus else extra.pop("count", 1)
    return pod_record({
        "metadata": {"name": name, "namespace": "t", "annotations": annotations},
        "spec": {"schedulerName": scheduler, "nodeName": node,
                 "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(count)}}}]},
        "status": {"phase": phase},
    })


def free(cache: ClusterCache, node: str) -> list[int]:
    index = cache.node_index(node)
    assert index is not None
    return [int(x) for x in cache.state.gpu_free_milli[index][:8]]


def test_every_bound_pod_holds_its_gpus_whoever_scheduled_it() -> None:
    cache = cache_with("n0")
    cache.on_pod("ADDED", "t/a", None, bound_pod("a", "n0", "0,1"))
    cache.on_pod("ADDED", "t/b", None, bound_pod("b", "n0", "", scheduler="default-scheduler", count=3))
    assert free(cache, "n0") == [0, 0, 0, 0, 0, 1000, 1000, 1000]
    done = bound_pod("a", "n0", "0,1", phase="Succeeded")
    cache.on_pod("MODIFIED", "t/a", cache.pods["t/a"], done)
    assert free(cache, "n0")[:2] == [1000, 1000]


def test_a_promise_holds_until_the_pod_is_bound_and_evicted_pods_stop_holding() -> None:
    cache = cache_with("n0")
    cache.assume("t/new", Charge("n0", (4,), 1000, 0, 0))
    assert free(cache, "n0")[4] == 0
    cache.on_pod("ADDED", "t/new", None, bound_pod("new", "n0", "4"))
    assert free(cache, "n0")[4] == 0  # the same charge, not a second one
    cache.release_evicted(["t/new"])
    assert free(cache, "n0")[4] == 1000
    cache.forget("t/new")
    assert free(cache, "n0")[4] == 1000


def test_an_unbound_pod_made_for_a_placement_holds_it_after_a_restart() -> None:
    cache = cache_with("n0")  # a fresh process: nothing assumed
    orphan = bound_pod("o", "", "5", planned="n0")
    cache.on_pod("ADDED", "t/o", None, orphan)
    assert free(cache, "n0")[5] == 0
    cache.on_pod("DELETED", "t/o", orphan, None)
    assert free(cache, "n0")[5] == 1000


def test_a_pod_that_does_not_fit_holds_its_node_back() -> None:
    cache = cache_with("n0", "n1")
    cache.on_pod("ADDED", "t/a", None, bound_pod("a", "n0", "0,1,2,3,4,5,6,7"))
    cache.on_pod("ADDED", "t/b", None, bound_pod("b", "n0", "3"))
    held = cache.apply_conflicts()
    assert list(held) == ["n0"] and "t/b" in held["n0"]
    assert not cache.state.schedulable[cache.node_index("n0")] and cache.state.schedulable[cache.node_index("n1")]
    cache.on_pod("DELETED", "t/b", cache.pods["t/b"], None)
    assert cache.apply_conflicts() == {} and cache.state.schedulable[cache.node_index("n0")]


def test_conditions_change_their_transition_time_only_when_status_flips() -> None:
    status: dict[str, Any] = {}
    set_condition(status, "Admitted", False, "Insufficient", "waiting")
    first = status["conditions"][0]["lastTransitionTime"]
    set_condition(status, "Admitted", False, "QueueAtLimit", "still waiting")
    assert status["conditions"][0]["lastTransitionTime"] == first
    assert status["conditions"][0]["reason"] == "QueueAtLimit" and len(status["conditions"]) == 1
