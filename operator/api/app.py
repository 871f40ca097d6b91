"""The read API of `leitstand run`: FastAPI routes over the scheduler's latest state (OpenAPI at /docs).

Created by `server.start` (`create_app(scheduler, authorizer, settings)`) and served by uvicorn on the
main event loop, next to the scheduling loop; the unit tests drive it with FastAPI's TestClient. Every
handler is `async def`: it first checks the caller (`auth`, the only awaits), then, inside the render
gate (`RenderGate`: one answer at a time, within a share of the loop), reads the one `Scheduler` and
serialises the answer without awaiting in between (`views`) — so an answer never mixes two cycles, no
thread ever reads while the loop writes, and a crowd of clients cannot crowd out the scheduler.

Routes (docs/http-api.md): `/healthz`, `/readyz`, `/v1/queues[/{name}]`, `/v1/jobs[/{namespace}/{name}]`,
`/v1/nodes`, `/v1/topology`, `/v1/decisions`, `/v1/usage`, and `/metrics` when a renderer is given.
Every response carries `X-Leitstand-Leading: true|false` (every replica answers; only the leader
schedules). Every refusal is a 4xx with `{"error", "detail", "field"}` (`errors.Problem`); parameters
are validated against the same constraints the OpenAPI document states, so nothing a client sends
reaches a handler unchecked.

What this must not do: write to the cluster, change the scheduler's state, or block the loop for long
(lists are paginated; the largest page is `api.max_page_size`).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime, and
# some name types local to `create_app` (the page size limit comes from the settings).

import asyncio
import bisect
import csv
import io
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field, PlainValidator, TypeAdapter, WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from leitstand.operator.api import models, views
from leitstand.operator.api.auth import GET_METRICS, Authorizer, Identity, Scope
from leitstand.operator.api.errors import ERRORS, Problem, bad_request, forbidden, not_found
from leitstand.operator.service.config import ApiSettings
from leitstand.operator.service.loop import Scheduler
from leitstand.operator.service.status import rfc3339
from leitstand.scheduler.model import NODE_LEVEL

log = logging.getLogger(__name__)

LEADING_HEADER = "X-Leitstand-Leading"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A namespace name (RFC 1123 label, at most 63 characters)."""
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A TrainingJob or Queue name (RFC 1123 subdomain, at most 253 characters)."""
LATEST_SECONDS = 32_503_680_000.0
"""Year 3000: times beyond it are refused (they would overflow the date conversions)."""
MAX_WINDOW_SECONDS = 35 * 24 * 3600
"""The meter keeps 35 days of per-minute history (`usage.UsageMeter`)."""
CSV = "text/csv"
HINTS = {
    "since": "expected Unix seconds (0 to 32503680000) or an RFC 3339 date-time (2026-12-05T20:00:00Z)",
    "until": "expected Unix seconds (0 to 32503680000) or an RFC 3339 date-time (2026-12-05T20:00:00Z)",
    "from": "expected Unix seconds (0 to 32503680000) or an RFC 3339 date-time (2026-12-05T20:00:00Z)",
    "to": "expected Unix seconds (0 to 32503680000) or an RFC 3339 date-time (2026-12-05T20:00:00Z)",
}
"""Messages for parameters whose pydantic message would name internals (a union's branches)."""

_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?$")


def parse_moment(value: Any) -> float:
    """Unix seconds (0 to year 3000) or an RFC 3339 date-time (UTC when no offset is given) → seconds.

    One validator for both forms: as a plain union, pydantic would also read an out-of-range number
    as a date-time (it takes numbers as timestamps), so `?to=1e11` would pass the schema's bound."""
    if isinstance(value, bool):
        raise ValueError("expected a time")
    seconds: float
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            if not RFC3339.match(text):
                raise ValueError("expected Unix seconds or an RFC 3339 date-time") from None
            try:
                moment = _DATETIME.validate_python(text)
            except ValueError:
                year = int(text[:4])  # year 0000 is valid RFC 3339, not a Python datetime
                if year == 0:
                    return 0.0
                raise ValueError("expected Unix seconds or an RFC 3339 date-time") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return min(max(moment.timestamp(), 0.0), LATEST_SECONDS)
    if not 0.0 <= seconds <= LATEST_SECONDS:  # also NaN
        raise ValueError(f"Unix seconds must be between 0 and {LATEST_SECONDS:.0f}")
    return seconds


Moment = Annotated[float, PlainValidator(parse_moment), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": LATEST_SECONDS}, {"type": "string", "format": "date-time"}],
})]
"""A time as Unix seconds or an RFC 3339 date-time (UTC when no offset is given)."""

