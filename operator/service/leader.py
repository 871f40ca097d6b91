"""Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it.

Holds `LeaderElector` and `LeaseThread` (an elector on a thread of its own, so a long cycle on the
main loop never delays a renewal). The operator service runs one per replica: only the leader runs
the scheduling loop and the binder (`on_started_leading`); when leadership ends
(`on_stopped_leading`) the process exits at once and Kubernetes restarts it, like client-go
controllers do (klog.Fatal), so no half-stopped state survives. It must not decide anything but
who leads, must not write the Lease other than with a resourceVersion-checked PUT (or a POST when it
does not exist), and must not trust the wall clocks of other replicas: `renewTime` is written for
humans, never compared.

The timing argument (defaults: lease 15 s, renew deadline 10 s, retry 2 s):

* A candidate takes a Lease held by someone else only after it has observed the same record
  (holder, renewTime, acquireTime, leaseDurationSeconds, leaseTransitions) unchanged for
  `leaseDurationSeconds` of ITS OWN monotonic clock, counted from the first read that showed the
  record. That read happened after the holder's last successful write W, so the takeover write
  happens at the earliest at W + lease.
* The holder counts its renew deadline from the moment it SENT its last successful write (at or
  before W), and `is_leader` turns False at `sent + renew_deadline` by its own clock, whether or
  not the event loop got to run: it is computed on each read, not set by a timer. So the holder
  stops believing it leads at the latest at W + renew_deadline, which is
  `lease - renew_deadline` (5 s) before any candidate may take over. The margin absorbs clock
  rate differences (ppm), the candidate's read latency and the callbacks' reaction time.
* A renew attempt is cut off after half the renew deadline (at least one retry period) and at the
  deadline (`asyncio.timeout`), so `on_stopped_leading` runs at most about `retry_seconds` after
  `is_leader` became False, and a request the API server holds — measured: a renewal sent while etcd
  restarted was held past the 10 s deadline although etcd answered again after 5 s — leaves time for
  a second attempt on a new request. Code that writes on the leader's
  behalf (the binder) checks `is_leader` before each write.
* A write that was sent but whose answer was lost only moves W later, which delays candidates and
  never the holder's step-down. Every write names the resourceVersion it read, so two replicas
  cannot both succeed in taking the same record.
* Takeover after a crash therefore takes between `lease` and `lease + retry * 1.2` after the
  candidate's first read of the dead holder's record; after `release()` it takes at most one retry
  period (the record then has no holder and a lease of 1 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from leitstand.operator.service.kubeclient import ApiError, KubeClient, KubeClientError

log = logging.getLogger(__name__)

_ATTEMPT_ERRORS = (KubeClientError, aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError)


def _micro_time() -> str:
    """Now as a Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and renews the Lease `namespace/name` for `identity` (unique per replica: pod name
    plus a random suffix). `clock` is a monotonic clock in seconds (injectable for tests)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: float = 15,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise ValueError("identity is empty: use the pod name (plus a random suffix) so replicas differ")
        if int(lease_seconds) != lease_seconds or lease_seconds < 1:
            raise ValueError(f"lease_seconds={lease_seconds}: must be a whole number >= 1 (leaseDurationSeconds)")
        if not 0 < retry_seconds * 1.2 < renew_deadline_seconds < lease_seconds:
            raise ValueError(
                f"need 0 < 1.2 * retry_seconds ({retry_seconds}) < renew_deadline_seconds "
                f"({renew_deadline_seconds}) < lease_seconds ({lease_seconds}): the gap between the last "
                "two is the safety margin against two leaders"
            )
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.holder: str | None = None
        """The holder in the last Lease read or written ("" after a release; None before the first read)."""
        self._client = client
        self._lease_seconds = int(lease_seconds)
        self._renew_deadline = renew_deadline_seconds
        self._retry = retry_seconds
        self._attempt_limit = max(retry_seconds, renew_deadline_seconds / 2)
        """A renew attempt is cut off after this long, so that one request the API server holds (it
        waits for etcd, say) cannot use up the whole renew deadline: the next attempt is a new request."""
        self._clock = clock
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._path = f"{self._collection}/{name}"
        self._lease: dict[str, Any] | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = -math.inf
        self._leading = False
        self._renewed_at = -math.inf
        self._run_task: asyncio.Task[Any] | None = None

    @property
    def is_leader(self) -> bool:
        """True while leading and the last successful renew was sent less than the renew deadline ago."""
        return self._leading and self._clock() < self._renewed_at + self._renew_deadline

    # -- one attempt

    def _observe(self, lease: dict[str, Any], now: float) -> None:
        spec = lease.get("spec") or {}
        record = (
            spec.get("holderIdentity") or "",
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseDurationSeconds"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = now
        self.holder = record[0]

    def _claim(self, lease: dict[str, Any]) -> dict[str, Any]:
        """The Lease with us as holder, renewed now; a takeover sets acquireTime and counts a transition."""
        spec = dict(lease.get("spec") or {})
        now = _micro_time()
        if (spec.get("holderIdentity") or "") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self._lease_seconds, renewTime=now)
        metadata = {k: v for k, v in lease["metadata"].items() if k != "managedFields"}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _took(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        self._observe(lease, self._clock())

    async def _attempt(self) -> float | None:
        """Acquire or renew once. Returns the clock reading taken just before the write that
        succeeded, or None (someone else holds a valid lease, a conflict, or an error status)."""
        if self._leading and self._lease is not None:
            # Fast path of a leader: PUT over the Lease we last wrote, no GET. A 409 means someone
            # wrote in between; fall back to reading it.
            sent = self._clock()
            status, reply = await self._client.request("PUT", self._path, self._claim(self._lease))
            if status == 200:
                self._took(reply)
                return sent
            log.info("lease %s/%s: renew answered %d; re-reading it", self.namespace, self.name, status)
        status, lease = await self._client.request("GET", self._path)
        now = self._clock()
        if status == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self._lease_seconds,
                    "acquireTime": _micro_time(),
                    "renewTime": _micro_time(),
                    "leaseTransitions": 0,
                },
            }
            sent = self._clock()
            status, reply = await self._client.request("POST", self._collection, body)
            if status == 201:
                self._took(reply)
                return sent
            if status != 409:  # 409: another replica created it first
                log.warning(
                    "lease %s/%s: %s",
                    self.namespace,
                    self.name,
                    ApiError.from_reply(status, "POST", self._collection, reply),
                )
            return None
        if status != 200:
            log.warning(
                "lease %s/%s: %s", self.namespace, self.name, ApiError.from_reply(status, "GET", self._path, lease)
            )
            return None
        self._observe(lease, now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self._lease_seconds
            if now < self._observed_at + duration:
                return None  # held, and not yet seen unchanged for a whole lease duration
        sent = self._clock()
        status, reply = await self._client.request("PUT", self._path, self._claim(lease))
        if status == 200:
            if holder != self.identity:
                log.info("lease %s/%s: taken over from %r", self.namespace, self.name, holder)
            self._took(reply)
            return sent
        if status != 409:
            log.warning(
                "lease %s/%s: %s", self.namespace, self.name, ApiError.from_reply(status, "PUT", self._path, reply)
            )
        return None

    # -- the loop

    async def run(
        self, on_started_leading: Callable[[], Awaitable[None]], on_stopped_leading: Callable[[], None]
    ) -> None:
        """Wait for the Lease, then run `on_started_leading()` as a task while renewing it.

        Returns when leadership is lost (no successful renew within the renew deadline, or another
        holder in the Lease); raises what `on_started_leading` raised if it failed. On every end of
        leadership, cancellation included, the work task is cancelled first and then
        `on_stopped_leading()` is called. `on_started_leading` returning normally does not end
        leadership. Acquisition retries every `retry_seconds` (+0-20 % jitter) forever.
        """
        self._run_task = asyncio.current_task()
        try:
            await self._acquire()
            work = asyncio.ensure_future(on_started_leading())
            try:
                await self._renew_until_lost(work)
            finally:
                self._leading = False
                if not work.done():
                    work.cancel()
                    await asyncio.wait({work}, timeout=self._retry)
                on_stopped_leading()
        finally:
            self._run_task = None

    async def _acquire(self) -> None:
        while True:
            try:
                sent = await self._attempt()
            except _ATTEMPT_ERRORS as exc:
                log.warning("lease %s/%s: acquire failed (%s)", self.namespace, self.name, exc)
                sent = None
            if sent is not None:
                self._leading = True
                self._renewed_at = sent
                log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
                return
            await asyncio.sleep(self._retry * random.uniform(1.0, 1.2))

    async def _renew_until_lost(self, work: asyncio.Future[None]) -> None:
        while True:
            if work.done():
                await asyncio.sleep(self._retry)
            else:
                await asyncio.wait({work}, timeout=self._retry)
            if work.done() and not work.cancelled() and (failure := work.exception()) is not None:
                log.error("lease %s/%s: the leader's work failed; stepping down", self.namespace, self.name)
                raise failure
            remaining = self._renewed_at + self._renew_deadline - self._clock()
            if remaining <= 0:
                break
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
                # arrives as the attempt completes, and `release()` (or a test's crash) then waited
                # forever for this task (tests/unit/test_leader.py hung so under load).
                async with asyncio.timeout(min(remaining, self._attempt_limit)):
                    sent = await self._attempt()
            except _ATTEMPT_ERRORS as exc:
                log.warning("lease %s/%s: renew failed (%s)", self.namespace, self.name, exc)
                sent = None
            if sent is not None:
                self._renewed_at = sent
                continue
            if self.holder not in (None, self.identity):
                log.error("lease %s/%s: now held by %r; stepping down", self.namespace, self.name, self.holder)
                return
            if self._clock() >= self._renewed_at + self._renew_deadline:
                break
        log.error(
            "lease %s/%s: no successful renew within %.1f s; stepping down",
            self.namespace,
            self.name,
            self._renew_deadline,
        )

    async def release(self) -> bool:
        """Graceful shutdown: end `run()` (the work is cancelled, `on_stopped_leading` is called),
        then write the Lease with no holder and a 1 s duration so another replica takes it at its
        next retry. Returns whether the Lease was handed back (False if we did not hold it)."""
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._leading = False
        lease = self._lease
        for _attempt in range(2):
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return False
            now = _micro_time()
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now,
                    "acquireTime": now}
            metadata = {k: v for k, v in lease["metadata"].items() if k != "managedFields"}
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
            try:
                status, reply = await self._client.request("PUT", self._path, body)
                if status == 409:
                    # A renewal cancelled in flight may have been written after all: our copy is stale.
                    # Read it again; if we still hold it, hand it back from the fresh copy.
                    status, lease = await self._client.request("GET", self._path)
                    lease = lease if status == 200 else None
                    continue
            except _ATTEMPT_ERRORS as exc:
                log.warning("lease %s/%s: release failed (%s)", self.namespace, self.name, exc)
                return False
            if status != 200:
                log.info("lease %s/%s: release answered %d", self.namespace, self.name, status)
                return False
            self._took(reply)
            log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
            return True
        return False


