"""The read API (operator/api) against a real `Scheduler`, fed with records and run for two cycles —
no cluster. Every endpoint, its filters and pages, the 4xx bodies; who may see what is in
test_api_auth.py, the OpenAPI property tests in test_api_schema.py, the terminal commands in
test_api_cli.py (all three build their world with `make_world` from here).

The world (`make_world`): six nodes — b200-0000/0001 in rack-000, b200-0002/0003 in rack-001 (8 GPUs
each), l40s-0000/0001 in rack-002 (2 GPUs, pool l40s, eu-fr) — and the queue tree

    org (quota 32)
      tenant-a   quota 8, limit 8   namespaces [tenant-a]
      tenant-b   quota 16           namespaces [tenant-b]
    open         quota 0            (any namespace)

with the TrainingJobs tenant-a/run-1 (8 GPUs, running on b200-0000, its pod in the cache),
tenant-a/wait-1 (8 GPUs, waits: tenant-a at its limit), tenant-b/big (2 × 8 in one rack: admitted in
the first cycle), tenant-b/bad (an unknown topology level: InvalidSpec) and tenant-b/frac (half a
GPU: admitted). The clock then moves 600 s and a second cycle runs, so tenant-a has used 8 GPUs for
600 s. A reclaim of run-1 by tenant-b/big is added to the audit trail for the history.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from leitstand.operator.api.app import LEADING_HEADER, create_app
from leitstand.operator.api.auth import Authorizer, Check, Identity
from leitstand.operator.service.cache import ClusterCache
from leitstand.operator.service.config import ApiSettings, ServiceConfig
from leitstand.operator.service.jobs import PriorityClassInfo
from leitstand.operator.service.loop import Scheduler
from leitstand.operator.service.records import node_record, pod_record
from leitstand.operator.service.status import rfc3339

with warnings.catch_warnings():
    # starlette's TestClient asks for httpx2 (not installed); httpx works and is what the project pins
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW = 1_800_000_000.0
ADMIN = {"Authorization": "Bearer admin-token"}


# -- the world --------------------------------------------------------------------------------------------


class NoApiServer:
    """The loop's writes (pods, binds, statuses, Events) go nowhere: every request is accepted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.calls.append((method, path))
        return 201, {}


def node_json(name: str, gpus: int = 8, rack: str = "rack-000", model: str = "NVIDIA-B200", pool: str = "b200",
              jurisdiction: str = "eu-de") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {
        "leitstand.dev/spine": "spine-00", "leitstand.dev/rack": rack, "leitstand.dev/nvlink-domain": f"nvl-{name}",
        "nvidia.com/gpu.product": model, "leitstand.dev/node-pool": pool, "leitstand.dev/jurisdiction": jurisdiction}},
        "spec": {},
        "status": {"allocatable": {"cpu": "224", "memory": "2Ti", "nvidia.com/gpu": str(gpus)},
                   "conditions": [{"type": "Ready", "status": "True"}]}}


def queue_json(name: str, parent: str | None = None, namespaces: list[str] | None = None,
               **gpu: float) -> dict[str, Any]:
    spec: dict[str, Any] = {"gpu": gpu}
    if parent:
        spec["parent"] = parent
    if namespaces is not None:
        spec["namespaces"] = namespaces
    return {"metadata": {"name": name, "uid": f"q-{name}"}, "spec": spec}


def tj_json(namespace: str, name: str, queue: str, *, replicas: int = 1, gpus: int = 8, created: float = NOW - 300,
            **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"queue": queue, "replicas": replicas,
                            "template": {"spec": {"containers": [{"name": "m", "image": "x"}]}}}
    if "gpuFraction" not in spec:
        body["gpus"] = gpus
    body.update(spec)
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "creationTimestamp": rfc3339(created)}, "spec": body}


