"""The loop follows only the jobs whose inputs changed, and writes statuses and Events sparingly.

A real `Scheduler` and `ClusterCache` over a fake API server that records every request; cycles are run
by hand with an injected clock (see docs/operator-throughput.md for why each of these exists).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from test_api import NOW, node_json, queue_json, replica_pod_json, tj_json

from leitstand.operator.service.cache import ClusterCache
from leitstand.operator.service.config import ServiceConfig
from leitstand.operator.service.jobs import PriorityClassInfo
from leitstand.operator.service.loop import Scheduler, tj_path
from leitstand.operator.service.records import node_record, pod_record
from leitstand.operator.service.status import StatusBook, rfc3339


class FakeApiServer:
    """Accepts every request and remembers it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.calls.append((method, path, body))
        return (200 if method == "PATCH" else 201), {}

    def posted_events(self) -> list[Any]:
        return [body for method, path, body in self.calls if method == "POST" and path.endswith("/events")]


def world(api: FakeApiServer) -> tuple[Scheduler, ClusterCache, list[float]]:
    config = ServiceConfig()
    cache = ClusterCache(config.core_topology)
    clock = [NOW]
    scheduler = Scheduler(config, api, cache, clock=lambda: clock[0])
    for name in ("b200-0000", "b200-0001"):
        record = node_record(node_json(name))
        assert record is not None
        cache.on_node("ADDED", record.name, None, record)
    scheduler.on_priority_class("ADDED", "leitstand-train", None, PriorityClassInfo(50, None))
    scheduler.on_queue("ADDED", queue_json("team", namespaces=["team"], quota=16))
    scheduler.leading = True
    return scheduler, cache, clock


def add_running_pod(cache: ClusterCache, job: str, node: str, started: float | None = None) -> None:
    raw = replica_pod_json("team", job, 0, node, list(range(8)), "team", f"uid-team-{job}")
    if started is not None:
        raw["status"]["startTime"] = tj_json("x", "x", "x", created=started)["metadata"]["creationTimestamp"]
    record = pod_record(raw)
    assert record is not None
    old = cache.pods.get(record.key)
    cache.on_pod("MODIFIED" if old else "ADDED", record.key, old, record)


def run(body: Callable[[], None]) -> None:
    """Run `body` inside an event loop (the loop starts binder tasks), then let those tasks finish."""

    async def main() -> None:
        body()
        await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    asyncio.run(main())


def test_a_cycle_follows_only_the_jobs_whose_pods_object_or_queues_changed() -> None:
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "running", "team"))
    add_running_pod(cache, "running", "b200-0000")
    # 8 replicas of 8 GPUs on two 8-GPU nodes: never fits, waits with a reason every cycle
    scheduler.on_trainingjob("ADDED", tj_json("team", "too-big", "team", replicas=8))
    reports = []

    def cycles() -> None:
        reports.append(scheduler.cycle())
        clock[0] += 1
        reports.append(scheduler.cycle())  # nothing changed
        clock[0] += 1
        echo = tj_json("team", "running", "team")
        echo["status"] = {"phase": "Running"}  # the watch's echo of a status write: no reason to follow
        scheduler.on_trainingjob("MODIFIED", echo)
        reports.append(scheduler.cycle())
        clock[0] += 1
        add_running_pod(cache, "running", "b200-0000", started=NOW - 50)  # its pod changed
        reports.append(scheduler.cycle())
        clock[0] += 1
        scheduler.on_queue("MODIFIED", queue_json("team", namespaces=["team"], quota=8))
        reports.append(scheduler.cycle())

    run(cycles)
    assert [r.followed for r in reports] == [2, 0, 0, 1, 2]
    # what a clean job contributed is reused: the core saw the same running and pending jobs each time
    assert [r.running for r in reports] == [1, 1, 1, 1, 1]
    assert all(r.reasons == {"NeverFits": 1} for r in reports), [r.reasons for r in reports]
    assert [j.id for j in scheduler.last_pending] == ["team/too-big"]


def test_max_runtime_ends_a_job_on_time_though_nothing_else_happens() -> None:
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "short", "team", maxRuntimeSeconds=40))
    add_running_pod(cache, "short", "b200-0000", started=NOW - 30)
    reports = []

    def cycles() -> None:
        reports.append(scheduler.cycle())
        clock[0] += 5
        reports.append(scheduler.cycle())  # 35 s of 40: not yet, and not followed
        clock[0] += 6
        reports.append(scheduler.cycle())  # 41 s: the timer makes the cycle follow it

    run(cycles)
    assert [r.followed for r in reports] == [1, 0, 1]
    status = scheduler.book.desired[tj_path("team", "short")]
    assert (status["phase"], status["reason"]) == ("Failed", "MaxRuntimeExceeded")
    assert ("DELETE", "/api/v1/namespaces/team/pods/short-abcde-0", None) in api.calls