Renderer = Callable[[str | None], tuple[bytes, str]]
"""What `/metrics` serves: the request's Accept header → (body, content type) (`metrics.Metrics.render`)."""


LOOP_SHARE = 0.5
"""The most of the main loop's time answers take together while requests queue (`RenderGate`)."""


class RenderGate:
    """Answers are computed one at a time, and together take at most `share` of the main loop's time.

    The loop also runs the scheduler, its binder, the informers and the Lease renewals. Unbounded, 200
    clients sending at once put 200 ready renders between every two steps of that work (measured during a
    1,000-job burst: 0.8 s p50 API latency and a Lease renewal late enough to lose the leadership). Here
    a waiting request waits on the gate, not in the loop's ready queue, so between two renders the loop
    gets to everything else that is ready; and once renders have used their share of the last moments
    (a budget refilled at `share` seconds per second, at most `burst_seconds` saved up), the next one
    waits. A render costs 0.3-2 ms (docs/http-api.md): a lone request never notices the budget."""

    def __init__(self, share: float, burst_seconds: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.share = share
        self.burst_seconds = burst_seconds
        self.clock = clock
        self._lock = asyncio.Lock()
        self._credit = burst_seconds
        self._refilled = clock()
        self._started = 0.0
        self.waited_seconds = 0.0

    def _refill(self) -> None:
        now = self.clock()
        self._credit = min(self.burst_seconds, self._credit + (now - self._refilled) * self.share)
        self._refilled = now

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            self._refill()
            if self._credit < 0 and self.share < 1:
                pause = -self._credit / self.share
                self.waited_seconds += pause
                await asyncio.sleep(pause)
                self._refill()
        except BaseException:
            self._lock.release()
            raise
        self._started = self.clock()

    async def __aexit__(self, *exc: object) -> None:
        self._credit -= self.clock() - self._started
        self._lock.release()


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": models.ErrorBody, "description": ERRORS[status]} for status in (400, 401, 403, 503)
}
ITEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES, 404: {"model": models.ErrorBody, "description": "NotFound"},
}


