"""List+watch of one resource into a dict of slim records, with a callback per change.

Holds `Informer`, Leitstand's own informer (Go's reflector + store in one class). It lists the
resource page by page, then watches it from the list's resourceVersion with bookmarks, and keeps
`store[key]` equal to `transform(object)` for every live object (key "namespace/name", or "name"
for cluster-scoped kinds). Every change of a slim record is reported once to `on_event(kind, key,
old, new)`: a MODIFIED event whose record equals the stored one is dropped here, which is what makes
1,000 KWOK node heartbeats a minute cost nothing downstream. After a relist (410 Gone, a too-old
resourceVersion) the differences between the old store and the fresh list are reported as the same
ADDED / MODIFIED / DELETED events, so a consumer stays consistent without knowing relists exist.

Called by the operator service for Pods, Nodes and PriorityClasses; `run()` is one long-lived task
in the main loop. It must not decode into typed models or deep-copy objects (kopf's reactor spends
~1 ms per event doing that; a `json.loads` + transform is ~30 µs), must not call `on_event` from
another thread, and must not await inside the callback: `on_event` is synchronous so that a
consumer's cache changes in the same step as the store.

Semantics a consumer can rely on:
* `on_event` sees ADDED for a key before any MODIFIED/DELETED of it, and never two ADDED in a row;
* `synced` is set after the first complete list has been reported (all ADDED events delivered);
* the transform must be pure and cheap, must tolerate objects without `kind`/`apiVersion` (list
  items lack them), and should include the uid if a consumer must notice "deleted and re-created
  under the same name" across a relist (it then arrives as MODIFIED with a different uid);
* an exception from `on_event` is logged and counted (`counters.callback_errors`); the store keeps the
  new record, the informer keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from leitstand.operator.service.kubeclient import ApiError, KubeClient, KubeClientError

log = logging.getLogger(__name__)

T = TypeVar("T")

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


class _Gone(Exception):
    """The watch's resourceVersion is no longer served (410): relist."""


@dataclass(slots=True)
class InformerCounters:
    events: int = 0
    """Watch events received (ADDED/MODIFIED/DELETED as sent by the server; bookmarks not counted)."""
    suppressed: int = 0
    """Watch events that did not change the slim record (no callback)."""
    bookmarks: int = 0
    relists: int = 0
    """Complete lists applied to the store, the first one included."""
    watches: int = 0
    """Watch requests started."""
    inactivity_restarts: int = 0
    errors: int = 0
    """Failed lists and watches (each followed by a backoff), 410s not included."""
    gone: int = 0
    """410 Gone answers (each followed by a relist)."""
    callback_errors: int = 0


