"""The operator under a slow or refusing API server, without a cluster (each case found by a campaign):
status writes most urgent first in batches, pods whose removal was refused deleted again, and a
confirmed bind never rolled back because the watch is late.

The status book's order: a job the API server has no status of yet is written before a change of phase
or reason, and those before message refreshes, in batches, so a wave of refreshes of waiting jobs never
keeps a new job statusless (found by `leitstand bench hostile`: with binds holding writes to two in
flight, 900 new TrainingJobs waited minutes behind refreshes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_api import queue_json, replica_pod_json, tj_json
from test_service_followup import FakeApiServer, add_running_pod, run, world

from leitstand.operator.service.binder import Binder, BindError, PodWrite
from leitstand.operator.service.kubeclient import TransportError
from leitstand.operator.service.loop import (
    IN_FLIGHT_GIVE_UP_SECONDS,
    REMOVAL_RETRY_SECONDS,
    UNCERTAIN_SECONDS,
    CycleReport,
    Scheduler,
    tj_path,
)
from leitstand.operator.service.records import pod_record
from leitstand.operator.service.status import AGING_SECONDS, LAG_BOUND_SECONDS, StatusBook
from leitstand.scheduler.model import Binding, Eviction, EvictionKind, JobId, NodeName, Plan, ReplicaPlacement


def cycle_after(scheduler: Scheduler, clock: list[float], seconds: float) -> None:
    """Advance the clock, run one cycle, then let the binder's requests it started finish."""
    def body() -> None:
        clock[0] += seconds
        scheduler.cycle()
    run(body)


class RecordingApiServer:
    def __init__(self) -> None:
        self.patched: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.patched.append(path.removesuffix("/status"))
        return 200, {}


def test_new_statuses_first_then_changes_then_refreshes_in_batches() -> None:
    api = RecordingApiServer()
    book = StatusBook(api)

    async def main() -> None:
        for i in range(6):  # six waiting jobs, written once
            book.view(f"/tj/old-{i}", f"u{i}", {}).update(phase="Pending", reason="Insufficient", message="0 of 8")
        await book.flush()
        api.patched.clear()
        for i in range(6):  # their numbers change (a refresh); one of them is admitted (a change of reason)
            status = book.view(f"/tj/old-{i}", f"u{i}", None)
            status["message"] = "2 of 8"
            if i == 5:
                status.update(phase="Running", reason="Running")
        for i in range(3):  # three jobs the API server has no status of yet
            book.view(f"/tj/new-{i}", f"n{i}", {}).update(phase="Pending", reason="UnknownQueue")
        more = await book.flush(limit=4)
        assert more
        assert sorted(api.patched[:3]) == ["/tj/new-0", "/tj/new-1", "/tj/new-2"] and api.patched[3] == "/tj/old-5"
        assert await book.flush(limit=4)  # the five refreshes: four, then one
        assert not await book.flush(limit=4)
        assert sorted(api.patched[4:]) == [f"/tj/old-{i}" for i in range(5)]
        assert not await book.flush(limit=4)
        assert len(api.patched) == 9  # nothing written twice

    asyncio.run(main())


def test_a_refresh_waits_at_most_two_aging_steps_behind_a_stream_of_new_statuses() -> None:
    """A Queue's status is a refresh after its first write; while new jobs keep arriving faster than the
    writes go out (the factory hour, docs/factory.md), ranking by urgency alone never wrote it again (41
    minutes behind at the median). Aged, it goes out once it has waited two steps (`AGING_SECONDS` each)
    longer than the newest status, and the new statuses keep their lead until then."""
    api = RecordingApiServer()
    clock = [0.0]
    book = StatusBook(api, clock=lambda: clock[0])

    async def main() -> None:
        book.view("/queues/team", "q", {}).update(allocated="0")
        await book.flush()
        api.patched.clear()
        book.view("/queues/team", "q", None)["allocated"] = "8"  # a refresh, due from the next flush on
        written_at: dict[str, float] = {}
        for step in range(12):
            clock[0] = 10.0 * step
            for i in range(4):  # four new jobs every ten seconds; four writes per flush
                book.view(f"/tj/new-{step}-{i}", f"n{step}{i}", {}).update(phase="Pending", reason="Queued")
            await book.flush(limit=4)
            for path in api.patched:
                written_at.setdefault(path, clock[0])
            assert book.oldest_due() is not None
        # due at 0 s: it ties with the statuses due at 60 s and outranks those due later
        assert 2 * AGING_SECONDS <= written_at["/queues/team"] <= 2 * AGING_SECONDS + 10.0
        assert book.due() > 0
        # the new ones before it were written in the order they came, none of them waited more than it did
        waited = [written_at[p] - 10.0 * int(p.split("-")[1]) for p in written_at if p.startswith("/tj/")]
        assert max(waited) <= 2 * AGING_SECONDS + 10.0

    asyncio.run(main())