def replica_pod_json(namespace: str, job: str, replica: int, node: str, gpus: list[int], queue: str,
                     owner_uid: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{job}-abcde-{replica}", "namespace": namespace, "uid": f"pod-{job}-{replica}",
                         "creationTimestamp": rfc3339(NOW - 200),
                         "labels": {"leitstand.dev/job": job, "leitstand.dev/queue": queue,
                                    "leitstand.dev/role": "replica", "leitstand.dev/replica": str(replica)},
                         "annotations": {"leitstand.dev/gpus": ",".join(map(str, gpus)), "leitstand.dev/node": node},
                         "ownerReferences": [{"kind": "TrainingJob", "uid": owner_uid}]},
            "spec": {"schedulerName": "leitstand", "nodeName": node,
                     "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(len(gpus))}}}]},
            "status": {"phase": "Running", "startTime": rfc3339(NOW - 190)}}


@dataclass
class World:
    scheduler: Scheduler
    clock: list[float]

    def now(self) -> float:
        return self.clock[0]


def make_world(*, leading: bool = False, extra_jobs: int = 0) -> World:
    config = ServiceConfig()
    cache = ClusterCache(config.core_topology)
    clock = [NOW]
    scheduler = Scheduler(config, NoApiServer(), cache, clock=lambda: clock[0])
    for raw in (node_json("b200-0000"), node_json("b200-0001"), node_json("b200-0002", rack="rack-001"),
                node_json("b200-0003", rack="rack-001"),
                node_json("l40s-0000", 2, "rack-002", "NVIDIA-L40S", "l40s", "eu-fr"),
                node_json("l40s-0001", 2, "rack-002", "NVIDIA-L40S", "l40s", "eu-fr")):
        record = node_record(raw)
        assert record is not None
        cache.on_node("ADDED", record.name, None, record)
    scheduler.on_priority_class("ADDED", "leitstand-train", None, PriorityClassInfo(50, None))
    for queue in (queue_json("org", quota=32), queue_json("tenant-a", "org", ["tenant-a"], quota=8, limit=8),
                  queue_json("tenant-b", "org", ["tenant-b"], quota=16), queue_json("open", quota=0)):
        scheduler.on_queue("ADDED", queue)
    jobs = [tj_json("tenant-a", "run-1", "tenant-a"), tj_json("tenant-a", "wait-1", "tenant-a", created=NOW - 100),
            tj_json("tenant-b", "big", "tenant-b", replicas=2, topology={"required": "rack"}),
            tj_json("tenant-b", "bad", "tenant-b", topology={"required": "zone"}),
            tj_json("tenant-b", "frac", "tenant-b", gpuFraction=0.5)]
    jobs += [tj_json("tenant-b", f"sweep-{i:03d}", "tenant-b", gpus=0) for i in range(extra_jobs)]
    for body in jobs:
        scheduler.on_trainingjob("ADDED", body)
    pod = pod_record(replica_pod_json("tenant-a", "run-1", 0, "b200-0000", list(range(8)), "tenant-a",
                                      "uid-tenant-a-run-1"))
    assert pod is not None
    cache.on_pod("ADDED", pod.key, None, pod)

    async def two_cycles() -> None:
        scheduler.leading = True
        scheduler.cycle()
        clock[0] += 600
        scheduler.cycle()
        await asyncio.sleep(0.01)  # the binder's tasks reach the fake API server
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(two_cycles())
    scheduler.leading = leading
    scheduler.ready = True
    scheduler.decisions.record(time=NOW + 60, kind="reclaim", job="tenant-a/run-1", queue="tenant-a",
                               namespace="tenant-a", reason="Reclaimed", message="given back to tenant-b",
                               by="tenant-b/big", by_queue="tenant-b", gpus_milli=8000, cycle=1)
    return World(scheduler, clock)


