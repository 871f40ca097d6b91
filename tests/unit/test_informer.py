"""informer: paginated list, watch, bookmarks, 410 relists with synthesised events, resumption after a
dropped connection, suppression of MODIFIED events that do not change the slim record, against a
fake API server (aiohttp.web on 127.0.0.1) that keeps objects, resourceVersions and an event history
it can compact, as kube-apiserver's watch cache does."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from leitstand.operator.service.informer import Informer
from leitstand.operator.service.kubeclient import Credentials, KubeClient

PATH = "/api/v1/pods"


@dataclass
class FakePods:
    """Pods with resourceVersions, a compactable history and live watch streams."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rv: int = 100
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    oldest_rv: int = 0
    """Watches from a resourceVersion older than this get 410 Gone."""
    watchers: list[asyncio.Queue[tuple[str, Any]]] = field(default_factory=list)
    list_calls: list[dict[str, str]] = field(default_factory=list)
    watch_calls: list[dict[str, str]] = field(default_factory=list)
    fail_lists: int = 0
    closed: bool = False
    gone_as_event: bool = False
    """Answer a too-old watch with 200 and an ERROR event (as the watch cache does) instead of HTTP 410."""

    # -- changes made by the test

    def put(self, namespace: str, name: str, node: str = "", heartbeat: int = 0, *, notify: bool = True) -> None:
        key = f"{namespace}/{name}"
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.rv += 1
        obj = {
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self.rv), "uid": f"uid-{name}"},
            "spec": {"nodeName": node},
            "status": {"heartbeat": heartbeat},
        }
        self.objects[key] = obj
        self._record(kind, obj, notify)

    def remove(self, namespace: str, name: str, *, notify: bool = True) -> None:
        obj = self.objects.pop(f"{namespace}/{name}")
        self.rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self._record("DELETED", obj, notify)

    def _record(self, kind: str, obj: dict[str, Any], notify: bool) -> None:
        if notify:
            self.history.append((self.rv, kind, copy.deepcopy(obj)))
            for queue in self.watchers:
                queue.put_nowait(("event", {"type": kind, "object": obj}))

    def compact(self) -> None:
        """Forget the history: only watches from the current resourceVersion on are served."""
        self.history.clear()
        self.oldest_rv = self.rv

    def close(self) -> None:
        """End every watch, including those whose request is still on its way."""
        self.closed = True
        self.send("end")

    def send(self, message: str, payload: Any = None) -> None:
        for queue in self.watchers:
            queue.put_nowait((message, payload))

    # -- HTTP

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if query.get("watch") == "1":
            return await self._watch(request, query)
        self.list_calls.append(query)
        if self.fail_lists:
            self.fail_lists -= 1
            return web.json_response({"kind": "Status", "code": 500, "reason": "InternalError"}, status=500)
        items = sorted(self.objects.values(), key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        limit = int(query.get("limit", 0)) or len(items)
        start, snapshot = 0, self.rv
        if "continue" in query:
            start, snapshot = (int(x) for x in query["continue"].split(":"))
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(snapshot)}
        if start + limit < len(items):
            meta["continue"] = f"{start + limit}:{snapshot}"
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        self.watch_calls.append(query)
        since = int(query.get("resourceVersion") or 0)
        gone = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 410,
            "reason": "Expired",
            "message": f"too old resource version: {since} ({self.oldest_rv})",
        }
        if since < self.oldest_rv and not self.gone_as_event:
            return web.json_response(gone, status=410)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        if since < self.oldest_rv:
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return resp
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        for rv, kind, obj in self.history:  # replay, then go live (no await in between: no gap)
            if rv > since:
                queue.put_nowait(("event", {"type": kind, "object": obj}))
        self.watchers.append(queue)
        if self.closed:
            queue.put_nowait(("end", None))
        try:
            while True:
                message, payload = await queue.get()
                if message == "event":
                    await resp.write(json.dumps(payload).encode() + b"\n")
                elif message == "bookmark":
                    event = {
                        "type": "BOOKMARK",
                        "object": {"kind": "Pod", "metadata": {"resourceVersion": str(self.rv)}},
                    }
                    await resp.write(json.dumps(event).encode() + b"\n")
                elif message == "error410":
                    await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                    return resp  # kube-apiserver ends the stream after an ERROR event
                elif message == "drop":
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                elif message == "end":  # the server-side timeoutSeconds ran out
                    return resp
        finally:
            self.watchers.remove(queue)


@dataclass(frozen=True, slots=True)
class SlimPod:
    uid: str
    node: str


def slim(obj: dict[str, Any]) -> SlimPod | None:
    if obj["metadata"]["namespace"] == "ignored":
        return None
    return SlimPod(obj["metadata"]["uid"], obj["spec"]["nodeName"])


