"""Who is calling, and what they may see: bearer tokens checked with TokenReview, rights with
SubjectAccessReview, both asked of the API server and remembered briefly.

Called by `app` for every `/v1/*` request (and `/metrics` when it needs a token): `Authorizer.identify`
turns the `Authorization` header into an `Identity` (or a 401), `Authorizer.scope` works out which
namespaces that identity may read, and `Scope` answers the per-object questions. The rule
(docs/http-api.md):

- a namespace is visible when the caller may `list trainingjobs.leitstand.dev` in it — its jobs,
  decisions and usage rows are shown, nothing of other namespaces;
- `list trainingjobs` cluster-wide makes every namespace visible;
- queue summaries (quota, limit, weight, fair share, allocation, counts — the Queue status every
  `list queues` caller reads with kubectl anyway) need `list queues.leitstand.dev`;
- a queue's details (its jobs, its usage) need every namespace the queue admits to be visible (its
  `spec.namespaces`; an inner queue's: its leaves'); a queue that admits any namespace (none listed)
  only to a caller with cluster-wide `list trainingjobs`;
- nodes and topology need `list nodes` (or the admin pair: `list queues` and cluster-wide
  `list trainingjobs`).

Answers are cached for `ttl_seconds` (bounded, least recently used out first), and concurrent
identical reviews share one request, so 200 clients with one token cost one TokenReview. A token the
API server rejects is remembered too (a flood of bad tokens does not become a flood of reviews).

What this must not do: keep raw tokens (the cache is keyed by their SHA-256), or guess when the API
server cannot answer (that is a 503, not an allow or a deny).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from leitstand.operator.api.errors import Problem
from leitstand.operator.service.jobs import GROUP

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller as the API server's TokenReview names it."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Check:
    """One SubjectAccessReview question: may the caller `verb` the resource (or non-resource `path`)?"""

    verb: str
    resource: str = ""
    group: str = ""
    namespace: str = ""
    """"" asks cluster-wide (all namespaces)."""
    path: str = ""
    """A non-resource URL (e.g. /metrics) instead of a resource."""


LIST_QUEUES = Check("list", "queues", GROUP)
LIST_JOBS_EVERYWHERE = Check("list", "trainingjobs", GROUP)
LIST_NODES = Check("list", "nodes")
GET_METRICS = Check("get", path="/metrics")


def list_jobs_in(namespace: str) -> Check:
    return Check("list", "trainingjobs", GROUP, namespace)


class ReviewUnavailable(Exception):
    """The API server did not answer a review (down, throttling, or the operator lacks the right)."""


class Reviewer(Protocol):
    """The two questions asked of the API server (a fake in tests, `KubeReviewer` in `leitstand run`)."""

    async def authenticate(self, token: str) -> Identity | None: ...

    async def allowed(self, identity: Identity, check: Check) -> bool: ...


class Requester(Protocol):
    async def request(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]: ...


class KubeReviewer:
    """TokenReview and SubjectAccessReview through the operator's own client (its ClusterRole grants
    `create` on both). At most `concurrency` reviews in flight, so a cold cache under load cannot take
    the binder's share of the client's connections."""

    def __init__(self, client: Requester, concurrency: int = 8) -> None:
        self.client = client
        self._slots = asyncio.Semaphore(concurrency)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._slots:
                status, reply = await self.client.request("POST", path, body)
        except Exception as exc:  # TransportError, ConfigError: no answer
            raise ReviewUnavailable(f"{path}: {exc}") from exc
        if status >= 300 or not isinstance(reply, dict):
            message = reply.get("message", "") if isinstance(reply, dict) else str(reply)[:200]
            raise ReviewUnavailable(f"{path}: HTTP {status} {message}".rstrip())
        return reply

    async def authenticate(self, token: str) -> Identity | None:
        reply = await self._post(TOKEN_REVIEW_PATH, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token},
        })
        status = reply.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return Identity(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(x) for x in v or ())) for k, v in extra.items())),
        )

    async def allowed(self, identity: Identity, check: Check) -> bool:
        spec: dict[str, Any] = {"user": identity.username, "groups": list(identity.groups)}
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        if check.path:
            spec["nonResourceAttributes"] = {"path": check.path, "verb": check.verb}
        else:
            attributes = {"verb": check.verb, "group": check.group, "resource": check.resource}
            if check.namespace:
                attributes["namespace"] = check.namespace
            spec["resourceAttributes"] = attributes
        reply = await self._post(ACCESS_REVIEW_PATH, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
        })
        return bool((reply.get("status") or {}).get("allowed"))


class TtlCache(Generic[V]):
    """Answers kept for `ttl_seconds`, at most `capacity` of them (least recently used dropped first);
    a lookup that is already on its way is awaited, not repeated."""

    def __init__(self, ttl_seconds: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.capacity = capacity
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> tuple[bool, V | None]:
        """(True, value) when a fresh answer is cached: no coroutine, no task (the hot path)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self.clock():
            self._entries.move_to_end(key)
            self.hits += 1
            return True, entry[1]
        return False, None

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        waiting = self._pending.get(key)
        if waiting is not None:
            self.hits += 1
            return await asyncio.shield(waiting)
        self.misses += 1
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except asyncio.CancelledError:
            future.cancel()  # the waiters ask again
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(value)
        if self.ttl_seconds > 0:
            self._entries[key] = (self.clock() + self.ttl_seconds, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value


@dataclass(frozen=True, slots=True)
class Scope:
    """What one caller may see, for one request."""

    identity: Identity
    all_namespaces: bool
    """May list TrainingJobs cluster-wide."""
    namespaces: frozenset[str]
    """Visible namespaces among those asked about (all of them when `all_namespaces`)."""
    list_queues: bool

    @property
    def admin(self) -> bool:
        return self.all_namespaces and self.list_queues

    def sees(self, namespace: str) -> bool:
        return self.all_namespaces or namespace in self.namespaces

    def visible(self) -> frozenset[str] | None:
        """For filters: None means every namespace."""
        return None if self.all_namespaces else self.namespaces

    def sees_queue_details(self, admits: frozenset[str] | None) -> bool:
        """`admits`: the namespaces a queue accepts jobs from; None = any namespace."""
        if self.all_namespaces:
            return True
        return bool(admits) and admits is not None and admits <= self.namespaces


class Authorizer:
    def __init__(self, reviewer: Reviewer, ttl_seconds: float = 20.0, capacity: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reviewer = reviewer
        self.tokens: TtlCache[Identity | None] = TtlCache(ttl_seconds, capacity, clock)
        self.checks: TtlCache[bool] = TtlCache(ttl_seconds, capacity, clock)

    async def identify(self, authorization: str | None) -> Identity:
        """The caller of a request with this `Authorization` header; a `Problem` (401/503) otherwise."""
        challenge = {"WWW-Authenticate": 'Bearer realm="leitstand"'}
        if not authorization:
            raise Problem(401, "no bearer token: send 'Authorization: Bearer <token>' (a Kubernetes token, e.g. "
                          "the one in your kubeconfig)", "Authorization", headers=challenge)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(401, "the Authorization header must be 'Bearer <token>'", "Authorization",
                          headers=challenge)
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        hit, cached = self.tokens.peek(key)
        try:
            identity = cached if hit else await self.tokens.get(key, lambda: self.reviewer.authenticate(token))
        except ReviewUnavailable as exc:
            raise Problem(503, f"cannot verify the token now: {exc}", "Authorization",
                          headers={"Retry-After": "5"}) from None
        if identity is None:
            raise Problem(401, "the API server does not accept this token (TokenReview: not authenticated)",
                          "Authorization", headers=challenge)
        return identity

    async def may(self, identity: Identity, check: Check) -> bool:
        try:
            return await self.checks.get((identity, check), lambda: self.reviewer.allowed(identity, check))
        except ReviewUnavailable as exc:
            raise Problem(503, f"cannot check access now: {exc}", None, headers={"Retry-After": "5"}) from None

    async def scope(self, identity: Identity, namespaces: Iterable[str] = ()) -> Scope:
        """Which of `namespaces` the caller may read (all, when it may list TrainingJobs everywhere).

        Answered from the cache without a single await when every answer is there (almost always);
        otherwise the missing reviews are asked concurrently."""
        checks = [LIST_JOBS_EVERYWHERE, LIST_QUEUES]
        known: dict[Check, bool] = {}
        for check in checks:
            hit, value = self.checks.peek((identity, check))
            if hit:
                known[check] = bool(value)
        if len(known) < len(checks):
            answers = await asyncio.gather(*(self.may(identity, c) for c in checks if c not in known))
            known.update(zip([c for c in checks if c not in known], answers, strict=True))
        if known[LIST_JOBS_EVERYWHERE]:
            return Scope(identity, True, frozenset(), known[LIST_QUEUES])
        visible: set[str] = set()
        missing: list[str] = []
        for namespace in set(namespaces):
            hit, value = self.checks.peek((identity, list_jobs_in(namespace)))
            if not hit:
                missing.append(namespace)
            elif value:
                visible.add(namespace)
        if missing:
            answers = await asyncio.gather(*(self.may(identity, list_jobs_in(ns)) for ns in missing))
            visible.update(ns for ns, ok in zip(missing, answers, strict=True) if ok)
        return Scope(identity, False, frozenset(visible), known[LIST_QUEUES])

    async def may_see_cluster(self, identity: Identity) -> bool:
        """Nodes and topology: `list nodes`, or the admin pair."""
        if await self.may(identity, LIST_NODES):
            return True
        scope = await self.scope(identity)
        return scope.admin