class Informer(Generic[T]):
    """Keeps `store` current for the objects at `path` (e.g. "/api/v1/pods" for all namespaces).

    `params` are extra query parameters for list and watch (`labelSelector`, `fieldSelector`).
    `watch_timeout_seconds` is the server-side end of each watch (jittered up to +20 % so many
    informers do not reconnect together); `inactivity_timeout_seconds` restarts a watch that sent
    nothing, not even a bookmark (kube-apiserver sends one about every minute). Backoff after an
    error starts at `backoff_initial_seconds`, doubles, and is capped at `backoff_max_seconds`.
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        transform: Callable[[dict[str, Any]], T | None],
        on_event: Callable[[str, str, T | None, T | None], None],
        *,
        name: str,
        params: dict[str, str] | None = None,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        inactivity_timeout_seconds: float = 70.0,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self.store: dict[str, T] = {}
        self.resource_version = ""
        """The last resourceVersion seen (list, event or bookmark); the watch resumes from it."""
        self.synced = asyncio.Event()
        self.counters = InformerCounters()
        self._client = client
        self._path = path
        self._transform = transform
        self._on_event = on_event
        self._params = dict(params or {})
        self._page_size = page_size
        self._watch_timeout = watch_timeout_seconds
        self._inactivity = inactivity_timeout_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._backoff = backoff_initial_seconds
        self._progress = False
        """The current watch delivered at least one event or bookmark."""
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- control

    async def run(self) -> None:
        """List, then watch, until `stop()` (returns) or cancellation (raises CancelledError)."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._stopping = False
        try:
            await self._list_and_watch()
        except asyncio.CancelledError:
            if not self._stopping or task.uncancel() > 0:
                raise
        finally:
            self._task = None

    def stop(self) -> None:
        """Make `run()` return soon (it is cancelled at its current await)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()

    # -- list and watch

    async def _list_and_watch(self) -> None:
        must_list = True
        just_listed = False
        while not self._stopping:
            if must_list:
                try:
                    await self._relist()
                except (KubeClientError, aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                    await self._failed("list", exc)
                    continue
                must_list = False
                just_listed = True
            self._progress = False
            try:
                await self._watch()
                if not self._progress:  # not even a bookmark before the server ended it
                    await self._failed("watch", "the server ended the watch without any event")
            except (_Gone, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status != 410:
                    await self._failed("watch", exc)
                    continue
                self.counters.gone += 1
                must_list = True
                if just_listed and not self._progress:
                    # A list's own resourceVersion is already too old: the server is not serving
                    # watches; do not turn that into a tight list loop.
                    await self._failed("watch right after a list", exc)
                else:
                    log.info("%s: watch from resourceVersion %s: %s; relisting", self.name, self.resource_version, exc)
            except aiohttp.ServerTimeoutError:
                self.counters.inactivity_restarts += 1
                log.info("%s: no event for %.0f s; restarting the watch", self.name, self._inactivity)
            except (KubeClientError, aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                await self._failed("watch", exc)
            just_listed = just_listed and not self._progress

    async def _failed(self, what: str, exc: BaseException | str) -> None:
        self.counters.errors += 1
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
        log.warning("%s: %s failed (%s); retrying in %.1f s", self.name, what, exc, delay)
        await asyncio.sleep(delay)

    async def _relist(self) -> None:
        """List every page, then apply the differences to the store in one step (no await between)."""
        transform = self._transform
        fresh: dict[str, T] = {}
        params = {**self._params, "limit": str(self._page_size)}
        resource_version = ""
        while True:
            body = await self._client.get(self._path, params)
            for obj in body.get("items") or ():
                meta = obj["metadata"]
                namespace = meta.get("namespace")
                key = f"{namespace}/{meta['name']}" if namespace else meta["name"]
                record = transform(obj)
                if record is not None:
                    fresh[key] = record
            meta = body.get("metadata") or {}
            resource_version = meta.get("resourceVersion", resource_version)
            token = meta.get("continue")
            if not token:
                break
            params = {**self._params, "limit": str(self._page_size), "continue": token}
        store = self.store
        emit = self._emit
        for key in [k for k in store if k not in fresh]:
            emit(DELETED, key, store.pop(key), None)
        for key, record in fresh.items():
            old = store.get(key)
            if old is None:
                store[key] = record
                emit(ADDED, key, None, record)
            elif old != record:
                store[key] = record
                emit(MODIFIED, key, old, record)
        self.resource_version = resource_version
        self.counters.relists += 1
        self.synced.set()
        log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(fresh), resource_version)

    def _emit(self, kind: str, key: str, old: T | None, new: T | None) -> None:
        try:
            self._on_event(kind, key, old, new)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("%s: on_event(%s, %s) failed", self.name, kind, key)

    async def _watch(self) -> None:
        """One watch request; returns when the server ends it (timeoutSeconds)."""
        params = {
            **self._params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(int(self._watch_timeout * random.uniform(1.0, 1.2))),
        }
        self.counters.watches += 1
        store = self.store
        transform = self._transform
        emit = self._emit
        counters = self.counters
        stream = self._client.watch_stream(self._path, params, inactivity_timeout_seconds=self._inactivity)
        async with contextlib.aclosing(stream):
            async for event in stream:
                # The hot path: thousands of these a second. Keep it to dict lookups and one compare.
                kind = event["type"]
                obj = event["object"]
                if kind == "BOOKMARK":
                    counters.bookmarks += 1
                    self.resource_version = obj["metadata"]["resourceVersion"]
                    self._progress = True
                    self._backoff = self._backoff_initial
                    continue
                if kind == "ERROR":  # a Status object; 410 when the resourceVersion was compacted away
                    code = obj.get("code")
                    if code == 410:
                        raise _Gone(obj.get("message", "410 Gone"))
                    reason, message = str(obj.get("reason", "")), str(obj.get("message", ""))
                    raise ApiError(int(code or 500), "WATCH", self._path, reason, message, obj)
                if not self._progress:  # the first object of this watch: the stream works
                    self._progress = True
                    self._backoff = self._backoff_initial
                meta = obj["metadata"]
                counters.events += 1
                namespace = meta.get("namespace")
                key = f"{namespace}/{meta['name']}" if namespace else meta["name"]
                old = store.get(key)
                new = None if kind == DELETED else transform(obj)
                if new is None:
                    if old is not None:
                        del store[key]
                        emit(DELETED, key, old, None)
                    else:
                        counters.suppressed += 1
                elif old is None:
                    store[key] = new
                    emit(ADDED, key, None, new)
                elif old != new:
                    store[key] = new
                    emit(MODIFIED, key, old, new)
                else:
                    counters.suppressed += 1
                self.resource_version = meta["resourceVersion"]