@contextlib.asynccontextmanager
async def started(
    fake: FakePods,
    transform: Callable[[dict[str, Any]], SlimPod | None] = slim,
    also: Callable[[str, str, Any, Any], None] | None = None,
    **informer_kw: Any,
) -> AsyncIterator[tuple[Informer[SlimPod], list[tuple[str, str, SlimPod | None, SlimPod | None]]]]:
    app = web.Application()
    app.router.add_get(PATH, fake.list_or_watch)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = KubeClient(Credentials(server=f"http://{host}:{port}"))
    events: list[tuple[str, str, SlimPod | None, SlimPod | None]] = []

    def on_event(kind: str, key: str, old: SlimPod | None, new: SlimPod | None) -> None:
        events.append((kind, key, old, new))
        if also is not None:
            also(kind, key, old, new)

    informer_kw.setdefault("backoff_initial_seconds", 0.01)
    informer = Informer(client, PATH, transform, on_event, name="pods", **informer_kw)
    task = asyncio.create_task(informer.run())
    try:
        await until(informer.synced.is_set)
        yield informer, events
    finally:
        informer.stop()
        await asyncio.wait_for(task, 5)  # run() returns (not raises) after stop()
        fake.close()
        await client.close()
        await runner.cleanup()


async def until(check: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.005)


def pod(name: str, node: str = "") -> SlimPod:
    return SlimPod(f"uid-{name}", node)


def populated(n: int) -> FakePods:
    fake = FakePods()
    for i in range(n):
        fake.put("ns", f"p{i}")
    fake.compact()  # the list, not the history, is the way to see these
    return fake


def run(coro: Any) -> None:
    asyncio.run(coro)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, "leitstand.operator.service.informer")
    yield


def test_lists_in_pages_then_watches_adds_modifies_and_deletes() -> None:
    fake = populated(7)
    fake.put("ignored", "other")  # transform returns None: never stored, never reported

    async def main() -> None:
        async with started(fake, page_size=3) as (informer, events):
            assert [c.get("continue") for c in fake.list_calls] == [None, "3:108", "6:108"]
            assert {c["limit"] for c in fake.list_calls} == {"3"}
            assert events == [("ADDED", f"ns/p{i}", None, pod(f"p{i}")) for i in range(7)]
            assert informer.resource_version == "108"
            assert sorted(informer.store) == [f"ns/p{i}" for i in range(7)]
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            watch = fake.watch_calls[0]
            assert (watch["resourceVersion"], watch["allowWatchBookmarks"]) == ("108", "true")
            assert 300 <= int(watch["timeoutSeconds"]) <= 360
            fake.put("ns", "new")
            fake.put("ns", "p1", node="b200-0001")
            fake.remove("ns", "p2")
            fake.put("ignored", "other", node="x")
            await until(lambda: len(events) == 3)
            assert events == [
                ("ADDED", "ns/new", None, pod("new")),
                ("MODIFIED", "ns/p1", pod("p1"), pod("p1", "b200-0001")),
                ("DELETED", "ns/p2", pod("p2"), None),
            ]
            await until(lambda: informer.resource_version == str(fake.rv))
            assert informer.store["ns/p1"] == pod("p1", "b200-0001") and "ns/p2" not in informer.store
            assert informer.counters.relists == 1 and informer.counters.events == 4

    run(main())


def test_modified_events_with_an_equal_slim_record_are_suppressed() -> None:
    fake = populated(3)

    async def main() -> None:
        async with started(fake) as (informer, events):
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            for beat in range(1, 51):  # heartbeats: status changes the slim record does not hold
                fake.put("ns", "p0", heartbeat=beat)
            fake.put("ns", "p1", node="n1")
            await until(lambda: len(events) == 1)
            await until(lambda: informer.resource_version == str(fake.rv))
            assert events == [("MODIFIED", "ns/p1", pod("p1"), pod("p1", "n1"))]
            assert informer.counters.suppressed == 50 and informer.counters.events == 51

    run(main())


def test_bookmarks_advance_the_resource_version_without_events() -> None:
    fake = populated(2)

    async def main() -> None:
        async with started(fake) as (informer, events):
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            fake.put("ignored", "x", notify=False)  # some other change moved the rv on
            fake.send("bookmark")
            await until(lambda: informer.counters.bookmarks == 1)
            assert informer.resource_version == str(fake.rv)
            assert events == []

    run(main())


@pytest.mark.parametrize("how", ["error-event", "http-410-on-resume", "error-event-on-resume"])
def test_410_forces_a_relist_that_reports_the_differences(how: str) -> None:
    fake = populated(4)

    async def main() -> None:
        async with started(fake, page_size=2) as (informer, events):
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            # Changes the watch never delivers (they happened while the history was compacted away).
            fake.remove("ns", "p1", notify=False)
            fake.put("ns", "p2", node="n2", notify=False)
            fake.put("ns", "p3", heartbeat=9, notify=False)  # equal slim record: no event after the relist
            fake.put("ns", "p9", notify=False)
            fake.compact()
            if how == "error-event":
                fake.send("error410")
            else:
                fake.gone_as_event = how == "error-event-on-resume"
                fake.send("drop")  # the watch resumes from its old rv, which is now too old
            await until(lambda: informer.counters.relists == 2)
            assert sorted(events) == sorted(
                [
                    ("DELETED", "ns/p1", pod("p1"), None),
                    ("MODIFIED", "ns/p2", pod("p2"), pod("p2", "n2")),
                    ("ADDED", "ns/p9", None, pod("p9")),
                ]
            )
            assert events[0][0] == "DELETED"  # deletions first: capacity is freed before it is taken
            assert informer.counters.gone == 1
            assert informer.resource_version == str(fake.rv)
            assert informer.store == {k: slim(o) for k, o in fake.objects.items()}
            await until(lambda: len(fake.watchers) == 1)  # watching again, from the fresh list
            events.clear()
            fake.put("ns", "p0", node="n0")
            await until(lambda: events == [("MODIFIED", "ns/p0", pod("p0"), pod("p0", "n0"))])

    run(main())