class FakeReviewer:
    """TokenReview and SubjectAccessReview answered from tables; counts the questions asked."""

    def __init__(self, tokens: dict[str, Identity], rules: dict[str, list[Check]], *, admins: tuple[str, ...] = ()):
        self.tokens = tokens
        self.rules = rules
        self.admins = admins
        self.token_reviews = 0
        self.access_reviews: list[tuple[str, Check]] = []

    async def authenticate(self, token: str) -> Identity | None:
        self.token_reviews += 1
        return self.tokens.get(token)

    async def allowed(self, identity: Identity, check: Check) -> bool:
        self.access_reviews.append((identity.username, check))
        if identity.username in self.admins:
            return True
        return any(rule == check or (rule.namespace == "*" and rule.verb == check.verb
                                     and rule.resource == check.resource and rule.group == check.group)
                   for rule in self.rules.get(identity.username, ()))


def admin_reviewer() -> FakeReviewer:
    return FakeReviewer({"admin-token": Identity("admin", groups=("system:masters",))}, {}, admins=("admin",))


def client_for(world: World, reviewer: Any = None, settings: ApiSettings | None = None, **kwargs: Any) -> TestClient:
    app = create_app(world.scheduler, Authorizer(reviewer or admin_reviewer()), settings, clock=world.now, **kwargs)
    return TestClient(app)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture
def api(world: World) -> Iterator[TestClient]:
    with client_for(world) as client:
        yield client


def get(api: TestClient, path: str, status: int = 200, /, **params: Any) -> Any:
    reply = api.get(path, params=params, headers=ADMIN)
    assert reply.status_code == status, reply.text
    return reply.json()


# -- health ---------------------------------------------------------------------------------------------


def test_health_needs_no_token_and_ready_follows_the_scheduler() -> None:
    world = make_world()
    with client_for(world) as api:
        assert api.get("/healthz").json() == {"status": "ok", "leading": False, "ready": True}
        assert api.get("/readyz").status_code == 200
        world.scheduler.ready = False
        reply = api.get("/readyz")
        assert reply.status_code == 503 and reply.json()["error"] == "NotReady"
        assert reply.headers["retry-after"] == "1"


def test_every_response_says_whether_this_replica_leads() -> None:
    world = make_world()
    with client_for(world) as api:
        assert api.get("/healthz").headers[LEADING_HEADER] == "false"
        assert get(api, "/v1/queues")["leading"] is False
        world.scheduler.leading = True
        assert api.get("/v1/nope", headers=ADMIN).headers[LEADING_HEADER] == "true"
        assert get(api, "/v1/jobs")["leading"] is True


# -- queues ----------------------------------------------------------------------------------------------


def test_queues_show_the_tree_with_exact_amounts_usage_and_jobs(api: TestClient) -> None:
    queues = {q["name"]: q for q in get(api, "/v1/queues", window=3600)["items"]}
    assert sorted(queues) == ["open", "org", "tenant-a", "tenant-b"]
    org, a, b = queues["org"], queues["tenant-a"], queues["tenant-b"]
    assert org["children"] == ["tenant-a", "tenant-b"] and a["parent"] == "org" and org["parent"] is None
    assert (a["quota"], a["quotaMilli"], a["limit"], a["limitMilli"]) == ("8", 8000, "8", 8000)
    assert queues["open"]["limit"] is None and queues["open"]["limitMilli"] is None
    assert (a["allocated"], a["allocatedMilli"], a["runningJobs"]) == ("8", 8000, 1)
    assert (a["pendingJobs"], a["pendingGpus"], a["pendingMilli"]) == (1, "8", 8000)
    assert (b["allocated"], b["allocatedMilli"]) == ("16.5", 16500)  # 2 × 8 and half a GPU
    assert org["allocatedMilli"] == a["allocatedMilli"] + b["allocatedMilli"]  # a parent counts its children
    assert a["fairShare"] == "8" and a["fairShareMilli"] == 8000
    assert a["namespaces"] == ["tenant-a"] and a["valid"] and a["overQuotaWeight"] == 1.0 and a["priority"] == 100
    # run-1's pod started at NOW - 190 and tenant-a was never counted before (no usage on its status):
    # the first cycle charges those 190 s from the pod (usage.resume), the meter the 600 s after.
    usage = a["details"]["usage"]
    assert usage["totalGpuSeconds"] == pytest.approx(8 * 790)
    assert usage["window"]["seconds"] == 3600 and usage["window"]["gpuSeconds"] == pytest.approx(8 * 790)
    assert org["details"]["usage"]["totalGpuSeconds"] == pytest.approx(8 * 790)  # its subtree
    assert [(j["namespace"], j["name"], j["phase"]) for j in a["details"]["jobs"]] == [
        ("tenant-a", "run-1", "Running"), ("tenant-a", "wait-1", "Pending")]
    assert len(org["details"]["jobs"]) == 5 and not org["details"]["jobsTruncated"]
    assert get(api, "/v1/queues")["items"][0]["details"]["usage"]["window"] is None  # not asked