class HeldApiServer:
    """An API server that answers each request only when the test releases it (oldest first)."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.answered = 0

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append(answer)
        await answer
        self.answered += 1
        return 200, {}

    def release(self, n: int) -> None:
        for answer in self.waiting[:n]:
            answer.set_result(None)
        del self.waiting[:n]


def test_status_writers_beside_binds_grow_with_the_lag_and_fall_back_when_it_is_gone() -> None:
    """Two writes in flight beside binds while the oldest status has waited under LAG_BOUND_SECONDS; two
    more per LAG_BOUND_SECONDS beyond (the full factory hour grew a backlog of ~20,000 statuses with a
    fixed two, docs/factory.md); sixteen with no binds at all."""
    api = HeldApiServer()
    clock = [0.0]
    binding = [True]
    book = StatusBook(api, busy=lambda: binding[0], clock=lambda: clock[0])

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def drain(flush: asyncio.Task[bool]) -> None:
        while api.waiting:
            api.release(len(api.waiting))
            await settle()
        await flush

    async def main() -> None:
        for i in range(40):
            book.view(f"/tj/job-{i}", f"u{i}", {}).update(phase="Pending", reason="Queued")
        flush = asyncio.create_task(book.flush())
        await settle()
        assert len(api.waiting) == 2 and book.writers_allowed() == 2
        clock[0] = 3.5 * LAG_BOUND_SECONDS  # the oldest has now waited 35 s: 2 + 2 * 3 writers
        api.release(1)
        await settle()
        assert len(api.waiting) == 8 and book.writers_allowed() == 8
        clock[0] = 100 * LAG_BOUND_SECONDS  # never more than sixteen
        api.release(1)
        await settle()
        assert len(api.waiting) == 16
        await drain(flush)
        assert api.answered == 40 and book.due() == 0 and book.writers_allowed() == 2
        for i in range(20):  # the backlog is gone: two again beside binds ...
            book.view(f"/tj/job-{i}", f"u{i}", None)["reason"] = "Admitted"
        flush = asyncio.create_task(book.flush())
        await settle()
        assert len(api.waiting) == 2
        binding[0] = False  # ... and sixteen without binds, once a write ends and the rest look again
        api.release(1)
        await settle()
        assert len(api.waiting) == 16
        await drain(flush)
        assert api.answered == 60

    asyncio.run(main())


class Refusing:
    """An API server that refuses every eviction and deletion (as a restarted kube-apiserver does for a
    few seconds, its authorizer not synced yet) and accepts everything else."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.calls.append((method, path))
        if method == "DELETE" or path.endswith("/eviction"):
            return 403, {"message": "forbidden: the authorizer is not ready"}
        return (200 if method == "PATCH" else 201), {}


def test_a_gang_whose_pods_could_not_be_removed_has_them_deleted_again() -> None:
    """A replica fails, the gang is to restart, but the API server refuses the deletions (as a restarted
    kube-apiserver does for a few seconds): the pods stay, not terminating. The job must not wait for
    them forever — the loop deletes them again after REMOVAL_RETRY_SECONDS, and not before."""

    api = Refusing()
    scheduler, cache, clock = world(api)  # type: ignore[arg-type]
    scheduler.on_trainingjob("ADDED", tj_json("team", "flaky", "team", backoffLimit=2))
    raw = replica_pod_json("team", "flaky", 0, "b200-0000", list(range(8)), "team", "uid-team-flaky")
    raw["status"]["phase"] = "Failed"
    raw["status"]["containerStatuses"] = [{"name": "main", "state": {"terminated": {
        "exitCode": 1, "reason": "Error", "finishedAt": "2027-01-15T08:00:00Z"}}}]
    failed = pod_record(raw)
    assert failed is not None
    cache.on_pod("ADDED", failed.key, None, failed)
    deletes: list[int] = []

    def step(seconds: float) -> None:
        cycle_after(scheduler, clock, seconds)
        deletes.append(sum(1 for method, _ in api.calls if method == "DELETE"))

    step(0.0)  # the failure: restart the gang, delete its pod (refused)
    step(1.0)  # the refused pod is still there: too early to try again
    step(REMOVAL_RETRY_SECONDS)
    assert deletes == [1, 1, 2], deletes
    assert scheduler.book.desired[tj_path("team", "flaky")]["phase"] == "Pending"


