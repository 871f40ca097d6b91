"""TrainingJob and Queue status, and Kubernetes Events: what the service tells tenants and engineers.

Called by `loop` (it sets what each object's status should be, every cycle) and flushed by the loop's
writer task: one merge-patch to `/status` per changed object, at most one in flight per object, a
newer wish replacing an older one that was not sent yet. The service is the only writer of these
status fields, so the book (initialised from the object on first sight, which is what makes counters
such as `preemptions` survive a restart) is authoritative while this process leads.

Events: at most one per object per change of reason, so a job that waits for an hour produces one
Event, not one per cycle.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

CONDITION_TYPES = ("Admitted", "Running", "Finished", "Preempted")


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

    def __init__(self, client: Requester, concurrency: int = 16) -> None:
        self.client = client
        self.desired: dict[str, dict[str, Any]] = {}
        self.written: dict[str, dict[str, Any]] = {}
        self.uids: dict[str, str] = {}
        self._inflight: set[str] = set()
        self._sem = asyncio.Semaphore(concurrency)
        self._said: dict[str, tuple[str, str]] = {}
        self.errors = 0
        self.writes = 0

    def view(self, path: str, uid: str, observed: Mapping[str, Any] | None) -> dict[str, Any]:
        """The status to edit for the object at `path` (created from `observed` on first sight)."""
        if self.uids.get(path) != uid:
            self.uids[path] = uid
            start = copy.deepcopy(dict(observed or {}))
            self.desired[path] = start
            self.written[path] = copy.deepcopy(start)
            self._said.pop(path, None)
        return self.desired[path]

    def forget(self, path: str) -> None:
        for table in (self.desired, self.written, self.uids, self._said):
            table.pop(path, None)

    def dirty(self) -> list[str]:
        return [p for p, want in self.desired.items() if want != self.written.get(p) and p not in self._inflight]

    async def flush(self) -> None:
        tasks = [asyncio.create_task(self._write(path)) for path in self.dirty()]
        if tasks:
            await asyncio.gather(*tasks)

    async def _write(self, path: str) -> None:
        self._inflight.add(path)
        want = copy.deepcopy(self.desired[path])
        before = self.written.get(path, {})
        patch: dict[str, Any] = {k: v for k, v in want.items() if before.get(k) != v}
        for key in before:
            if key not in want:
                patch[key] = None
        try:
            async with self._sem:
                status, body = await self.client.request(
                    "PATCH", f"{path}/status", {"status": patch}, content_type=MERGE_PATCH
                )
            if status == 404:
                self.forget(path)
                return
            if status >= 300:
                self.errors += 1
                log.warning("status of %s not written: HTTP %s %s", path, status, _message(body))
                return
            self.writes += 1
            self.written[path] = want
        finally:
            self._inflight.discard(path)

    # -- conditions and events ------------------------------------------------------------------

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