def test_one_queue_by_name_and_an_unknown_one(api: TestClient) -> None:
    assert get(api, "/v1/queues/tenant-b")["quotaMilli"] == 16000
    body = get(api, "/v1/queues/nope", 404)
    assert body == {"error": "NotFound", "detail": "queue 'nope' not found", "field": "name"}


def test_a_queue_with_a_bad_parent_is_shown_invalid() -> None:
    world = make_world()
    world.scheduler.on_queue("ADDED", queue_json("orphan", "missing", ["x"], quota=1))
    asyncio.run(_cycle(world))
    with client_for(world) as api:
        orphan = get(api, "/v1/queues/orphan")
    assert not orphan["valid"] and "parent queue missing does not exist" in orphan["message"]


async def _cycle(world: World) -> None:
    world.scheduler.leading = True
    world.scheduler.cycle()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    world.scheduler.leading = False


# -- jobs ------------------------------------------------------------------------------------------------


def test_jobs_filter_by_queue_namespace_and_phase(api: TestClient) -> None:
    def names(**params: Any) -> list[str]:
        return [f"{j['namespace']}/{j['name']}" for j in get(api, "/v1/jobs", **params)["items"]]

    everything = names()
    assert everything == sorted(everything) and len(everything) == 5
    assert names(namespace="tenant-a") == ["tenant-a/run-1", "tenant-a/wait-1"]
    assert names(queue="tenant-b") == ["tenant-b/bad", "tenant-b/big", "tenant-b/frac"]
    assert names(queue="org") == everything  # an inner queue: its children's jobs
    assert names(queue="open") == [] and names(queue="no-such-queue") == []
    assert names(phase="Running") == ["tenant-a/run-1"]
    assert names(phase="Pending", namespace="tenant-a") == ["tenant-a/wait-1"]
    assert names(phase="Failed") == []


def test_jobs_are_paginated_in_a_stable_order_with_a_continue_token() -> None:
    world = make_world(extra_jobs=23)
    with client_for(world) as api:
        seen: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 4}
            if token:
                params["continue"] = token
            page = get(api, "/v1/jobs", **params)
            assert page["total"] == (28 if pages == 0 else 29) and len(page["items"]) <= 4
            seen += [f"{j['namespace']}/{j['name']}" for j in page["items"]]
            pages += 1
            token = page["continue"]
            if token is None:
                break
            # a job created meanwhile, sorting before the token: no page repeats or skips because of it
            world.scheduler.on_trainingjob("ADDED", tj_json("tenant-a", "aaa-late", "tenant-a"))
        assert pages == 7 and len(seen) == 28 == len(set(seen)) and seen == sorted(seen)
        assert get(api, "/v1/jobs", limit=1000)["continue"] is None


def test_a_running_job_shows_its_pods_gpus_and_domain(api: TestClient) -> None:
    job = get(api, "/v1/jobs/tenant-a/run-1")
    assert (job["phase"], job["queue"], job["gpus"], job["gpuMilli"], job["replicas"]) == ("Running", "tenant-a", "8",
                                                                                         8000, 1)
    assert job["pending"] is None and job["startedAt"] == rfc3339(NOW - 190)
    placement = job["placement"]
    assert placement["nodes"] == ["b200-0000"] and (placement["level"], placement["domain"]) == ("node", "b200-0000")
    [pod] = placement["pods"]
    assert pod == {"name": "run-1-abcde-0", "node": "b200-0000", "bound": True, "gpuIndices": list(range(8)),
                   "gpuMilli": 1000, "phase": "Running"}
    [reclaim] = job["history"]
    assert (reclaim["kind"], reclaim["by"], reclaim["byQueue"], reclaim["reason"]) == (
        "reclaim", "tenant-b/big", "tenant-b", "Reclaimed")