def test_a_moved_job_whose_old_pod_could_not_be_removed_has_it_deleted_again_and_then_binds() -> None:
    """A consolidation moves a running job to the other node, but the API server refuses the eviction
    and the deletion of its old pod. The old pod is deleted again after REMOVAL_RETRY_SECONDS (not
    before), and once it is gone the job's new pod is created and bound. (Found by the control-plane
    restart scenario: a moved job's refused pod was never deleted again; the move waited for it and
    every bind to its node waited behind it, for 300 s.)"""
    api = Refusing()
    scheduler, cache, clock = world(api)  # type: ignore[arg-type]
    scheduler.on_trainingjob("ADDED", tj_json("team", "mover", "team"))
    add_running_pod(cache, "mover", "b200-0000")
    old = cache.pods[next(iter(cache.job_pods("team/mover")))]
    job = JobId("team/mover")
    move = Plan(bindings=(Binding(job, (ReplicaPlacement(NodeName("b200-0001"), tuple(range(8))),)),),
                evictions=(Eviction(job, EvictionKind.CONSOLIDATE, JobId("team/big"), "moved to make room"),))

    def count(method: str, suffix: str) -> int:
        return sum(1 for m, path in api.calls if m == method and path.endswith(suffix))

    async def main() -> list[int]:
        deletes: list[int] = []

        async def step(seconds: float) -> None:
            clock[0] += seconds
            scheduler.cycle()
            await asyncio.sleep(0.05)  # the binder's requests
            deletes.append(count("DELETE", old.name))

        await step(0.0)  # following the job: running on b200-0000
        scheduler._apply(move, {}, CycleReport())
        await asyncio.sleep(0.05)
        assert count("POST", "/eviction") == 1 and count("DELETE", old.name) == 1  # refused, then refused
        await step(1.0)  # still there: too early to try again
        await step(REMOVAL_RETRY_SECONDS)  # deleted again
        assert count("POST", "/binding") == 0  # the move waits for its old pod
        cache.on_pod("DELETED", old.key, old, None)  # the second deletion went through
        scheduler.on_pod_change()
        await step(1.0)
        for _ in range(40):
            if count("POST", "/binding"):
                break
            await asyncio.sleep(0.05)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        return deletes

    deletes = asyncio.run(main())
    assert deletes == [0, 1, 2, 2], deletes
    assert count("POST", "/binding") == 1  # moved: the new pod is bound on b200-0001
    assert not scheduler.removals  # nothing left to remove


def test_a_confirmed_bind_is_not_rolled_back_when_the_watch_is_late() -> None:
    """The binder created and bound the pod (the API server answered 201 to both) but the watch shows
    nothing for over a minute (a loaded API server): the job stays bound — no delete, no second
    placement. (A 500-node fill on the loaded machine rolled back hundreds of bound gangs this way.)"""


    api = FakeApiServer()
    scheduler, _cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "quiet", "team"))

    cycle_after(scheduler, clock, 0.0)
    creates = [path for method, path, _ in api.calls if method == "POST" and path.endswith("/pods")]
    binds = [path for method, path, _ in api.calls if method == "POST" and path.endswith("/binding")]
    assert len(creates) == 1 and len(binds) == 1
    cycle_after(scheduler, clock, IN_FLIGHT_GIVE_UP_SECONDS + 1)
    cycle_after(scheduler, clock, 1.0)
    assert [path for method, path, _ in api.calls if method == "POST" and path.endswith("/pods")] == creates
    assert not [c for c in api.calls if c[0] == "DELETE"], api.calls


