"""leader: Lease acquisition, renewal, takeover only after a whole lease duration of unchanged record on
the candidate's own clock, stepping down when renewals fail for the renew deadline, release on
shutdown; against a fake Lease API (aiohttp.web on 127.0.0.1) with resourceVersion checks, and an
injected clock that the test moves by hand (real sleeps are only the tiny retry period)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import faulthandler
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from leitstand.operator.service.kubeclient import Credentials, KubeClient
from leitstand.operator.service.leader import LeaderElector, LeaseThread

NS, NAME = "leitstand-system", "leitstand-scheduler"
COLLECTION = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


@dataclass
class FakeLeases:
    lease: dict[str, Any] | None = None
    rv: int = 1
    failing: bool = False
    """Answer every request with 500 (an apiserver that cannot reach etcd)."""
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, holderIdentity written or "") per request."""
    hold_next_put_seconds: float = 0.0
    """Hold the next PUT this long before answering (an apiserver waiting for etcd)."""
    held: int = 0

    def status(self, code: int, reason: str) -> web.Response:
        return web.json_response({"kind": "Status", "code": code, "reason": reason, "message": reason}, status=code)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, ((body or {}).get("spec") or {}).get("holderIdentity", "")))
        if self.failing:
            return self.status(500, "InternalError")
        if request.method == "PUT" and self.hold_next_put_seconds:
            seconds, self.hold_next_put_seconds = self.hold_next_put_seconds, 0.0
            self.held += 1
            await asyncio.sleep(seconds)
            return self.status(504, "Timeout")
        if request.method == "GET":
            return web.json_response(self.lease) if self.lease else self.status(404, "NotFound")
        if request.method == "POST":
            if self.lease:
                return self.status(409, "AlreadyExists")
            return self._store(body, 201)
        if request.method == "PUT":
            if not self.lease:
                return self.status(404, "NotFound")
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                return self.status(409, "Conflict")
            return self._store(body, 200)
        return self.status(405, "MethodNotAllowed")

    def _store(self, body: dict[str, Any], code: int) -> web.Response:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"] = {**body["metadata"], "resourceVersion": str(self.rv), "uid": "lease-uid"}
        self.lease = body
        return web.json_response(body, status=code)

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"].get("holderIdentity")

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None
        return dict(self.lease["spec"])

    def writes(self, identity: str) -> int:
        return sum(1 for method, holder in self.requests if method in ("PUT", "POST") and holder == identity)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replica:
    """One elector with its callbacks recorded."""

    elector: LeaderElector
    task: asyncio.Task[None] | None = None
    started: int = 0
    stopped: int = 0
    work_cancelled: bool = False

    def start(self, work: Callable[[], Any] | None = None) -> None:
        async def on_started_leading() -> None:
            self.started += 1
            try:
                if work is not None:
                    await work()
                else:
                    await asyncio.Event().wait()  # lead until cancelled
            except asyncio.CancelledError:
                self.work_cancelled = True
                raise

        def on_stopped_leading() -> None:
            self.stopped += 1

        self.task = asyncio.create_task(self.elector.run(on_started_leading, on_stopped_leading))

    async def crash(self) -> None:
        """The process dies: no release, the Lease keeps its last record."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.wait({self.task})


@contextlib.asynccontextmanager
async def lease_api(fake: FakeLeases) -> AsyncIterator[KubeClient]:
    app = web.Application()
    app.router.add_route("*", COLLECTION, fake.handle)
    app.router.add_route("*", COLLECTION + "/{name}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = KubeClient(Credentials(server=f"http://{host}:{port}"), retries=0)
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


def replica(client: KubeClient, identity: str, clock: FakeClock) -> Replica:
    elector = LeaderElector(
        client, NS, NAME, identity, lease_seconds=15, renew_deadline_seconds=10, retry_seconds=0.01, clock=clock
    )
    return Replica(elector)


async def until(check: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.002)


async def leading(client: KubeClient, identity: str, clock: FakeClock) -> Replica:
    """A replica started and waited for until it holds the Lease."""
    started = replica(client, identity, clock)
    started.start()
    await until(lambda: started.elector.is_leader)
    return started


async def requests_pass(fake: FakeLeases, count: int = 5) -> None:
    """Let the electors make `count` more requests (real time passes, the fake clock does not)."""
    target = len(fake.requests) + count
    await until(lambda: len(fake.requests) >= target)


async def renewed_by(fake: FakeLeases, identity: str) -> None:
    target = fake.writes(identity) + 1
    await until(lambda: fake.writes(identity) >= target)


@pytest.fixture(autouse=True)
def _log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "leitstand.operator.service.leader")


@pytest.fixture(autouse=True)
def _watchdog() -> Any:
    """Tests here hung under heavy load until the elector stopped using asyncio.wait_for (Python 3.11's
    swallows a cancellation that arrives as the awaited attempt completes, so a cancelled elector
    renewed on and `crash()` waited forever). Should anything hang again, rather than stall the
    whole test command: print every thread's stack and end the run after 120 s."""
    faulthandler.dump_traceback_later(120, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_acquires_a_missing_lease_and_renews_it() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a = replica(client, "a", clock)
            a.start()
            await until(lambda: a.elector.is_leader and a.started == 1)
            spec = fake.spec
            assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0
            assert spec["leaseDurationSeconds"] == 15 and spec["acquireTime"].endswith("Z")
            first_renew = spec["renewTime"]
            for _ in range(30):  # 30 s of our clock, renewing all the while
                clock.now += 1
                await requests_pass(fake, 2)
                assert a.elector.is_leader
            assert fake.spec["renewTime"] > first_renew and fake.spec["acquireTime"] == spec["acquireTime"]
            # a leader renews with a PUT over what it last wrote: no GET in between
            methods = [m for m, _ in fake.requests]
            assert methods[:2] == ["GET", "POST"] and set(methods[2:]) == {"PUT"}
            await a.crash()
            assert a.stopped == 1 and a.work_cancelled

    asyncio.run(main())


def test_takes_over_only_after_the_record_was_unchanged_for_a_lease_duration() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a, b = await leading(client, "a", clock), replica(client, "b", clock)
            b.start()
            await until(lambda: b.elector.holder == "a")
            # While a renews, b never takes over however much time passes.
            for _ in range(40):
                clock.now += 1
                await renewed_by(fake, "a")
                await requests_pass(fake, 2)
                assert not b.elector.is_leader and fake.holder == "a"
            await a.crash()
            await requests_pass(fake, 3)  # b reads the now frozen record
            clock.now += 14.9
            await requests_pass(fake, 10)
            assert fake.holder == "a" and b.started == 0  # not before a whole lease duration
            clock.now += 0.2
            await until(lambda: b.elector.is_leader and b.started == 1)
            spec = fake.spec
            assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
            await b.crash()

    asyncio.run(main())


def test_steps_down_when_renewals_fail_for_the_renew_deadline() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a = await leading(client, "a", clock)
            await requests_pass(fake, 3)
            fake.failing = True
            await requests_pass(fake, 3)  # these renewals failed; the last success was at `now`
            clock.now += 9.9
            await requests_pass(fake, 5)
            assert a.elector.is_leader and a.stopped == 0
            clock.now += 0.2
            assert not a.elector.is_leader  # at once, before the loop even runs again
            assert a.task is not None
            await asyncio.wait_for(a.task, 5)  # run() returns: the process would exit now
            assert a.stopped == 1 and a.work_cancelled

    asyncio.run(main())


def test_steps_down_when_someone_else_holds_the_lease() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a = await leading(client, "a", clock)
            assert fake.lease is not None
            fake.lease["spec"]["holderIdentity"] = "intruder"  # e.g. a manual edit
            fake.rv += 1
            fake.lease["metadata"]["resourceVersion"] = str(fake.rv)
            assert a.task is not None
            await asyncio.wait_for(a.task, 5)
            assert a.stopped == 1 and not a.elector.is_leader and fake.holder == "intruder"

    asyncio.run(main())


def test_release_hands_the_lease_over_without_waiting() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a, b = await leading(client, "a", clock), replica(client, "b", clock)
            b.start()
            await until(lambda: b.elector.holder == "a")
            assert await a.elector.release()
            assert a.stopped == 1 and a.work_cancelled and not a.elector.is_leader
            await until(lambda: b.elector.is_leader)  # no clock movement needed
            assert fake.spec["holderIdentity"] == "b" and fake.spec["leaseTransitions"] == 1
            assert not await a.elector.release()  # no longer ours: nothing written
            assert fake.holder == "b"
            await b.crash()

    asyncio.run(main())


def test_release_succeeds_when_a_cancelled_renewal_was_written_after_all() -> None:
    """The renewal in flight when release() cancels the elector may still reach the API server: the
    elector's copy of the Lease is then stale and the release PUT meets 409. It reads the Lease again
    and, still the holder, hands it back (found as a flaky LeaseThread test in a fresh-clone run)."""
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            a = await leading(client, "a", clock)
            await a.crash()  # the elector stops (its copy of the Lease stays as it was)
            assert fake.lease is not None and fake.holder == "a"
            fake.rv += 1  # written again by us (the cancelled renewal), the answer never read
            fake.lease["metadata"]["resourceVersion"] = str(fake.rv)
            assert await a.elector.release()
            assert fake.holder == ""

    asyncio.run(main())


def test_two_candidates_for_a_missing_lease_elect_exactly_one() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def main() -> None:
        async with lease_api(fake) as client:
            replicas = [replica(client, name, clock) for name in "abcd"]
            for r in replicas:
                r.start()
            await until(lambda: any(r.elector.is_leader for r in replicas))
            await requests_pass(fake, 20)
            assert [r.elector.identity for r in replicas if r.elector.is_leader] == [fake.holder]
            assert sum(r.started for r in replicas) == 1
            for r in replicas:
                await r.crash()

    asyncio.run(main())


def test_failing_work_ends_leadership_and_raises() -> None:
    fake, clock = FakeLeases(), FakeClock()

    async def broken() -> None:
        raise RuntimeError("scheduler crashed")

    async def main() -> None:
        async with lease_api(fake) as client:
            a = replica(client, "a", clock)
            a.start(broken)
            assert a.task is not None
            with pytest.raises(RuntimeError, match="scheduler crashed"):
                await asyncio.wait_for(a.task, 5)
            assert a.stopped == 1 and not a.elector.is_leader

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lease_seconds": 10, "renew_deadline_seconds": 10}, "renew_deadline_seconds"),
        ({"renew_deadline_seconds": 2, "retry_seconds": 2}, "retry_seconds"),
        ({"lease_seconds": 15.5}, "whole number"),
    ],
)
def test_timing_parameters_are_checked(kw: dict[str, Any], match: str) -> None:
    client = KubeClient(Credentials(server="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match=match):
        LeaderElector(client, NS, NAME, "a", **kw)


def test_a_renewal_the_server_holds_is_cut_off_and_sent_again_before_the_deadline() -> None:
    """An API server waiting for a restarting etcd holds a request; a second renewal on a new request
    succeeds once it answers again. Real clock: renew deadline 4 s, the held PUT would take 8 s; the
    attempt is cut off after 2 s and sent again 0.2 s later."""
    fake = FakeLeases()

    async def main() -> None:
        async with lease_api(fake) as client:
            elector = LeaderElector(client, NS, NAME, "a", lease_seconds=6, renew_deadline_seconds=4.0,
                                    retry_seconds=0.2)
            a = Replica(elector)
            a.start()
            await until(lambda: elector.is_leader)
            fake.hold_next_put_seconds = 8.0
            await until(lambda: fake.held == 1)
            held_at = asyncio.get_running_loop().time()
            puts = sum(1 for m, _ in fake.requests if m == "PUT")
            await until(lambda: sum(1 for m, _ in fake.requests if m == "PUT") > puts, 6.0)  # sent again
            await asyncio.sleep(max(0.0, held_at + 4.5 - asyncio.get_running_loop().time()))
            assert elector.is_leader and a.stopped == 0  # past the deadline counted from the held renewal
            await a.crash()

    asyncio.run(main())


class LeaseServerThread:
    """The fake Lease API on a thread of its own, so it answers while the test's main thread blocks."""

    def __init__(self, fake: FakeLeases) -> None:
        self.fake = fake
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", COLLECTION, self.fake.handle)
        app.router.add_route("*", COLLECTION + "/{name}", self.fake.handle)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> LeaseServerThread:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def leading_lease_thread(url: str, identity: str, events: list[str]) -> LeaseThread:
    """A started LeaseThread (lease 3 s, renew deadline 2 s, retry 0.2 s) once it leads."""
    lease = LeaseThread(
        lambda: KubeClient(Credentials(server=url), retries=0),
        lambda client: LeaderElector(client, NS, NAME, identity, lease_seconds=3, renew_deadline_seconds=2.0,
                                     retry_seconds=0.2),
        lambda: events.append("started"),
        lambda: events.append("stopped"),
    )
    lease.start()
    deadline = time.monotonic() + 10
    while not lease.is_leader and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lease.is_leader
    return lease


def test_the_lease_thread_renews_while_the_main_thread_is_busy_for_longer_than_the_renew_deadline() -> None:
    """A scheduling cycle can hold the main event loop for seconds (a large reclaim at 10,000 running
    jobs: 9.7 s). The Lease is renewed on a thread of its own, so it is not lost meanwhile; an
    elector on the main loop would have missed the 2 s renew deadline twice over."""
    fake, events = FakeLeases(), []
    with LeaseServerThread(fake) as server:
        lease = leading_lease_thread(server.url, "a", events)
        assert events == ["started"]
        writes = fake.writes("a")
        busy_until = time.monotonic() + 4.0  # the main thread computes in Python for 2x the renew deadline
        while time.monotonic() < busy_until:
            sum(range(10_000))
        assert lease.is_leader and events == ["started"], events
        assert fake.writes("a") >= writes + 5  # renewed every retry period meanwhile
        assert lease.release(5.0)
    assert fake.holder == "" and events == ["started", "stopped"]
    assert not lease.thread.is_alive()


def test_the_lease_thread_reports_a_lost_lease_on_its_own_thread() -> None:
    """No renewal succeeds for the renew deadline (the API server cannot reach etcd): `on_stopped` runs
    on the lease thread — `leitstand run` exits from there at once — and the fence is down."""
    fake, events = FakeLeases(), []
    with LeaseServerThread(fake) as server:
        lease = leading_lease_thread(server.url, "a", events)
        fake.failing = True
        deadline = time.monotonic() + 10
        while "stopped" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events == ["started", "stopped"] and not lease.is_leader
        lease.release(5.0)