def test_a_waiting_job_says_why_and_how_long(api: TestClient) -> None:
    job = get(api, "/v1/jobs/tenant-a/wait-1")
    assert job["phase"] == "Pending" and job["placement"] is None and job["history"] == []
    assert job["pending"]["code"] == "QueueAtLimit" and "limit 8/8" in job["pending"]["message"]
    assert job["queuedAt"] == rfc3339(NOW - 100) and job["waitSeconds"] == pytest.approx(700)
    bad = get(api, "/v1/jobs/tenant-b/bad")
    assert bad["pending"]["code"] == "InvalidSpec" and "zone" in bad["pending"]["message"]
    assert bad["replicas"] is None and bad["priorityClass"] is None  # the spec could not be read
    frac = get(api, "/v1/jobs/tenant-b/frac")
    assert (frac["gpuFraction"], frac["gpusPerReplica"], frac["gpus"], frac["gpuMilli"]) == ("0.5", None, "0.5", 500)
    big = get(api, "/v1/jobs/tenant-b/big")
    assert big["reason"] == "Admitted" and big["pending"] is None and big["waitSeconds"] == pytest.approx(300)
    assert big["topologyRequired"] == "rack"


def test_the_leaders_latest_plan_gives_the_freshest_reason() -> None:
    world = make_world(leading=True)
    plan = world.scheduler.last_plan
    assert plan is not None and any(str(r.job_id) == "tenant-a/wait-1" for r in plan.pending)
    with client_for(world) as api:
        job = get(api, "/v1/jobs/tenant-a/wait-1")
    [fresh] = [r for r in plan.pending if str(r.job_id) == "tenant-a/wait-1"]
    assert job["pending"] == {"code": fresh.code, "message": fresh.message}


def test_an_unknown_job_is_404_naming_the_field(api: TestClient) -> None:
    assert get(api, "/v1/jobs/tenant-a/nope", 404) == {
        "error": "NotFound", "detail": "TrainingJob tenant-a/nope not found", "field": "name"}


# -- nodes and topology ----------------------------------------------------------------------------------------


def test_nodes_show_free_and_used_gpus_in_milli(api: TestClient) -> None:
    nodes = {n["name"]: n for n in get(api, "/v1/nodes")["items"]}
    assert len(nodes) == 6
    busy, idle, shared = nodes["b200-0000"], nodes["b200-0001"], nodes["l40s-0000"]
    assert (busy["gpuFreeMilli"], busy["gpuUsedMilli"], busy["gpusFree"]) == (0, 8000, 0)
    assert (idle["gpuFreeMilli"], idle["gpusFree"], idle["perGpuFreeMilli"]) == (8000, 8, [1000] * 8)
    assert shared["perGpuFreeMilli"] == [500, 1000] and shared["gpuUsedMilli"] == 500
    assert (shared["gpuModel"], shared["nodePool"], shared["jurisdiction"]) == ("NVIDIA-L40S", "l40s", "eu-fr")
    assert busy["topology"] == {"spine": "spine-00", "rack": "rack-000", "nvlink-domain": "nvl-b200-0000"}
    assert busy["schedulable"] and busy["ready"] and busy["heldBack"] is None


def test_a_replica_that_does_not_lead_builds_its_arrays_for_a_new_node() -> None:
    world = make_world()
    record = node_record(node_json("b200-0004", rack="rack-003"))
    assert record is not None
    world.scheduler.cache.on_node("ADDED", record.name, None, record)
    with client_for(world) as api:
        nodes = {n["name"]: n for n in get(api, "/v1/nodes")["items"]}
    assert nodes["b200-0004"]["gpuFreeMilli"] == 8000
    assert nodes["b200-0000"]["gpuFreeMilli"] == 0  # the running pod is charged again after the rebuild


