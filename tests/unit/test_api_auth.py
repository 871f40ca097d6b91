"""Who may see what (operator/api/auth.py), without a cluster: the review cache, the TokenReview and
SubjectAccessReview requests the operator sends, and the access rule through the app with a fake
reviewer (the world of test_api.py: tenant-a and tenant-b each with a leaf queue under `org`, and
`open`, which admits any namespace). The same rule against a real API server with real tokens is
tests/e2e/test_api.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from test_api import ADMIN, FakeReviewer, World, client_for, make_world

from leitstand.operator.api.auth import (
    ACCESS_REVIEW_PATH,
    GET_METRICS,
    LIST_JOBS_EVERYWHERE,
    LIST_NODES,
    LIST_QUEUES,
    TOKEN_REVIEW_PATH,
    Authorizer,
    Check,
    Identity,
    KubeReviewer,
    ReviewUnavailable,
    TtlCache,
    list_jobs_in,
)
from leitstand.operator.api.errors import Problem
from leitstand.operator.service.config import ApiSettings

TENANT_A = {"Authorization": "Bearer token-a"}
TENANT_B = {"Authorization": "Bearer token-b"}
VIEWER = {"Authorization": "Bearer token-viewer"}
"""May list queues and nothing else (what every authenticated user gets from deploy/rbac/tenants.yaml)."""
LONER = {"Authorization": "Bearer token-loner"}
"""May list TrainingJobs in tenant-a only, and not list queues."""
SCRAPER = {"Authorization": "Bearer token-prometheus"}


def tenants() -> FakeReviewer:
    return FakeReviewer(
        {
            "admin-token": Identity("admin", groups=("system:masters",)),
            "token-a": Identity("tenant-a", uid="ua", groups=("system:authenticated",)),
            "token-b": Identity("tenant-b", uid="ub", groups=("system:authenticated",)),
            "token-viewer": Identity("viewer"),
            "token-loner": Identity("loner"),
            "token-prometheus": Identity("system:serviceaccount:monitoring:prometheus"),
        },
        {
            "tenant-a": [list_jobs_in("tenant-a"), LIST_QUEUES],
            "tenant-b": [list_jobs_in("tenant-b"), LIST_QUEUES],
            "viewer": [LIST_QUEUES],
            "loner": [list_jobs_in("tenant-a")],
            "system:serviceaccount:monitoring:prometheus": [GET_METRICS],
        },
        admins=("admin",),
    )


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


def get(world: World, path: str, headers: dict[str, str], status: int = 200, reviewer: Any = None,
        **params: Any) -> Any:
    with client_for(world, reviewer or tenants()) as api:
        reply = api.get(path, params=params, headers=headers)
    assert reply.status_code == status, reply.text
    return reply.json()


# -- the rule, through the app -------------------------------------------------------------------------


def test_no_token_is_401_with_a_challenge_but_health_needs_none(world: World) -> None:
    with client_for(world, tenants()) as api:
        for path in ("/v1/queues", "/v1/jobs", "/v1/jobs/tenant-a/run-1", "/v1/nodes", "/v1/topology",
                     "/v1/decisions", "/v1/usage"):
            reply = api.get(path)
            assert reply.status_code == 401, path
            assert reply.json()["error"] == "Unauthorized" and reply.json()["field"] == "Authorization"
            assert reply.headers["www-authenticate"].startswith("Bearer")
        assert api.get("/v1/jobs", headers={"Authorization": "Basic YTpi"}).status_code == 401
        assert api.get("/v1/jobs", headers={"Authorization": "Bearer "}).status_code == 401
        assert api.get("/v1/jobs", headers={"Authorization": "Bearer stolen"}).json()["detail"].startswith(
            "the API server does not accept this token")
        assert api.get("/healthz").status_code == 200 and api.get("/readyz").status_code == 200
        assert api.get("/openapi.json").status_code == 200


def test_a_tenant_sees_only_its_namespaces_jobs(world: World) -> None:
    jobs = get(world, "/v1/jobs", TENANT_A)
    assert {j["namespace"] for j in jobs["items"]} == {"tenant-a"} and jobs["total"] == 2
    assert get(world, "/v1/jobs", TENANT_A, queue="tenant-b")["items"] == []
    assert get(world, "/v1/jobs", TENANT_A, queue="org")["total"] == 2  # the parent: only what it may see
    denied = get(world, "/v1/jobs", TENANT_A, 403, namespace="tenant-b")
    assert denied["field"] == "namespace" and "tenant-b" in denied["detail"]
    assert get(world, "/v1/jobs/tenant-b/big", TENANT_A, 403)["error"] == "Forbidden"
    assert get(world, "/v1/jobs/tenant-b/no-such-job", TENANT_A, 403)["error"] == "Forbidden"  # existence hidden
    assert get(world, "/v1/jobs/tenant-a/run-1", TENANT_A)["placement"]["nodes"] == ["b200-0000"]
    assert {j["namespace"] for j in get(world, "/v1/jobs", TENANT_B)["items"]} == {"tenant-b"}


def test_a_tenant_sees_only_its_namespaces_decisions(world: World) -> None:
    decisions = get(world, "/v1/decisions", TENANT_A)["items"]
    assert decisions and {d["namespace"] for d in decisions} == {"tenant-a"}
    assert get(world, "/v1/decisions", TENANT_A, 403, namespace="tenant-b")["field"] == "namespace"
    assert get(world, "/v1/decisions", TENANT_A, kind="admit")["items"] == []  # both admissions were tenant-b's
    assert {d["namespace"] for d in get(world, "/v1/decisions", TENANT_B)["items"]} == {"tenant-b"}


def test_a_tenant_sees_only_its_usage_rows(world: World) -> None:
    assert [r["key"] for r in get(world, "/v1/usage", TENANT_A, by="namespace")["rows"]] == ["tenant-a"]
    assert get(world, "/v1/usage", TENANT_B, by="namespace")["rows"] == []
    assert [r["key"] for r in get(world, "/v1/usage", TENANT_A)["rows"]] == ["tenant-a"]
    assert get(world, "/v1/usage", TENANT_B)["rows"] == []
    with client_for(world, tenants()) as api:
        csv = api.get("/v1/usage", params={"format": "csv"}, headers=TENANT_B).text
    assert csv == "queue,gpu_hours,gpu_seconds\n"


def test_queue_details_only_where_the_caller_sees_every_namespace(world: World) -> None:
    queues = {q["name"]: q for q in get(world, "/v1/queues", TENANT_A)["items"]}
    assert sorted(queues) == ["open", "org", "tenant-a", "tenant-b"]  # summaries: it may list queues
    assert queues["tenant-a"]["details"]["usage"]["totalGpuSeconds"] > 0
    assert queues["tenant-b"]["details"] is None
    assert queues["org"]["details"] is None  # admits tenant-b too
    assert queues["open"]["details"] is None  # admits any namespace: cluster-wide readers only
    assert queues["tenant-b"]["allocatedMilli"] == 16500  # the numbers kubectl shows everyone stay
    one = get(world, "/v1/queues/tenant-b", TENANT_A, window=3600)
    assert one["details"] is None
    assert get(world, "/v1/queues/tenant-a", TENANT_A)["details"]["jobs"][0]["name"] == "run-1"


def test_without_list_queues_only_the_queues_whose_details_it_may_see(world: World) -> None:
    queues = get(world, "/v1/queues", LONER)["items"]
    assert [q["name"] for q in queues] == ["tenant-a"] and queues[0]["details"] is not None
    assert get(world, "/v1/queues/tenant-b", LONER, 403)["error"] == "Forbidden"
    assert get(world, "/v1/queues/no-such", LONER, 403)["error"] == "Forbidden"
    assert get(world, "/v1/queues/no-such", TENANT_A, 404)["error"] == "NotFound"
    assert [q["details"] for q in get(world, "/v1/queues", VIEWER)["items"]] == [None] * 4
    assert get(world, "/v1/jobs", VIEWER)["items"] == []


def test_nodes_and_topology_need_list_nodes_or_the_admin_pair(world: World) -> None:
    for path in ("/v1/nodes", "/v1/topology"):
        assert get(world, path, TENANT_A, 403)["detail"] == "tenant-a may not list nodes"
        assert get(world, path, ADMIN)["leading"] is False
    reviewer = tenants()
    reviewer.rules["tenant-a"].append(LIST_NODES)
    assert len(get(world, "/v1/nodes", TENANT_A, reviewer=reviewer)["items"]) == 6


def test_the_admin_sees_everything(world: World) -> None:
    assert get(world, "/v1/jobs", ADMIN)["total"] == 5
    assert all(q["details"] is not None for q in get(world, "/v1/queues", ADMIN)["items"])
    assert {d["namespace"] for d in get(world, "/v1/decisions", ADMIN)["items"]} == {"tenant-a", "tenant-b"}


def test_metrics_need_a_token_allowed_to_get_metrics_unless_configured_open(world: World) -> None:
    def render(accept: str | None) -> tuple[bytes, str]:
        return b"leitstand_up 1\n", "text/plain; version=0.0.4; charset=utf-8"

    with client_for(world, tenants(), metrics=render) as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers=TENANT_A).status_code == 403
        reply = api.get("/metrics", headers=SCRAPER)
        assert reply.status_code == 200 and reply.text == "leitstand_up 1\n"
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "/metrics" not in api.get("/openapi.json").json()["paths"]
    with client_for(world, tenants(), ApiSettings(metrics_require_token=False), metrics=render) as api:
        assert api.get("/metrics").status_code == 200


def test_reviews_are_cached_so_a_burst_of_requests_costs_one_review_each() -> None:
    world = make_world()
    reviewer = tenants()
    with client_for(world, reviewer) as api:
        for _ in range(20):
            assert api.get("/v1/jobs", headers=TENANT_A).status_code == 200
    assert reviewer.token_reviews == 1
    asked = [check for _user, check in reviewer.access_reviews]
    assert sorted(asked, key=repr) == sorted([LIST_JOBS_EVERYWHERE, LIST_QUEUES, list_jobs_in("tenant-a"),
                                              list_jobs_in("tenant-b")], key=repr)


def test_an_api_server_that_cannot_review_is_a_503_not_an_allow_or_a_deny() -> None:
    class Down:
        async def authenticate(self, token: str) -> Identity | None:
            raise ReviewUnavailable("POST /apis/authentication.k8s.io/v1/tokenreviews: HTTP 503")

        async def allowed(self, identity: Identity, check: Check) -> bool:
            raise ReviewUnavailable("down")

    world = make_world()
    with client_for(world, Down()) as api:
        reply = api.get("/v1/jobs", headers=TENANT_A)
    assert reply.status_code == 503 and reply.json()["error"] == "Unavailable"
    assert reply.headers["retry-after"] == "5"


# -- the pieces -------------------------------------------------------------------------------------------


def test_the_ttl_cache_expires_bounds_and_shares_lookups() -> None:
    now = [0.0]
    cache: TtlCache[int] = TtlCache(ttl_seconds=10, capacity=2, clock=lambda: now[0])
    computed: list[str] = []

    async def value(key: str, result: int, delay: float = 0.0) -> int:
        computed.append(key)
        await asyncio.sleep(delay)
        return result

    async def scenario() -> None:
        results = await asyncio.gather(*(cache.get("a", lambda: value("a", 1, 0.01)) for _ in range(50)))
        assert results == [1] * 50 and computed == ["a"]  # fifty callers, one lookup
        assert await cache.get("a", lambda: value("a", 2)) == 1
        now[0] = 11.0
        assert await cache.get("a", lambda: value("a", 2)) == 2  # expired
        await cache.get("b", lambda: value("b", 3))
        await cache.get("c", lambda: value("c", 4))
        assert len(cache) == 2  # "a" dropped: least recently used
        computed.clear()
        await cache.get("a", lambda: value("a", 5))
        assert computed == ["a"]

        async def boom() -> int:
            raise ReviewUnavailable("down")

        with pytest.raises(ReviewUnavailable):
            await cache.get("d", boom)
        assert await cache.get("d", lambda: value("d", 6)) == 6  # a failure is not remembered

    asyncio.run(scenario())


class RecordingRequester:
    def __init__(self, replies: list[tuple[int, Any]]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, body: Any = None, *, params: Any = None,
                      content_type: str = "application/json") -> tuple[int, Any]:
        self.sent.append((method, path, json.loads(json.dumps(body))))
        return self.replies.pop(0)


def test_the_kube_reviewer_sends_token_and_access_reviews() -> None:
    client = RecordingRequester([
        (201, {"status": {"authenticated": True, "user": {
            "username": "tenant-a", "uid": "42", "groups": ["tenants", "system:authenticated"],
            "extra": {"scopes": ["a", "b"]}}}}),
        (201, {"status": {"allowed": True}}),
        (201, {"status": {"allowed": False, "reason": "no RBAC"}}),
        (201, {"status": {"authenticated": False, "error": "invalid bearer token"}}),
        (403, {"kind": "Status", "message": "forbidden: cannot create tokenreviews"}),
    ])
    reviewer = KubeReviewer(client)

    async def scenario() -> None:
        identity = await reviewer.authenticate("secret")
        assert identity == Identity("tenant-a", "42", ("tenants", "system:authenticated"), (("scopes", ("a", "b")),))
        assert await reviewer.allowed(identity, list_jobs_in("tenant-a"))
        assert not await reviewer.allowed(identity, GET_METRICS)
        assert await reviewer.authenticate("expired") is None
        with pytest.raises(ReviewUnavailable, match="HTTP 403 forbidden"):
            await reviewer.authenticate("any")

    asyncio.run(scenario())
    (m1, p1, token_review), (_, p2, namespaced), (_, _, non_resource), *_ = client.sent
    assert (m1, p1) == ("POST", TOKEN_REVIEW_PATH) and token_review["spec"] == {"token": "secret"}
    assert p2 == ACCESS_REVIEW_PATH and namespaced["kind"] == "SubjectAccessReview"
    assert namespaced["spec"] == {
        "user": "tenant-a", "groups": ["tenants", "system:authenticated"], "uid": "42",
        "extra": {"scopes": ["a", "b"]},
        "resourceAttributes": {"verb": "list", "group": "leitstand.dev", "resource": "trainingjobs",
                               "namespace": "tenant-a"},
    }
    assert non_resource["spec"]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}


def test_identify_reads_the_header_and_remembers_rejected_tokens() -> None:
    reviewer = tenants()
    authorizer = Authorizer(reviewer)

    async def scenario() -> None:
        with pytest.raises(Problem) as missing:
            await authorizer.identify(None)
        assert missing.value.status == 401 and missing.value.field == "Authorization"
        for _ in range(3):
            with pytest.raises(Problem):
                await authorizer.identify("Bearer forged")
        assert (await authorizer.identify("bearer  token-a ")).username == "tenant-a"
        scope = await authorizer.scope(await authorizer.identify("Bearer token-a"), ["tenant-a", "tenant-b"])
        assert scope.sees("tenant-a") and not scope.sees("tenant-b") and not scope.admin
        assert scope.sees_queue_details(frozenset({"tenant-a"}))
        assert not scope.sees_queue_details(frozenset({"tenant-a", "tenant-b"}))
        assert not scope.sees_queue_details(None) and not scope.sees_queue_details(frozenset())
        admin = await authorizer.scope(await authorizer.identify("Bearer admin-token"))
        assert admin.admin and admin.sees("anything") and admin.sees_queue_details(None) and admin.visible() is None

    asyncio.run(scenario())
    assert reviewer.token_reviews == 3  # forged once (remembered), token-a once, admin once
