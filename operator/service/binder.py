"""The binder: turns a committed plan into API writes — pods created and bound, gangs evicted or deleted,
GPU reservation pods kept in step — with bounded concurrency, off the cycle's critical path.

Called by `loop`, which starts one task per gang (`bind_gang`, `remove_gang`) and keeps the cache's
promises (`ClusterCache.assume` / `forget`) in step with what the binder reports. Every write is
idempotent where Kubernetes allows it (a pod name is deterministic: a retry meets 409 and moves on),
so a crash between two writes leaves something the next leader completes or rolls back, never a
GPU booked twice.

A gang's pods are created and bound only after (1) the pods of the gangs evicted for it are gone from
the API server and (2) any older pods of the same job are gone; then all replicas are created, then
all are bound. At most `gang_concurrency` gangs are between their first create and their last bind at
a time, so a wave of a thousand admissions binds as it goes (like a worker pool) instead of queueing a
thousand creates in the client ahead of the first bind. If any write fails, every pod created for this
attempt is deleted and the job waits
`bind_retry_seconds` before it is tried again: a bind that keeps failing never blocks other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leitstand.operator.service.status import MERGE_PATCH, Requester

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodWrite:
    namespace: str
    name: str
    node: str
    manifest: Mapping[str, Any] | None
    """The pod to create; None when the pod exists already (a plain pod: annotate, then bind)."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """For an existing pod: annotations to merge before binding."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"


class BindError(RuntimeError):
    """A write of a gang failed; the message says which pod, which call and what the server said."""


@dataclass
class BinderStats:
    binds: int = 0
    creates: int = 0
    evictions: int = 0
    deletes: int = 0
    failures: int = 0
    bind_seconds: list[float] = field(default_factory=list)