def test_dropped_connection_resumes_from_the_last_resource_version_without_relisting() -> None:
    fake = populated(2)

    async def main() -> None:
        async with started(fake) as (informer, events):
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            fake.put("ns", "p0", node="a")
            await until(lambda: len(events) == 1)
            seen_rv = informer.resource_version
            fake.send("drop")
            await until(lambda: not fake.watchers)
            fake.put("ns", "p1", node="b")  # while nobody watches: kept in the history
            fake.put("ns", "late")
            await until(lambda: len(events) == 3)
            assert events[1:] == [
                ("MODIFIED", "ns/p1", pod("p1"), pod("p1", "b")),
                ("ADDED", "ns/late", None, pod("late")),
            ]
            assert fake.watch_calls[-1]["resourceVersion"] == seen_rv
            assert informer.counters.relists == 1 and informer.counters.errors == 1
            # the server ending the watch normally (timeoutSeconds) resumes too, and is no error
            fake.send("end")
            await until(lambda: informer.counters.watches == 3 and len(fake.watchers) == 1)
            assert informer.counters.errors == 1

    run(main())


def test_a_silent_watch_is_restarted_after_the_inactivity_timeout() -> None:
    fake = populated(1)

    async def main() -> None:
        async with started(fake, inactivity_timeout_seconds=0.2) as (informer, _):
            await until(lambda: informer.counters.inactivity_restarts >= 1 and informer.counters.watches >= 2)
            assert informer.counters.relists == 1 and informer.counters.errors == 0

    run(main())


def test_transform_none_drops_an_object_and_reports_it_deleted() -> None:
    fake = populated(1)

    def out_of_scope_when_gone(obj: dict[str, Any]) -> SlimPod | None:
        return None if obj["spec"]["nodeName"] == "gone" else slim(obj)  # e.g. a pod that finished

    async def main() -> None:
        async with started(fake, out_of_scope_when_gone) as (_, events):
            events.clear()
            await until(lambda: len(fake.watchers) == 1)
            fake.put("ns", "p0", node="gone")
            fake.put("ns", "p0", node="back")
            fake.remove("ns", "p0")
            await until(lambda: len(events) == 3)
            assert [e[0] for e in events] == ["DELETED", "ADDED", "DELETED"]

    run(main())


def test_failed_list_backs_off_and_callback_errors_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    fake = populated(2)
    fake.fail_lists = 2

    app_events: list[str] = []

    def broken(kind: str, key: str, old: Any, new: Any) -> None:
        if kind == "MODIFIED":
            app_events.append(key)
            if key == "ns/p0":
                raise RuntimeError("consumer bug")

    async def main() -> None:
        async with started(fake, also=broken) as (informer, _):
            assert informer.counters.errors == 2 and len(fake.list_calls) == 3
            await until(lambda: len(fake.watchers) == 1)
            fake.put("ns", "p0", node="x")
            fake.put("ns", "p1", node="y")
            await until(lambda: app_events == ["ns/p0", "ns/p1"])
            assert informer.counters.callback_errors == 1
            assert informer.store["ns/p0"] == pod("p0", "x")  # the store still follows the server

    run(main())
    assert "on_event(MODIFIED, ns/p0) failed" in caplog.text


def test_cancelling_run_raises_but_stop_returns() -> None:
    fake = populated(1)

    async def main() -> None:
        app = web.Application()
        app.router.add_get(PATH, fake.list_or_watch)
        runner = web.AppRunner(app, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        client = KubeClient(Credentials(server=f"http://{host}:{port}"))
        informer = Informer(client, PATH, slim, lambda *a: None, name="pods")
        task = asyncio.create_task(informer.run())
        await until(informer.synced.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.close()
        await client.close()
        await runner.cleanup()

    run(main())


@pytest.mark.parametrize("gone_as_event", [False, True])
def test_a_server_that_answers_every_watch_with_410_does_not_cause_a_tight_list_loop(gone_as_event: bool) -> None:
    fake = populated(2)
    fake.oldest_rv = 10**9  # every watch is "too old"
    fake.gone_as_event = gone_as_event

    async def main() -> None:
        async with started(fake) as (informer, events):
            await asyncio.sleep(0.4)
            # backoff 0.01, 0.02, 0.04, ... s between list+watch rounds: about six rounds, not thousands
            assert 3 <= len(fake.list_calls) <= 10
            assert informer.counters.gone == len(fake.watch_calls)
            assert len(events) == 2  # the relists found nothing new to report

    run(main())