def test_gpus_of_an_unanswered_bind_stay_promised_until_the_pod_shows_or_time_passes() -> None:
    """kube-apiserver killed while a bind was in flight: no answer, so the pod may be bound. Its GPUs
    must not be offered to another job until the informer shows the pod (or UNCERTAIN_SECONDS pass);
    forgetting them at once let a second pod onto the same GPU (`leitstand bench restart --kill`)."""

    class DroppingBinds(FakeApiServer):
        async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                          content_type: str = "application/json") -> tuple[int, Any]:
            if path.endswith("/binding"):
                self.calls.append((method, path, body))
                raise TransportError(method, path, 1, ConnectionResetError("connection reset by peer"))
            return await super().request(method, path, body, params=params, content_type=content_type)

    api = DroppingBinds()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "first", "team"))

    cycle_after(scheduler, clock, 0.0)
    promised = dict(cache.assumed)
    assert len(promised) == 1  # the first job's pod: create answered, bind not
    scheduler.on_trainingjob("ADDED", tj_json("team", "second", "team"))
    scheduler.on_trainingjob("ADDED", tj_json("team", "third", "team", gpus=8))
    cycle_after(scheduler, clock, 1.0)
    assert set(promised) <= set(cache.assumed)  # still promised: two nodes, one of them maybe taken
    nodes = [c.node for c in cache.assumed.values()]
    assert len(nodes) == len(set(nodes)), cache.assumed  # nothing placed onto the uncertain node
    cycle_after(scheduler, clock, UNCERTAIN_SECONDS + 1)
    assert not set(promised) & set(cache.assumed)  # never seen: forgotten after the bound


def test_no_write_leaves_the_binder_once_the_lease_has_run_out() -> None:
    """The Lease runs out while a gang is being bound (its renewals failed): the binder's fence stops
    every further create, bind, eviction and deletion before it is sent — the process exits moments
    later, and the next leader must not find writes of a replica that no longer leads."""
    api = FakeApiServer()
    binder = Binder(api)
    leading = [True]
    binder.may_write = lambda: leading[0]
    pods = [PodWrite("team", f"gang-{i}", "b200-0000", {"metadata": {"name": f"gang-{i}"}}) for i in range(2)]

    async def main() -> None:
        await binder.bind_gang(pods[:1], lambda: True)  # leading: created and bound
        sent = len(api.calls)
        assert sent == 2
        leading[0] = False
        with pytest.raises(BindError, match="no longer holds the Lease"):
            await binder.bind_gang(pods[1:], lambda: True)
        with pytest.raises(BindError, match="no longer holds the Lease"):
            await binder.remove_gang([("team", "gang-0")], evict=True)
        assert len(api.calls) == sent, api.calls[sent:]  # nothing more reached the API server

    asyncio.run(main())


def test_no_job_is_admitted_while_the_binder_holds_max_binds_in_flight_gangs() -> None:
    """Backpressure: with `max_binds_in_flight` gangs admitted and not yet written (the API server is
    the bottleneck), a cycle admits nothing — GPUs promised to pods that will not exist for minutes
    would idle while counting as allocated. Once the binder catches up, admission resumes."""
    api = FakeApiServer()
    scheduler, _cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "next", "team"))
    scheduler.binder.in_flight = scheduler.config.max_binds_in_flight  # as if that many gangs were queued
    cycle_after(scheduler, clock, 0.0)
    assert scheduler.last.binder_full and not [c for c in api.calls if c[1].endswith("/pods")]
    scheduler.binder.in_flight = scheduler.config.max_binds_in_flight // 2 + 1  # still more than half in hand
    cycle_after(scheduler, clock, 1.0)
    assert scheduler.last.binder_full
    scheduler.binder.in_flight = scheduler.config.max_binds_in_flight // 2  # half the room free: admit again
    cycle_after(scheduler, clock, 1.0)
    assert not scheduler.last.binder_full
    assert [c for c in api.calls if c[0] == "POST" and c[1].endswith("/pods")]  # admitted and created


def test_a_cycle_applies_no_more_bindings_than_the_binder_has_room_for() -> None:
    """A cycle may place thousands of jobs at once (a cluster drained by a wave of completions): only as
    many as `max_binds_in_flight` leaves room for are bound; the others stay Pending, nothing promised
    for them, and are placed again by a later cycle."""
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    for name in ("one", "two", "three"):
        scheduler.on_trainingjob("ADDED", tj_json("team", name, "team", gpus=1))
    scheduler.config = scheduler.config.model_copy(update={"max_binds_in_flight": 4})
    scheduler.binder.in_flight = 2  # half in hand: the core runs, and there is room for two gangs
    cycle_after(scheduler, clock, 0.0)
    creates = [c for c in api.calls if c[0] == "POST" and c[1].endswith("/pods")]
    assert len(creates) == 2 and scheduler.last.deferred == 1, (creates, scheduler.last)
    assert len(cache.assumed) == 2  # the deferred job holds no promise
    scheduler.binder.in_flight = 0
    cycle_after(scheduler, clock, 1.0)
    assert len([c for c in api.calls if c[0] == "POST" and c[1].endswith("/pods")]) == 3