def test_an_admission_at_first_sight_posts_no_event_and_one_after_a_wait_does() -> None:
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "at-once", "team"))
    add_running_pod(cache, "blocker", "b200-0000")  # a pod of no TrainingJob of ours holds one node
    scheduler.on_trainingjob("ADDED", tj_json("team", "later", "team"))  # the other node goes to at-once

    def first() -> None:
        scheduler.cycle()

    run(first)
    assert scheduler.book.desired[tj_path("team", "at-once")]["reason"] == "Admitted"
    reasons = [e["reason"] for e in api.posted_events()]
    assert reasons == ["Insufficient"]  # told why it waits; the job admitted at once got no Event
    assert [d.kind for d in scheduler.decisions.query()].count("admit") == 1  # still audited

    def second() -> None:
        blocker = cache.pods["team/blocker-abcde-0"]
        cache.on_pod("DELETED", blocker.key, blocker, None)
        clock[0] += 1
        scheduler.cycle()

    run(second)
    assert [e["reason"] for e in api.posted_events()] == ["Insufficient", "Admitted"]


def test_a_held_admission_write_goes_out_with_the_next_reason_or_when_the_hold_ends() -> None:
    api = FakeApiServer()
    book = StatusBook(api)
    writes: list[dict[str, Any]] = []

    async def flush() -> None:
        await book.flush()
        writes.extend(body["status"] for method, _path, body in api.calls[len(writes):])

    async def main() -> None:
        status = book.view("/tj/a", "uid-a", {})
        status.update(phase="Pending", reason="Admitted")
        book.hold("/tj/a", 60, "Admitted")
        await flush()
        assert writes == []  # held
        status.update(phase="Running", reason="Running")
        book.touch("/tj/a")
        await flush()
        assert writes == [{"phase": "Running", "reason": "Running"}]  # one write with both
        status["reason"] = "Admitted"
        book.hold("/tj/a", 0, "Admitted")  # a hold that has ended
        await flush()
        assert writes[-1] == {"reason": "Admitted"}
        await flush()
        assert len(writes) == 2  # nothing changed, nothing written

    asyncio.run(main())


def test_a_job_found_running_without_its_admission_gets_the_time_its_pods_were_created() -> None:
    """The process restarted after it bound a gang but before the admission's status write went out (the
    factory hour lost the Lease twice with thousands of writes waiting: ~40 % of its jobs ended without
    `admittedAt`). The next process finds the gang whole: the admission is when its pods were created,
    from the API server, not this process' "now" — so the job's age, and with it the minimum runtime
    that protects it from preemption, survives the restart."""
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "adopted", "team", created=NOW - 300))
    add_running_pod(cache, "adopted", "b200-0000")  # created at NOW - 200 by the process that died

    def cycles() -> None:
        scheduler.cycle()
        clock[0] += 30
        scheduler.cycle()

    run(cycles)
    status = scheduler.book.desired[tj_path("team", "adopted")]
    assert status["phase"] == "Running"
    assert status["admittedAt"] == rfc3339(NOW - 200)
    [held] = scheduler.last_running
    assert held.started_at == NOW - 200  # not the cycle's clock (NOW + 30)


def test_the_cores_sort_of_a_waiting_backlog_is_kept_from_cycle_to_cycle(monkeypatch: Any) -> None:
    """The loop hands the core the same job objects in the same order while they wait, and new ones
    after them, so the core's sort of the pending jobs (`scheduler/pending.py`) is built once and
    then updated — also when a job arrives, and when one is admitted (it is no longer listed the next
    cycle, while its pods do not exist yet)."""
    from leitstand.scheduler import pending

    fresh = []
    real = pending._fresh
    monkeypatch.setattr(pending, "_fresh", lambda *args: fresh.append(1) or real(*args))
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    for name in ("wide-a", "wide-b", "wide-c"):  # 4 replicas of 8 GPUs on two 8-GPU nodes: they wait
        scheduler.on_trainingjob("ADDED", tj_json("team", name, "team", replicas=4))
    kept = []
    from test_service_robustness import cycle_after

    admitted = []
    for step in range(5):
        cycle_after(scheduler, clock, 1.0)
        kept.append(cache.state.cycle_cache.get(pending.CACHE_KEY))
        if step == 1:
            scheduler.on_trainingjob("ADDED", tj_json("team", "wide-d", "team", replicas=4))
        if step == 2:
            scheduler.on_trainingjob("ADDED", tj_json("team", "small", "team", gpus=1))
        if step == 3:
            admitted = [c for c in api.calls if c[0] == "POST" and c[1].endswith("/pods")]
    assert admitted and not cache.pods  # admitted in the fourth cycle; no pod seen by the fifth
    assert [j.id for j in scheduler.last_pending] == ["team/wide-a", "team/wide-b", "team/wide-c", "team/wide-d"]
    assert len(fresh) == 1 and all(sort is kept[0] for sort in kept)
    assert [j.id for jobs in kept[-1].by_queue.values() for j in jobs] == [j.id for j in scheduler.last_pending]
