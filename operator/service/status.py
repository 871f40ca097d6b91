"""TrainingJob and Queue status, and Kubernetes Events: what the service tells tenants and engineers.

Called by `loop` (it sets what each object's status should be, every cycle) and flushed by the loop's
writer task: one merge-patch to `/status` per changed object, at most one in flight per object, a
newer wish replacing an older one that was not sent yet. The service is the only writer of these
status fields, so the book (initialised from the object on first sight, which is what makes counters
such as `preemptions` survive a restart) is authoritative while this process leads.

A write can be held (`hold`): a just-admitted job's "Admitted" status waits a few seconds, so that
in the common case the next thing to say ("Running") goes out in the same write. A status merge-patch
costs kube-apiserver ~3.5-4.5 ms of CPU (more than a pod create and bind together; measured in
docs/operator-throughput.md), so two writes per admission were the largest API cost a job added.

While the binder has gangs between create and bind, status writes yield to binds: at most two are in
flight (else sixteen) — binding is the critical path, and a status write costs the API server more
than a bind — as long as no wish has waited longer than `LAG_BOUND_SECONDS`. Past that bound two more
writers join for every further `LAG_BOUND_SECONDS` the oldest wish has waited (up to sixteen), and
fall back as the backlog drains (`busy_limit`). With a fixed two, the full factory hour
(docs/factory.md, round four) kept binding gangs the whole hour and the backlog grew to ~20,000
statuses, the oldest 23 minutes behind: the binds' priority must not mean that tenants read status
from twenty minutes ago.

Only objects whose status was handed out for editing (`view`, `touch`) since the last flush are
compared with what was written: a flush costs what changed, not what exists.

Order: a status the API server does not have yet goes first, a change of phase or reason next, a
refreshed message last — but each wish ages: it is ranked by the moment it became due plus
`AGING_SECONDS` per step of that order, so a refresh due a minute ago goes before a new status due now.
Without the aging, the factory hour (docs/factory.md, round three) kept new statuses and changes of
phase coming faster than two writes in flight could send, and the Queue objects' status (always a
refresh after its first write) waited 41 minutes at the median.

Events: at most one per object per change of reason, so a job that waits for an hour produces one
Event, not one per cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from leitstand.operator.service.records import copy_json

log = logging.getLogger(__name__)

CONDITION_TYPES = ("Admitted", "Running", "Finished", "Preempted")
AGING_SECONDS = 30.0
"""One step of urgency (new status, change of phase or reason, refresh) is worth this much waiting: a
wish due this long before another of the next more urgent kind is written first."""
LAG_BOUND_SECONDS = 10.0
"""While binds are in flight, two more status writers are allowed per this many seconds the oldest wish
has waited (`StatusBook.busy_limit`): a lag under it is the price of binds first, a lag past it is not."""


def rfc3339(seconds: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


MERGE_PATCH = "application/merge-patch+json"


class Requester(Protocol):
    """The one call the service makes of `kubeclient.KubeClient`: (HTTP status, decoded body), no raise."""

    async def request(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]: ...


class StatusBook:
    """Desired status per object path; `flush` writes what differs from what was last written."""

    def __init__(self, client: Requester, concurrency: int = 16, *, busy: Callable[[], bool] = lambda: False,
                 busy_concurrency: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        """Monotonic seconds: holds and how long a wish has been due."""
        self.busy = busy
        """True while binds are in flight: then at most `busy_limit()` writes share the client with them."""
        self.concurrency = concurrency
        self.busy_concurrency = busy_concurrency
        self._busy_inflight = 0
        self._busy_turn: asyncio.Condition | None = None
        """Created on first use, inside the event loop that writes."""
        self.desired: dict[str, dict[str, Any]] = {}
        self.written: dict[str, dict[str, Any]] = {}
        self.uids: dict[str, str] = {}
        self._inflight: set[str] = set()
        self._sem = asyncio.Semaphore(concurrency)
        self._said: dict[str, tuple[str, str]] = {}
        self._touched: set[str] = set()
        """Paths whose status may have been edited since the last `dirty()` (or whose write must be retried)."""
        self._held: dict[str, tuple[float, str]] = {}
        """Path → (monotonic deadline, reason): not written before the deadline while the status says reason."""
        self._due: dict[str, float] = {}
        """Path → monotonic moment its current wish became due (not held, differing from what was written)."""
        self._due_heap: list[tuple[float, str]] = []
        """(moment, path) for every moment set in `_due`; entries `_due` no longer has are dropped when they
        reach the top, so the oldest is found without a pass over tens of thousands of waiting statuses."""
        self.errors = 0
        self.writes = 0

    def view(self, path: str, uid: str, observed: Mapping[str, Any] | None) -> dict[str, Any]:
        """The status to edit for the object at `path` (created from `observed` on first sight)."""
        if self.uids.get(path) != uid:
            self.uids[path] = uid
            start = copy_json(dict(observed or {}))
            self.desired[path] = start
            self.written[path] = copy_json(start)
            self._said.pop(path, None)
            self._held.pop(path, None)
            self._due.pop(path, None)
        self._touched.add(path)
        return self.desired[path]

    def touch(self, path: str) -> None:
        """The status of `path` (a dict from an earlier `view`) was edited outside a `view` call."""
        if path in self.desired:
            self._touched.add(path)

    def hold(self, path: str, seconds: float, reason: str) -> None:
        """Do not write `path` for `seconds` while its status still says `reason` (a newer reason goes out
        at once, and the held one with it)."""
        self._held[path] = (self.clock() + seconds, reason)
        self._touched.add(path)

    def forget(self, path: str) -> None:
        for table in (self.desired, self.written, self.uids, self._said, self._held, self._due):
            table.pop(path, None)
        self._touched.discard(path)

    def dirty(self) -> list[str]:
        """Paths to write now; touched paths that are in flight or held stay candidates for later."""
        now = self.clock()
        later: set[str] = set()
        out: list[str] = []
        for path in self._touched:
            want = self.desired.get(path)
            if want is None:
                continue
            if path in self._inflight:
                later.add(path)
                continue
            if want == self.written.get(path):
                self._due.pop(path, None)
                continue
            held = self._held.get(path)
            if held is not None:
                if held[0] > now and want.get("reason") == held[1]:
                    later.add(path)
                    continue
                del self._held[path]
            if path not in self._due:
                self._set_due(path, now)
            out.append(path)
        self._touched = later
        return out

    def held(self) -> int:
        """How many objects have a write held back (a flush is due when their hold ends)."""
        return len(self._held)

    def _urgency(self, path: str) -> int:
        """0: the API server has no status of it yet; 1: its phase or reason changes; 2: a refresh."""
        before = self.written.get(path) or {}
        if not before:
            return 0
        want = self.desired.get(path) or {}
        return 1 if (want.get("phase"), want.get("reason")) != (before.get("phase"), before.get("reason")) else 2

    def _rank(self, path: str) -> float:
        """When the wish is due, pushed back by `AGING_SECONDS` per step of urgency: lowest first."""
        return self._due.get(path, 0.0) + AGING_SECONDS * self._urgency(path)

    def due(self) -> int:
        """How many objects have a wish waiting to be written (as of the last flush)."""
        return len(self._due)

    def oldest_due(self) -> float | None:
        """Seconds the oldest unwritten wish has been due (None: nothing is due)."""
        heap = self._due_heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            return None
        return self.clock() - heap[0][0]

    def _set_due(self, path: str, moment: float) -> None:
        self._due[path] = moment
        if len(self._due_heap) > 2 * len(self._due) + 1024:  # mostly dropped entries below an old one: rebuild
            self._due_heap = [(when, p) for p, when in self._due.items()]
            heapq.heapify(self._due_heap)
        else:
            heapq.heappush(self._due_heap, (moment, path))

    def busy_limit(self) -> int:
        """Writes allowed in flight while binds are: `busy_concurrency`, plus two per whole
        `LAG_BOUND_SECONDS` the oldest wish has waited, at most `concurrency`."""
        lag = self.oldest_due() or 0.0
        extra = 2 * int(lag // LAG_BOUND_SECONDS)
        return min(self.concurrency, self.busy_concurrency + extra)

    def writers_allowed(self) -> int:
        """Status writes allowed in flight at this moment (what the metric shows)."""
        return self.busy_limit() if self.busy() else self.concurrency

    async def flush(self, limit: int | None = None) -> bool:
        """Write what differs, most urgent first (objects without any status, then changes of phase or
        reason, then refreshed messages, each aged by how long it has been due: `_rank`), at most
        `limit` of them; True when more are left for the next call. Without the order and the batch, a
        wave of message refreshes of a thousand waiting jobs kept new jobs statusless for minutes while
        binds held the writes to two in flight (found by `leitstand bench hostile`); without the aging,
        a steady stream of new statuses kept refreshes (the Queues' among them) waiting for good."""
        dirty = self.dirty()
        if limit is not None and len(dirty) > limit:
            paths = heapq.nsmallest(limit, dirty, key=self._rank)
            chosen = set(paths)
            rest = [path for path in dirty if path not in chosen]
            self._touched.update(rest)
        else:
            paths, rest = sorted(dirty, key=self._rank), []
        tasks = [asyncio.create_task(self._write(path)) for path in paths]
        if tasks:
            await asyncio.gather(*tasks)
        return bool(rest)

    async def _write(self, path: str) -> None:
        sent = self.clock()
        self._inflight.add(path)
        want = copy_json(self.desired[path])
        before = self.written.get(path, {})
        patch: dict[str, Any] = {k: v for k, v in want.items() if before.get(k) != v}
        for key in before:
            if key not in want:
                patch[key] = None
        done = False
        try:
            async with self._sem:  # noqa: SIM117 - busy() is asked once a slot is ours, not before
                # binds first: a status write costs the API server more than a bind
                async with self._busy_slot() if self.busy() else contextlib.nullcontext():
                    status, body = await self.client.request(
                        "PATCH", f"{path}/status", {"status": patch}, content_type=MERGE_PATCH
                    )
            if status == 404:
                done = True
                self.forget(path)
                return
            if status >= 300:
                self.errors += 1
                log.warning("status of %s not written: HTTP %s %s", path, status, _message(body))
                return
            done = True
            self.writes += 1
            self.written[path] = want
            if self.desired.get(path) == want:
                self._due.pop(path, None)
            else:  # a newer wish came while this one was on its way: due at most since it was sent
                self._set_due(path, sent)
        finally:
            self._inflight.discard(path)
            if not done and path in self.desired:
                self._touched.add(path)  # tried again at the next flush

    @contextlib.asynccontextmanager
    async def _busy_slot(self) -> AsyncIterator[None]:
        """One of the `busy_limit()` writes allowed beside binds; waits for a write to end while at the
        limit (the limit is looked at again each time one ends, so a growing lag lets more in)."""
        if self._busy_turn is None:
            self._busy_turn = asyncio.Condition()
        turn = self._busy_turn
        async with turn:
            await turn.wait_for(lambda: self._busy_inflight < self.busy_limit() or not self.busy())
            self._busy_inflight += 1
        try:
            yield
        finally:
            async with turn:
                self._busy_inflight -= 1
                turn.notify_all()

    # -- conditions and events ------------------------------------------------------------------

    def last_reason(self, path: str) -> str | None:
        """The reason of the last Event-worthy change recorded for the object (None: nothing yet)."""
        said = self._said.get(path)
        return said[0] if said is not None else None

    def said(self, path: str, reason: str, message: str) -> bool:
        """True (and remembered) when `reason` is new for this object: time for an Event (one per change
        of reason, however often the numbers in the message change)."""
        if self._said.get(path, ("", ""))[0] == reason:
            return False
        self._said[path] = (reason, message)
        return True


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of type `kind` in `status`, or None."""
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), None)


def set_condition(status: dict[str, Any], kind: str, true: bool, reason: str, message: str) -> None:
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    value = "True" if true else "False"
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != value:
                condition["lastTransitionTime"] = rfc3339()
            condition.update(status=value, reason=reason, message=message)
            return
    conditions.append(
        {"type": kind, "status": value, "reason": reason, "message": message, "lastTransitionTime": rfc3339()}
    )


def event_body(involved: Mapping[str, Any], reason: str, message: str, kind: str = "Normal") -> dict[str, Any]:
    """A core/v1 Event about `involved` (apiVersion, kind, name, namespace, uid)."""
    namespace = involved.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved.get('name', 'leitstand')}.", "namespace": namespace},
        "involvedObject": dict(involved),
        "reason": reason,
        "message": message[:1024],
        "type": kind,
        "source": {"component": "leitstand"},
        "reportingComponent": "leitstand",
        "reportingInstance": "leitstand",
        "firstTimestamp": rfc3339(),
        "lastTimestamp": rfc3339(),
        "count": 1,
    }


def _message(body: Any) -> str:
    if isinstance(body, Mapping):
        return str(body.get("message", ""))[:300]
    return str(body)[:300]