def test_bindings_left_for_later_are_shared_out_between_queues() -> None:
    """Room for fewer bindings than the plan has: each queue gets its turn (one each, round-robin in
    the plan's order), so a queue whose jobs come late in the plan is not starved by a busy one."""
    scheduler, _cache, _clock = world(FakeApiServer())
    scheduler.on_queue("ADDED", queue_json("pool", namespaces=["pool"], quota=8))
    for name in ("a", "b", "c"):
        scheduler.on_trainingjob("ADDED", tj_json("team", name, "team", gpus=1))
    scheduler.on_trainingjob("ADDED", tj_json("pool", "gang", "pool", gpus=1))
    plan = [Binding(JobId(key), ()) for key in ("team/a", "team/b", "team/c", "pool/gang")]
    assert [str(b.job_id) for b in scheduler._round_robin(plan, {})] == ["team/a", "pool/gang", "team/b", "team/c"]


def test_a_shared_gpu_whose_old_reservation_is_still_terminating_gets_a_new_one_only_when_it_is_gone() -> None:
    """A fraction runs on GPU 3 of a node whose reservation pod of an earlier sharing is still being deleted
    (the GPU was free for a moment, then shared again). Reservation names are per node and GPU, so a new
    one cannot be created before the old one is gone: the API server answers 409 "object is being deleted".
    The loop waits for the old pod to go instead of posting a create every cycle (the 1,250-node factory
    run showed that churn), then creates the new reservation."""
    api = FakeApiServer()
    scheduler, cache, clock = world(api)
    scheduler.on_trainingjob("ADDED", tj_json("team", "notebook", "team", gpuFraction=0.5))
    raw = replica_pod_json("team", "notebook", 0, "b200-0000", [3], "team", "uid-team-notebook")
    raw["metadata"]["annotations"]["leitstand.dev/gpu-fraction"] = "0.5"
    raw["spec"]["containers"][0]["resources"] = {}
    fraction = pod_record(raw)
    assert fraction is not None
    cache.on_pod("ADDED", fraction.key, None, fraction)
    namespace = scheduler.config.system_namespace
    old = pod_record({
        "metadata": {"name": "gpu-reservation-b200-0000-3", "namespace": namespace, "uid": "old-hold",
                     "creationTimestamp": "2027-01-15T07:00:00Z", "deletionTimestamp": "2027-01-15T08:00:00Z",
                     "labels": {"leitstand.dev/role": "gpu-reservation"},
                     "annotations": {"leitstand.dev/gpus": "3", "leitstand.dev/node": "b200-0000"}},
        "spec": {"schedulerName": "leitstand", "nodeName": "b200-0000",
                 "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"}})
    assert old is not None and old.deleting
    cache.on_pod("ADDED", old.key, None, old)

    def reservation_creates() -> int:
        return sum(1 for method, path, body in api.calls
                   if method == "POST" and path.endswith("/pods") and "gpu-reservation" in str(body))

    cycle_after(scheduler, clock, 0.0)
    cycle_after(scheduler, clock, 5.0)
    assert reservation_creates() == 0  # the old one still holds the name
    cache.on_pod("DELETED", old.key, old, None)
    cycle_after(scheduler, clock, 1.0)
    assert reservation_creates() == 1


class Unanswering:
    """An API server that never answers an Event (a connection timeout, as in a factory run whose
    kube-apiserver stalled) and accepts everything else."""

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        if path.endswith("/events"):
            raise TransportError(method, path, 1, TimeoutError("connection timeout"))
        return (200 if method == "PATCH" else 201), {}


def test_an_event_the_api_server_never_answers_is_dropped_with_a_warning_not_an_unretrieved_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scheduler, _, _ = world(Unanswering())  # type: ignore[arg-type]
    failed: list[BaseException] = []

    async def main() -> None:
        scheduler.on_trainingjob("ADDED", tj_json("team", "no-queue", "nowhere"))  # waits: an Event is due
        scheduler.cycle()
        informing = list(scheduler.reservation_tasks)
        assert informing
        await asyncio.wait(informing, timeout=5)
        failed.extend(e for t in informing if (e := t.exception()) is not None)

    asyncio.run(main())
    assert not failed, failed  # an exception here is what asyncio reported as "never retrieved"
    assert scheduler.inform_failures >= 1
    assert any("not written" in r.getMessage() and "/events" in r.getMessage() for r in caplog.records)