class Binder:
    def __init__(self, client: Requester, *, wait_timeout_seconds: float = 300.0, gang_concurrency: int = 64) -> None:
        self.client = client
        self.stats = BinderStats()
        self.changed = asyncio.Condition()
        self.waiting = 0
        """Gangs waiting for room (`wait_until`); pod changes need to wake nobody when it is 0."""
        self._gangs = asyncio.Semaphore(gang_concurrency)
        self.active = 0
        """Gangs between their first create and their last bind (status writes yield to them)."""
        self.in_flight = 0
        """Gangs handed to `start` and not finished: waiting for room, for a slot, or being written.
        The loop admits no more while this is at `max_binds_in_flight` (backpressure)."""
        self.wait_timeout_seconds = wait_timeout_seconds
        self.may_write: Callable[[], bool] = lambda: True
        """The fence: False once this replica no longer holds the Lease (`LeaseThread.is_leader`);
        checked before every create, bind, eviction and deletion, so a write decided while leading is
        never sent after the Lease ran out (the process exits moments later)."""
        self.bind_listeners: list[Callable[[int, float], None]] = []
        """Called with (pods, seconds from the first create to the last bind) per bound gang (metrics)."""

    async def notify(self) -> None:
        """The cache changed (pods gone): wake the gangs waiting for room."""
        async with self.changed:
            self.changed.notify_all()

    async def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        if ready():
            return
        deadline = time.monotonic() + self.wait_timeout_seconds
        self.waiting += 1
        try:
            async with self.changed:
                while not ready():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BindError(f"gave up after {self.wait_timeout_seconds:.0f} s waiting for {what}")
                    with contextlib.suppress(TimeoutError):  # asyncio.timeout: never swallows a cancellation
                        async with asyncio.timeout(min(remaining, 1.0)):
                            await self.changed.wait()
        finally:
            self.waiting -= 1

    # -- binding ----------------------------------------------------------------------------------

    def start(self, pods: Sequence[PodWrite], ready: Callable[[], bool]) -> asyncio.Task[None]:
        """`bind_gang` as a task, counted in `in_flight` from this moment until it ends."""
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self.bind_gang(pods, ready))
        task.add_done_callback(self._ended)
        return task

    def _ended(self, _task: asyncio.Task[None]) -> None:
        self.in_flight -= 1

    async def bind_gang(self, pods: Sequence[PodWrite], ready: Callable[[], bool]) -> None:
        """Wait for room, then create and bind every pod; on failure delete what this call created."""
        await self.wait_until(ready, "evicted pods and earlier replicas to be gone")
        async with self._gangs:
            self.active += 1
            try:
                await self._create_and_bind(pods)
            finally:
                self.active -= 1

    async def _create_and_bind(self, pods: Sequence[PodWrite]) -> None:
        started = time.monotonic()
        created: list[PodWrite] = []
        try:
            results = await asyncio.gather(*(self._create(p) for p in pods), return_exceptions=True)
            for pod, result in zip(pods, results, strict=True):
                if result is True:
                    created.append(pod)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            bound = await asyncio.gather(*(self._bind(p) for p in pods), return_exceptions=True)
            errors = [r for r in bound if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            self.stats.failures += 1
            await asyncio.gather(*(self.delete_pod(p.namespace, p.name) for p in created), return_exceptions=True)
            raise
        seconds = time.monotonic() - started
        self.stats.bind_seconds.append(seconds)
        for listener in self.bind_listeners:
            listener(len(pods), seconds)
        del self.stats.bind_seconds[:-10_000]

    def _fence(self, what: str) -> None:
        if not self.may_write():
            raise BindError(f"{what}: not sent, this replica no longer holds the Lease")

    async def _create(self, pod: PodWrite) -> bool:
        """True when this call created the pod (so a rollback deletes it)."""
        self._fence(f"creating pod {pod.key}")
        if pod.manifest is None:
            if pod.annotations:
                status, body = await self.client.request(
                    "PATCH", pod.path, {"metadata": {"annotations": dict(pod.annotations)}}, content_type=MERGE_PATCH
                )
                if status >= 300:
                    raise BindError(f"annotating pod {pod.key}: HTTP {status} {_message(body)}")
            return False
        status, body = await self.client.request(
            "POST", f"/api/v1/namespaces/{pod.namespace}/pods", pod.manifest
        )
        if status == 409:
            return False  # created by an earlier attempt of this same plan (deterministic name)
        if status >= 300:
            raise BindError(f"creating pod {pod.key}: HTTP {status} {_message(body)}")
        self.stats.creates += 1
        return True

    async def _bind(self, pod: PodWrite) -> None:
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": pod.node},
        }
        self._fence(f"binding pod {pod.key}")
        status, body = await self.client.request("POST", f"{pod.path}/binding", binding)
        if status in (200, 201):
            self.stats.binds += 1
            return
        if status == 409 and "already assigned" in _message(body):
            # bound by an earlier attempt; the informer tells us where
            return
        raise BindError(f"binding pod {pod.key} to {pod.node}: HTTP {status} {_message(body)}")

    # -- removal ----------------------------------------------------------------------------------

    async def remove_gang(
        self, pods: Sequence[tuple[str, str]], *, evict: bool, force: Collection[tuple[str, str]] = ()
    ) -> None:
        """Evict (through the Eviction API, honouring disruption budgets) or delete every pod.

        Pods in `force` sit on a node that is gone or lost: no kubelet will ever confirm a graceful
        deletion there, so they are deleted at once (grace period 0), as the pod garbage collector
        would do much later; until then their names (deterministic per replica) block the requeued
        gang's new pods.
        """
        action = self.evict_pod if evict else self.delete_pod
        await asyncio.gather(
            *(self.delete_pod(ns, name, force=True) if (ns, name) in force else action(ns, name) for ns, name in pods)
        )

    async def evict_pod(self, namespace: str, name: str) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/eviction"
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        for attempt in range(30):
            self._fence(f"evicting pod {namespace}/{name}")
            status, reply = await self.client.request("POST", path, body)
            if status in (200, 201, 404):
                self.stats.evictions += status != 404
                return
            if status == 429:  # a PodDisruptionBudget says not now
                await asyncio.sleep(min(2.0 * (attempt + 1), 10.0))
                continue
            log.warning("evicting %s/%s: HTTP %s %s; deleting it instead", namespace, name, status, _message(reply))
            break
        await self.delete_pod(namespace, name)

    async def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0} if force else None
        self._fence(f"deleting pod {namespace}/{name}")
        status, reply = await self.client.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", options)
        if status in (200, 202, 404):
            self.stats.deletes += status != 404
            return
        log.warning("deleting pod %s/%s: HTTP %s %s", namespace, name, status, _message(reply))


def _message(body: Any) -> str:
    if isinstance(body, Mapping):
        return str(body.get("message", body.get("reason", "")))[:300]
    return str(body)[:300]