def test_topology_shows_occupancy_per_domain_and_where_gangs_fit(api: TestClient) -> None:
    topo = get(api, "/v1/topology")
    assert topo["levels"] == ["spine", "rack", "nvlink-domain", "node"]
    domains = {(d["level"], d["name"]): d for d in topo["domains"]}
    assert ("node", "b200-0000") not in domains  # node level only when asked
    rack0, rack1, rack2 = domains[("rack", "rack-000")], domains[("rack", "rack-001")], domains[("rack", "rack-002")]
    assert (rack0["gpus"], rack0["gpusFree"], rack0["nodesAllFree"], rack0["largestFreeBlock"]) == (16, 8, 1, 8)
    assert rack1["gpusFree"] == 0 and rack0["parent"] == "spine-00"
    assert (rack2["freeMilli"], rack2["strandedMilli"], rack2["gpusFree"]) == (3500, 500, 3)
    spine = domains[("spine", "spine-00")]
    assert spine["gpus"] == 36 and spine["gpusFree"] == 11 and spine["nodesWith8Free"] == 1
    gangs = {g["gpus"]: g for g in topo["gangs"]}
    rack_8 = next(f for f in gangs[8]["as8GpuReplicas"] if f["level"] == "rack")
    assert rack_8 == {"level": "rack", "domains": ["rack-000"], "count": 1}
    assert all(f["count"] == 0 for f in gangs[16]["as8GpuReplicas"])  # no two free nodes anywhere
    spine_any = next(f for f in gangs[8]["anyShape"] if f["level"] == "spine")
    assert spine_any["domains"] == ["spine-00"]  # 11 free GPUs, if the gang may spread
    node_8 = next(f for f in gangs[8]["as8GpuReplicas"] if f["level"] == "node")
    assert node_8["domains"] == ["b200-0001"]


def test_topology_filters_by_level_model_and_pool(api: TestClient) -> None:
    nodes = get(api, "/v1/topology", level="node")["domains"]
    assert {d["name"] for d in nodes} == {"b200-0000", "b200-0001", "b200-0002", "b200-0003", "l40s-0000",
                                          "l40s-0001"}
    l40s = get(api, "/v1/topology", level="rack", model="NVIDIA-L40S")["domains"]
    assert [(d["name"], d["gpus"]) for d in l40s] == [("rack-002", 4)]
    assert get(api, "/v1/topology", pool="no-such-pool")["domains"] == []


# -- decisions -----------------------------------------------------------------------------------------------