class LeadingHeader:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): every response says
    whether this replica leads."""

    def __init__(self, app: ASGIApp, scheduler: Scheduler) -> None:
        self.app = app
        self.scheduler = scheduler

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((LEADING_HEADER.lower().encode(), b"true" if self.scheduler.leading else b"false"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(scheduler: Scheduler, authorizer: Authorizer, settings: ApiSettings | None = None, *,
               metrics: Renderer | None = None, clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over `scheduler`, checking callers with `authorizer`; `/metrics` serves `metrics()`."""
    settings = settings or ApiSettings()
    max_page = settings.max_page_size
    namespaces_seen = views.NamespaceIndex(scheduler)
    renders = RenderGate(LOOP_SHARE)
    bearer = HTTPBearer(auto_error=False, description="A Kubernetes bearer token (checked with TokenReview).")

    allowed_params: dict[str, frozenset[str]] = {}

    async def known_query_parameters(request: Request) -> None:
        """An unknown query parameter is an error, not silently ignored (`?namepsace=a` would otherwise
        list every namespace's jobs), and so is one given twice (which one would count?)."""
        route = request.scope.get("route")
        if not isinstance(route, APIRoute):
            return
        allowed = allowed_params.get(route.path)
        if allowed is None:
            allowed = allowed_params[route.path] = frozenset(_query_names(route.dependant))
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise bad_request(unknown[0], f"unknown query parameter {unknown[0]!r} (this path takes: {known})")
        for name in allowed:
            if len(request.query_params.getlist(name)) > 1:
                raise bad_request(name, f"{name} is given more than once; give it once")

    app = FastAPI(
        dependencies=[Depends(known_query_parameters)],
        title="Leitstand",
        version="v1",
        description="Queues, jobs, nodes, topology, decisions and GPU-hours of the Leitstand GPU scheduler, "
                    "read from the running scheduler. Who may see what: docs/http-api.md.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )

    # -- errors ---------------------------------------------------------------------------------------

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems: dict[str, list[str]] = {}
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header")]
            name = loc[0] if loc else "request"
            problems.setdefault(name, []).append(str(error.get("msg", "invalid")).removeprefix("Value error, "))
        field = next(iter(problems), "request")
        detail = "; ".join(f"{name}: {HINTS.get(name) or ' / '.join(dict.fromkeys(msgs))}"
                           for name, msgs in problems.items())
        return JSONResponse(bad_request(field, detail).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such path: {request.url.path} (see /docs)"
        return JSONResponse(Problem(exc.status_code, detail).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    # -- callers --------------------------------------------------------------------------------------

    async def caller(request: Request, _token: Annotated[Any, Security(bearer)]) -> Identity:
        return await authorizer.identify(request.headers.get("authorization"))

    Caller = Annotated[Identity, Depends(caller)]
    LevelName = Literal[(*scheduler.levels, NODE_LEVEL)]  # type: ignore[valid-type]  # the configured levels

    # -- health ---------------------------------------------------------------------------------------

    @app.get("/healthz", response_model=models.Health, tags=["health"], summary="The process is alive.")
    async def healthz() -> models.Health:
        return models.Health(status="ok", leading=scheduler.leading, ready=scheduler.ready)

    @app.get("/readyz", response_model=models.Health, tags=["health"],
             responses={503: {"model": models.ErrorBody, "description": "Not ready yet"}},
             summary="Kernels compiled and informers synced.")
    async def readyz() -> models.Health:
        if not scheduler.ready:
            raise Problem(503, "not ready: compiling the kernels or listing nodes and pods", error="NotReady",
                          headers={"Retry-After": "1"})
        return models.Health(status="ready", leading=scheduler.leading, ready=True)

    # -- queues ---------------------------------------------------------------------------------------

    Window = Annotated[Annotated[int, Field(ge=60, le=MAX_WINDOW_SECONDS)] | None, Query(
        description="Also report usage over the last this many seconds.")]

    async def queue_scope(identity: Identity) -> Scope:
        facts = views.queue_facts(scheduler)
        return await authorizer.scope(identity, set().union(*(f.admits for f in facts.values() if f.admits)))

    def queue_list(identity: Identity, scope: Scope, window: int | None, only: str | None) -> list[models.QueueOut]:
        facts = views.queue_facts(scheduler)
        if only is not None:
            if only not in facts:
                if not scope.list_queues:
                    raise forbidden(f"{identity.username} may not list queues.leitstand.dev", "name")
                raise not_found(f"queue {only!r}", "name")
            facts = {only: facts[only]}
        totals = views.queue_usage_totals(scheduler, facts)
        windows = views.window_usage(scheduler, facts, window, clock()) if window else {}
        groups = views.jobs_by_queue(scheduler)
        out: list[models.QueueOut] = []
        for name in sorted(facts):
            fact = facts[name]
            shown = scope.sees_queue_details(fact.admits)
            if not shown and not scope.list_queues:
                if only is not None:
                    raise forbidden(f"{identity.username} may not list queues.leitstand.dev, nor trainingjobs in "
                                    f"every namespace of queue {name}", "name")
                continue
            details = views.queue_details(scheduler, fact, totals[name], windows.get(name), groups) if shown else None
            out.append(views.queue_out(scheduler, fact, details=details))
        return out

    @app.get("/v1/queues", response_model=models.QueueList, tags=["queues"], responses=ERROR_RESPONSES,
             summary="Every queue: quota, limit, fair share, allocation; usage and jobs where visible.")
    async def list_queues(identity: Caller, window: Window = None) -> Response:
        scope = await queue_scope(identity)
        async with renders:
            return body(models.QueueList(items=queue_list(identity, scope, window, None), leading=scheduler.leading))

    @app.get("/v1/queues/{name}", response_model=models.QueueOut, tags=["queues"], responses=ITEM_RESPONSES,
             summary="One queue.")
    async def get_queue(
        identity: Caller,
        name: Annotated[str, Path(pattern=DNS_SUBDOMAIN, max_length=253)],
        window: Window = None,
    ) -> Response:
        scope = await queue_scope(identity)
        async with renders:
            return body(queue_list(identity, scope, window, name)[0])

    # -- jobs -----------------------------------------------------------------------------------------

    async def namespace_scope(identity: Identity, namespace: str | None, candidates: Callable[[], set[str]]) -> Scope:
        """The caller's scope; a 403 when it names a namespace it may not list TrainingJobs in."""
        if namespace is None:
            return await authorizer.scope(identity, candidates())
        scope = await authorizer.scope(identity, {namespace})
        if not scope.sees(namespace):
            raise forbidden(f"{identity.username} may not list trainingjobs.leitstand.dev in namespace {namespace}",
                            "namespace")
        return scope

    def job_namespaces() -> set[str]:
        return {k.partition("/")[0] for k in scheduler.jobs}

    @app.get("/v1/jobs", response_model=models.JobList, tags=["jobs"], responses=ERROR_RESPONSES,
             summary="TrainingJobs the caller may see, by namespace/name.")
    async def list_jobs(
        identity: Caller,
        queue: Annotated[str | None, Query(pattern=DNS_SUBDOMAIN, max_length=253,
                                           description="A queue; an inner queue includes its children.")] = None,
        namespace: Annotated[str | None, Query(pattern=DNS_LABEL, max_length=63)] = None,
        phase: Annotated[Literal["Pending", "Running", "Succeeded", "Failed"] | None, Query()] = None,
        limit: Annotated[int, Field(ge=1, le=max_page), Query()] = 100,
        continue_: Annotated[str | None, Query(
            alias="continue", max_length=400,
            description="The `continue` of the previous page: the page starts after that job.")] = None,
    ) -> Response:
        scope = await namespace_scope(identity, namespace, job_namespaces)
        async with renders:
            facts = views.queue_facts(scheduler)
            keys = views.select_jobs(scheduler, facts, queue=queue, namespace=namespace, phase=phase,
                                     visible=scope.visible())
            start = bisect.bisect_right(keys, continue_) if continue_ else 0
            page = keys[start:start + limit]
            now = clock()
            items = [views.job_out(scheduler, key, scheduler.jobs[key], now) for key in page]
            more = start + limit < len(keys)
            return body(models.JobList(items=items, continue_=page[-1] if more and page else None, total=len(keys),
                                       leading=scheduler.leading))

    @app.get("/v1/jobs/{namespace}/{name}", response_model=models.JobDetail, tags=["jobs"],
             responses=ITEM_RESPONSES, summary="One TrainingJob: placement, wait, reason, preemption history.")
    async def get_job(
        identity: Caller,
        namespace: Annotated[str, Path(pattern=DNS_LABEL, max_length=63)],
        name: Annotated[str, Path(pattern=DNS_SUBDOMAIN, max_length=253)],
    ) -> Response:
        await namespace_scope(identity, namespace, set)
        async with renders:
            key = f"{namespace}/{name}"
            tracked = scheduler.jobs.get(key)
            if tracked is None:
                raise not_found(f"TrainingJob {key}", "name")
            return body(views.job_detail(scheduler, key, tracked, clock()))

    # -- nodes and topology ---------------------------------------------------------------------------

    async def cluster_reader(identity: Identity) -> None:
        if not await authorizer.may_see_cluster(identity):
            raise forbidden(f"{identity.username} may not list nodes")

    @app.get("/v1/nodes", response_model=models.NodeList, tags=["cluster"], responses=ERROR_RESPONSES,
             summary="Nodes: GPUs free and used (milli), model, topology, pool, jurisdiction.")
    async def list_nodes(identity: Caller) -> Response:
        await cluster_reader(identity)
        async with renders:
            views.ensure_arrays(scheduler)
            return body(models.NodeList(items=views.nodes_out(scheduler), leading=scheduler.leading))

    @app.get("/v1/topology", response_model=models.TopologyOut, tags=["cluster"], responses=ERROR_RESPONSES,
             summary="Occupancy per topology domain, and where gangs of 8/16/32/64 GPUs fit now.")
    async def topology(
        identity: Caller,
        level: Annotated[LevelName | None, Query(description="Domains of this level only "
                                                             "(default: every level but node).")] = None,
        model: Annotated[str | None, Query(max_length=253, description="Only nodes of this GPU model.")] = None,
        pool: Annotated[str | None, Query(max_length=253, description="Only nodes of this node pool.")] = None,
    ) -> Response:
        await cluster_reader(identity)
        async with renders:
            views.ensure_arrays(scheduler)
            return body(views.topology_out(scheduler, level=level, model=model, pool=pool,
                                           leading=scheduler.leading))

    # -- decisions ------------------------------------------------------------------------------------

    def decision_namespaces() -> set[str]:
        return views.known_namespaces(scheduler, namespaces_seen)

    @app.get("/v1/decisions", response_model=models.DecisionList, tags=["audit"], responses=ERROR_RESPONSES,
             summary="The audit trail, oldest first: admissions, evictions (with who caused them), "
                     "rejections, ends.")
    async def list_decisions(
        identity: Caller,
        since: Annotated[Moment | None, Query(description="Unix seconds or RFC 3339.")] = None,
        until: Annotated[Moment | None, Query(description="Unix seconds or RFC 3339.")] = None,
        queue: Annotated[str | None, Query(max_length=253, description="The job's queue or the other "
                                                                       "party's.")] = None,
        namespace: Annotated[str | None, Query(pattern=DNS_LABEL, max_length=63)] = None,
        kind: Annotated[models.DecisionKind | None, Query()] = None,
        job: Annotated[str | None, Query(max_length=400, description="namespace/name")] = None,
        after: Annotated[int, Field(ge=0, le=2**62), Query(description="The `next` of the previous page.")] = 0,
        limit: Annotated[int, Field(ge=1, le=max_page), Query()] = 100,
    ) -> Response:
        scope = await namespace_scope(identity, namespace, decision_namespaces)
        async with renders:
            found = scheduler.decisions.query(
                since=since, until=until, queue=queue, namespace=namespace,
                namespaces=scope.visible(), kind=kind, job=job, after_seq=after, limit=limit,
            )
            return body(models.DecisionList(
                items=[views.decision_out(d) for d in found],
                next=found[-1].seq if len(found) == limit else None,
                leading=scheduler.leading,
            ))

    # -- usage ----------------------------------------------------------------------------------------

    @app.get("/v1/usage", response_model=models.UsageReport, tags=["usage"],
             responses={**ERROR_RESPONSES, 200: {"content": {CSV: {"schema": {"type": "string"}}},
                                                 "description": "JSON, or CSV (`Accept: text/csv` or "
                                                                "`?format=csv`)"}},
             summary="GPU-hours per queue or namespace in [from, to).")
    async def usage(
        identity: Caller,
        request: Request,
        from_: Annotated[Moment | None, Query(alias="from", description="Unix seconds or RFC 3339 "
                                                                        "[default: the history's start]")] = None,
        to: Annotated[Moment | None, Query(description="Unix seconds or RFC 3339 [default: now].")] = None,
        by: Annotated[Literal["queue", "namespace"], Query()] = "queue",
        format_: Annotated[Literal["json", "csv"] | None, Query(alias="format")] = None,
    ) -> Response:
        if by == "namespace":
            scope = await authorizer.scope(identity, decision_namespaces())
        else:
            scope = await queue_scope(identity)
        async with renders:
            now = clock()
            start = scheduler.usage.history_from if from_ is None else from_
            end = now if to is None else to
            rows = scheduler.usage.report(start, end, by=by) if end > start else []
            if by == "namespace":
                rows = [r for r in rows if scope.sees(r.key)]
            else:
                facts = views.queue_facts(scheduler)
                rows = [r for r in rows if scope.sees_queue_details(facts[r.key].admits if r.key in facts else None)]
            if format_ == "csv" or (format_ is None and CSV in request.headers.get("accept", "")):
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow([by, "gpu_hours", "gpu_seconds"])
                for row in rows:
                    writer.writerow([row.key, f"{row.gpu_hours:.6f}", f"{row.gpu_seconds:.3f}"])
                return Response(buffer.getvalue(), media_type=CSV,
                                headers={"Content-Disposition": f'inline; filename="leitstand-usage-by-{by}.csv"'})
            return body(models.UsageReport(
                by=by, from_=rfc3339(start), to=rfc3339(end), covered_from=rfc3339(scheduler.usage.covered_from),
                rows=[models.UsageRowOut(key=r.key, gpu_hours=round(r.gpu_hours, 6),
                                         gpu_seconds=round(r.gpu_seconds, 3)) for r in rows],
                leading=scheduler.leading,
            ))

    # -- metrics --------------------------------------------------------------------------------------

    if metrics is not None:

        @app.get("/metrics", include_in_schema=False)
        async def metrics_route(request: Request) -> Response:
            if settings.metrics_require_token:
                identity = await authorizer.identify(request.headers.get("authorization"))
                if not await authorizer.may(identity, GET_METRICS):
                    raise forbidden(f"{identity.username} may not get the non-resource URL /metrics")
            body, content_type = metrics(request.headers.get("accept"))
            return Response(body, headers={"Content-Type": content_type})

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(LeadingHeader, scheduler=scheduler)
    return app


def body(model: BaseModel) -> Response:
    """The model as JSON on the wire (camelCase aliases), serialised once, inside the render gate."""
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route (and its dependencies) declares."""
    names = {str(p.alias) for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with our error body in place of its 422 validation schema (we answer 400)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