class LeaseThread:
    """A `LeaderElector` on a thread of its own, with its own event loop and client, so renewals
    never wait behind the scheduler: a cycle that computes for seconds holds the main loop, and a
    renewal queued there missed a 45 s renew deadline six times in one 1,250-node run
    (docs/factory.md). With the GIL switching every few milliseconds, this thread renews on time
    while the main loop computes.

    `make_elector(client)` builds the elector around the thread's client. `on_started()` and
    `on_stopped()` are called ON THIS THREAD: the caller hands work to its own loop
    (`call_soon_threadsafe`) and may end the process from `on_stopped` (a lost Lease must stop every
    write at once, whatever the main loop is doing)."""

    def __init__(
        self,
        make_client: Callable[[], KubeClient],
        make_elector: Callable[[KubeClient], LeaderElector],
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
    ) -> None:
        self._make_client = make_client
        self._make_elector = make_elector
        self._on_started = on_started
        self._on_stopped = on_stopped
        self.elector: LeaderElector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="lease", daemon=True)

    @property
    def is_leader(self) -> bool:
        """Safe to read from any thread (two float reads and a clock)."""
        elector = self.elector
        return elector is not None and elector.is_leader

    def start(self) -> None:
        self.thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc
            log.error("lease thread stopped: %r", exc)
            self._on_stopped()

    async def _run(self) -> None:
        client = self._make_client()
        try:
            self.elector = self._make_elector(client)
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()

            async def started() -> None:
                self._on_started()

            # Until `release` says stop (the elector's own end — a lost Lease — is `on_stopped`'s to act on).
            elect = asyncio.create_task(self.elector.run(started, self._on_stopped), name="lease")
            await self._stop.wait()
            elect.cancel()
            await asyncio.wait({elect})
        finally:
            await client.close()

    async def _release(self) -> bool:
        assert self.elector is not None and self._stop is not None
        try:
            return await self.elector.release()
        finally:
            self._stop.set()

    def release(self, timeout_seconds: float = 5.0) -> bool:
        """Graceful shutdown, from another thread: hand the Lease back (`LeaderElector.release`) and
        end the thread. Returns whether the Lease was handed back in time."""
        loop, elector = self._loop, self.elector
        if loop is None or elector is None or not self.thread.is_alive():
            return False
        future = asyncio.run_coroutine_threadsafe(self._release(), loop)
        try:
            released = future.result(timeout_seconds)
        except (concurrent.futures.TimeoutError, Exception) as exc:
            log.warning("lease %s/%s: release did not finish (%r)", elector.namespace, elector.name, exc)
            released = False
            if self._stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has ended already
                    loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout_seconds)
        return released