def test_decisions_filter_by_kind_namespace_queue_time_and_page_by_sequence(api: TestClient) -> None:
    everything = get(api, "/v1/decisions")["items"]
    seqs = [d["seq"] for d in everything]
    assert seqs == sorted(seqs) and len(seqs) >= 5
    kinds = {d["kind"] for d in everything}
    assert {"admit", "reject", "reclaim"} <= kinds
    admits = get(api, "/v1/decisions", kind="admit")["items"]
    assert {d["job"] for d in admits} == {"tenant-b/big", "tenant-b/frac"}
    assert admits[0]["gpus"] == "16" and admits[0]["nodes"] == ["b200-0002", "b200-0003"]
    assert {d["namespace"] for d in get(api, "/v1/decisions", namespace="tenant-a")["items"]} == {"tenant-a"}
    reclaim = get(api, "/v1/decisions", queue="tenant-b", kind="reclaim")["items"]  # the other party's queue
    assert [d["job"] for d in reclaim] == ["tenant-a/run-1"]
    assert [d["kind"] for d in get(api, "/v1/decisions", since=NOW + 30)["items"]] == ["reclaim"]
    assert get(api, "/v1/decisions", until=rfc3339(NOW - 1))["items"] == []
    assert len(get(api, "/v1/decisions", since="2027-01-15T08:00:00Z")["items"]) == len(everything)
    assert get(api, "/v1/decisions", job="tenant-b/bad")["items"][0]["reason"] == "InvalidSpec"
    pages: list[int] = []
    after = 0
    while True:
        page = get(api, "/v1/decisions", limit=2, after=after)
        pages += [d["seq"] for d in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert pages == seqs


# -- usage ---------------------------------------------------------------------------------------------------


def test_usage_by_queue_and_namespace_as_json(api: TestClient) -> None:
    by_queue = get(api, "/v1/usage", **{"from": NOW - 3600, "to": NOW + 3600})
    assert by_queue["by"] == "queue" and by_queue["coveredFrom"] == rfc3339(NOW)
    assert by_queue["rows"] == [{"key": "tenant-a", "gpuHours": pytest.approx(8 * 790 / 3600),
                                 "gpuSeconds": pytest.approx(8 * 790)}]  # 190 s rebuilt from the pod
    by_ns = get(api, "/v1/usage", by="namespace")
    assert [r["key"] for r in by_ns["rows"]] == ["tenant-a"]
    half = get(api, "/v1/usage", **{"from": rfc3339(NOW), "to": rfc3339(NOW + 300)})  # RFC 3339 too
    assert half["rows"][0]["gpuSeconds"] == pytest.approx(8 * 300)
    assert get(api, "/v1/usage", **{"from": NOW + 600, "to": NOW})["rows"] == []  # an empty window


def test_usage_as_csv_by_accept_header_or_format(api: TestClient) -> None:
    reply = api.get("/v1/usage", params={"by": "namespace", "from": NOW - 60}, headers={**ADMIN, "Accept": "text/csv"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    assert reply.text.splitlines() == ["namespace,gpu_hours,gpu_seconds", "tenant-a,1.466667,5280.000"]
    reply = api.get("/v1/usage", params={"format": "csv"}, headers=ADMIN)
    assert reply.text.startswith("queue,gpu_hours,gpu_seconds\n")
    assert api.get("/v1/usage", params={"format": "json"}, headers={**ADMIN, "Accept": "text/csv"}).json()["by"]


# -- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/v1/jobs", {"limit": 0}, "limit"),
    ("/v1/jobs", {"limit": 10**12}, "limit"),
    ("/v1/jobs", {"limit": "many"}, "limit"),
    ("/v1/jobs", {"phase": "Done"}, "phase"),
    ("/v1/jobs", {"namespace": "Tenant_A"}, "namespace"),
    ("/v1/jobs", {"namespace": "tenant-ä"}, "namespace"),
    ("/v1/jobs", {"queue": "a" * 300}, "queue"),
    ("/v1/jobs", {"continue": "x" * 1000}, "continue"),
    ("/v1/jobs", {"namepsace": "tenant-a"}, "namepsace"),
    ("/v1/jobs/tenant-ä/x", {}, "namespace"),
    ("/v1/jobs/tenant-a/%F0%9F%92%A5", {}, "name"),
    ("/v1/queues", {"window": 5}, "window"),
    ("/v1/queues", {"window": 10**9}, "window"),
    ("/v1/queues/UPPER", {}, "name"),
    ("/v1/topology", {"level": "zone"}, "level"),
    ("/v1/decisions", {"kind": "explode"}, "kind"),
    ("/v1/decisions", {"since": "yesterday"}, "since"),
    ("/v1/decisions", {"since": 1e300}, "since"),
    ("/v1/decisions", {"after": -1}, "after"),
    ("/v1/usage", {"by": "user"}, "by"),
    ("/v1/usage", {"format": "xml"}, "format"),
    ("/v1/usage", {"from": "not a time"}, "from"),
])
def test_bad_input_is_a_400_naming_the_parameter(api: TestClient, path: str, params: dict[str, Any],
                                                 field: str) -> None:
    reply = api.get(path, params=params, headers=ADMIN)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert set(body) == {"error", "detail", "field"} and body["error"] == "BadRequest"
    assert body["field"] == field and body["detail"]


def test_unknown_paths_and_methods_are_4xx_with_the_error_body(api: TestClient) -> None:
    reply = api.get("/v1/gpus", headers=ADMIN)
    assert reply.status_code == 404 and reply.json()["error"] == "NotFound"
    reply = api.post("/v1/jobs", headers=ADMIN, json={})
    assert reply.status_code == 405 and reply.json()["error"] == "MethodNotAllowed"
    assert reply.headers["allow"] == "GET"


def test_the_openapi_document_states_our_error_body_and_the_bearer_scheme(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    jobs = doc["paths"]["/v1/jobs"]["get"]
    assert set(jobs["responses"]) == {"200", "400", "401", "403", "503"}
    assert jobs["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert jobs["security"] == [{"HTTPBearer": []}]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "404" in doc["paths"]["/v1/jobs/{namespace}/{name}"]["get"]["responses"]
    assert api.get("/docs").status_code == 200


def test_a_scheduler_that_has_seen_nothing_yet_answers_every_endpoint() -> None:
    config = ServiceConfig()
    scheduler = Scheduler(config, NoApiServer(), ClusterCache(config.core_topology), clock=lambda: NOW)
    with client_for(World(scheduler, [NOW])) as api:
        for path in ("/v1/queues", "/v1/jobs", "/v1/nodes", "/v1/topology", "/v1/decisions", "/v1/usage",
                     "/v1/topology?level=node", "/v1/queues?window=600"):
            reply = api.get(path, headers=ADMIN)
            assert reply.status_code == 200, (path, reply.text)
        assert api.get("/v1/topology", headers=ADMIN).json()["domains"] == []
        assert api.get("/readyz").status_code == 503


def test_the_render_gate_runs_one_answer_at_a_time_within_its_share_of_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from leitstand.operator.api.app import RenderGate

    now = [0.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # time passes while the gate waits
        now[0] += seconds
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    gate = RenderGate(share=0.5, burst_seconds=0.0, clock=lambda: now[0])
    inside: list[int] = []
    spans: list[tuple[float, float]] = []

    async def render() -> None:
        async with gate:
            inside.append(1)
            assert len(inside) == 1  # one at a time
            start = now[0]
            await real_sleep(0)  # another render would start here if the gate let it
            now[0] += 0.01  # the render takes 10 ms
            spans.append((start, now[0]))
            inside.pop()

    async def scenario() -> None:
        await asyncio.gather(*(render() for _ in range(5)))

    asyncio.run(scenario())
    # at a 50 % share, 10 ms of rendering earns the next render a 10 ms pause: 5 renders span 90 ms
    assert [round(a, 3) for a, _ in spans] == [0.0, 0.02, 0.04, 0.06, 0.08]
    assert gate.waited_seconds == pytest.approx(0.04)


def test_the_server_serves_on_a_tcp_nodelay_socket_stops_cleanly_and_survives_a_busy_port(
        caplog: pytest.LogCaptureFixture) -> None:
    import socket

    import aiohttp

    from leitstand.operator.api import server

    world = make_world()

    async def scenario() -> None:
        api = await server.start(ApiSettings(port=0), world.scheduler, NoApiServer())
        assert api is not None and api.port > 0
        # asyncio sets TCP_NODELAY only on sockets whose proto is TCP (else: 40 ms per keep-alive answer)
        assert api.sock.proto == socket.IPPROTO_TCP
        assert api.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the second on the same keep-alive connection
                async with session.get(f"{api.url}/healthz") as reply:
                    assert reply.status == 200 and reply.headers[LEADING_HEADER] == "false"
        busy = await server.start(ApiSettings(port=api.port), world.scheduler, NoApiServer())
        assert busy is None  # logged; the scheduler runs on without its API
        await api.stop()
        assert api.task.done() and not api.task.cancelled()

    asyncio.run(scenario())
    assert "HTTP API not served: cannot listen on 127.0.0.1" in caplog.text
    with server.bind("127.0.0.1", 0) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
