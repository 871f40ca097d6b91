"""The read API served by `leitstand run` on the local cluster, called with the cluster's REAL tokens:
the operator asks the API server (TokenReview, SubjectAccessReview) who is calling and what they may
see, so these tests check the rule of docs/http-api.md against real RBAC — tenant-a cannot read
tenant-b's jobs, decisions, usage or queue details; no token is a 401; the admin sees everything —
and then run schemathesis against the live OpenAPI document (no 5xx, no schema violation).

Setup (module): deploy/ installed as a platform engineer would, two queues (`api-a` for namespace
tenant-a with a limit of 8 GPUs, `api-b` for tenant-b), `leitstand run` as the `leitstand-operator`
user with its API on a free loopback port, and three TrainingJobs submitted by their tenants with
kubectl: tenant-a/a-run (2 GPUs, runs), tenant-a/a-wait (8 GPUs: waits, api-a at its limit) and
tenant-b/b-run (1 GPU, runs). On `cluster` (conftest: 4 B200 nodes, 2 L40S nodes).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from leitstand.operator.cluster.layout import repo_root
from leitstand.operator.service.launcher import OperatorProcess, start_operator

from .conftest import Cluster

DEPLOY = repo_root() / "deploy"
INSTALL = [DEPLOY / "namespace.yaml", DEPLOY / "crds", DEPLOY / "priorityclasses.yaml", DEPLOY / "rbac"]
LABEL = "leitstand.dev/e2e"
QUEUES = [
    {"apiVersion": "leitstand.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name, "labels": {LABEL: "api"}},
     "spec": {"gpu": gpu, "namespaces": [namespace]}}
    for name, namespace, gpu in (("api-a", "tenant-a", {"quota": 8, "limit": 8}), ("api-b", "tenant-b", {"quota": 8}))
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token_of(cluster: Cluster, user: str) -> str:
    config = yaml.safe_load(cluster.kubeconfig(user).read_text())
    return str(config["users"][0]["user"]["token"])


def training_job(namespace: str, name: str, queue: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "leitstand.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"queue": queue, "replicas": 1, "gpus": gpus,
                     "template": {"spec": {"containers": [{"name": "t", "image": "registry.example/train:1"}]}}}}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    cluster: Cluster
    operator: OperatorProcess
    url: str
    tokens: dict[str, str]

    def get(self, path: str, user: str | None = "admin", headers: dict[str, str] | None = None) -> Reply:
        sent = dict(headers or {})
        if user is not None:
            sent["Authorization"] = f"Bearer {self.tokens[user]}"
        request = urllib.request.Request(self.url + path, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())

    def ok(self, path: str, user: str | None = "admin") -> Any:
        reply = self.get(path, user)
        assert reply.status == 200, (path, user, reply.status, reply.body[:500])
        return reply.json()


def wait_until(check: Callable[[], Any], what: str, timeout_seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_seconds
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, OSError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}; last: {last!r}")


def start_api_operator(cluster: Cluster, folder: Path, identity: str, port: int) -> OperatorProcess:
    config = folder / f"{identity}.yaml"
    config.write_text(yaml.safe_dump({
        "api": {"port": port, "metrics_require_token": True, "review_cache_seconds": 5},
        "scheduler": {"min_runtime_seconds": 1},
        "cycle_max_interval_seconds": 1,
    }))
    return start_operator(cluster.kubeconfig("leitstand-operator"), folder / f"{identity}.log", identity=identity,
                          config=config)


def stop(operator: OperatorProcess, what: str) -> None:
    was_alive = operator.alive()
    code = operator.stop()
    if not was_alive or code != 0:
        raise AssertionError(f"{what} ended with exit code {code} (alive until the end: {was_alive}):\n"
                             f"{operator.log_text()[-8000:]}")


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cluster.kubectl("apply", *[arg for path in INSTALL for arg in ("-f", str(path))])
    cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.leitstand.dev",
                    "crd/queues.leitstand.dev", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": QUEUES}))
    folder = tmp_path_factory.mktemp("api")
    port = free_port()
    operator = start_api_operator(cluster, folder, "e2e-api", port)
    tokens = {user: token_of(cluster, user) for user in ("admin", "tenant-a", "tenant-b")}
    api = Served(cluster, operator, f"http://127.0.0.1:{port}", tokens)
    try:
        if not operator.wait_for_log("leading as", timeout_seconds=120):
            raise AssertionError(f"leitstand run did not start leading:\n{operator.log_text()[-5000:]}")
        wait_until(lambda: api.get("/readyz", None).status == 200, "/readyz 200")
        for namespace, name, queue, gpus in (("tenant-a", "a-run", "api-a", 2), ("tenant-b", "b-run", "api-b", 1)):
            cluster.kubectl("apply", "-f", "-", user=namespace, stdin=json.dumps(training_job(namespace, name, queue,
                                                                                                gpus)))

        def running() -> bool:
            jobs = {f"{j['namespace']}/{j['name']}": j for j in api.ok("/v1/jobs")["items"]}
            return all(jobs.get(k, {}).get("phase") == "Running" for k in ("tenant-a/a-run", "tenant-b/b-run"))

        wait_until(running, "a-run and b-run Running in the API", 90)
        cluster.kubectl("apply", "-f", "-", user="tenant-a",
                        stdin=json.dumps(training_job("tenant-a", "a-wait", "api-a", 8)))
        wait_until(lambda: (api.ok("/v1/jobs/tenant-a/a-wait")["pending"] or {}).get("code") == "QueueAtLimit",
                   "a-wait pending with QueueAtLimit", 60)
        wait_until(lambda: api.ok("/v1/usage?by=namespace")["rows"], "some GPU-seconds counted", 30)
        yield api
    finally:
        try:
            stop(operator, "leitstand run")
        finally:
            cluster.kubectl("delete", "trainingjobs", "-n", "tenant-a", "a-run", "a-wait", "--ignore-not-found",
                            "--wait=false")
            cluster.kubectl("delete", "trainingjobs", "-n", "tenant-b", "b-run", "--ignore-not-found", "--wait=false")
            cluster.kubectl("delete", "pods", "-n", "tenant-a", "-l", "leitstand.dev/job", "--grace-period=0",
                            "--force", "--ignore-not-found", check=False)
            cluster.kubectl("delete", "pods", "-n", "tenant-b", "-l", "leitstand.dev/job", "--grace-period=0",
                            "--force", "--ignore-not-found", check=False)
            cluster.kubectl("delete", "queues", "-l", f"{LABEL}=api", "--ignore-not-found")


# -- who may see what, with real tokens --------------------------------------------------------------------


def test_no_token_is_401_and_the_probes_need_none(served: Served) -> None:
    for path in ("/v1/queues", "/v1/jobs", "/v1/jobs/tenant-a/a-run", "/v1/nodes", "/v1/topology", "/v1/decisions",
                 "/v1/usage", "/metrics"):
        reply = served.get(path, None)
        assert reply.status == 401, path
        assert reply.json()["error"] == "Unauthorized" and reply.headers["www-authenticate"].startswith("Bearer")
    assert served.get("/v1/jobs", None, {"Authorization": "Bearer not-a-token"}).status == 401
    health = served.get("/healthz", None)
    assert health.status == 200 and health.json()["leading"] is True
    assert served.get("/readyz", None).status == 200
    assert served.get("/healthz", None).headers["x-leitstand-leading"] == "true"


def test_tenant_a_cannot_read_tenant_bs_jobs(served: Served) -> None:
    jobs = served.ok("/v1/jobs", "tenant-a")
    assert {j["namespace"] for j in jobs["items"]} == {"tenant-a"}
    assert {j["name"] for j in jobs["items"]} >= {"a-run", "a-wait"}
    assert served.get("/v1/jobs/tenant-b/b-run", "tenant-a").status == 403
    assert served.get("/v1/jobs?namespace=tenant-b", "tenant-a").status == 403
    assert served.ok("/v1/jobs?queue=api-b", "tenant-a")["items"] == []
    mine = served.ok("/v1/jobs/tenant-a/a-run", "tenant-a")
    [pod] = mine["placement"]["pods"]
    assert pod["bound"] and len(pod["gpuIndices"]) == 2 and mine["waitSeconds"] is not None
    assert {j["namespace"] for j in served.ok("/v1/jobs", "tenant-b")["items"]} == {"tenant-b"}
    assert served.get("/v1/jobs/tenant-a/a-run", "tenant-b").status == 403


def test_tenant_a_cannot_read_tenant_bs_decisions(served: Served) -> None:
    mine = served.ok("/v1/decisions", "tenant-a")["items"]
    assert mine and {d["namespace"] for d in mine} == {"tenant-a"}
    assert any(d["job"] == "tenant-a/a-run" and d["kind"] == "admit" for d in mine)
    assert served.get("/v1/decisions?namespace=tenant-b", "tenant-a").status == 403
    theirs = served.ok("/v1/decisions", "tenant-b")["items"]
    assert theirs and {d["namespace"] for d in theirs} == {"tenant-b"}


def test_tenant_a_cannot_read_tenant_bs_usage(served: Served) -> None:
    def keys(path: str, user: str) -> set[str]:
        return {r["key"] for r in served.ok(path, user)["rows"]}

    wait_until(lambda: keys("/v1/usage?by=namespace", "admin") >= {"tenant-a", "tenant-b"}, "usage of both")
    assert keys("/v1/usage?by=namespace", "tenant-a") == {"tenant-a"}
    assert keys("/v1/usage?by=namespace", "tenant-b") == {"tenant-b"}
    assert "api-b" not in keys("/v1/usage", "tenant-a") and "api-a" in keys("/v1/usage", "tenant-a")
    csv = served.get("/v1/usage?by=namespace", "tenant-a", {"Accept": "text/csv"})
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "tenant-b" not in csv.body.decode() and "tenant-a" in csv.body.decode()


def test_tenant_a_cannot_read_tenant_bs_queue_details(served: Served) -> None:
    queues = {q["name"]: q for q in served.ok("/v1/queues?window=3600", "tenant-a")["items"]}
    assert queues["api-a"]["details"] is not None and queues["api-b"]["details"] is None
    assert queues["api-a"]["details"]["usage"]["totalGpuSeconds"] > 0
    assert [j["name"] for j in queues["api-a"]["details"]["jobs"]] == ["a-run", "a-wait"]
    assert queues["api-b"]["allocatedMilli"] == 1000  # the Queue status every authenticated user can read
    assert served.ok("/v1/queues/api-b", "tenant-a")["details"] is None
    assert served.ok("/v1/queues/api-b", "tenant-b")["details"]["jobs"][0]["name"] == "b-run"


def test_tenants_may_not_read_nodes_or_metrics_but_the_admin_sees_everything(served: Served) -> None:
    for path in ("/v1/nodes", "/v1/topology", "/metrics"):
        assert served.get(path, "tenant-a").status == 403, path
    jobs = {f"{j['namespace']}/{j['name']}" for j in served.ok("/v1/jobs")["items"]}
    assert jobs >= {"tenant-a/a-run", "tenant-a/a-wait", "tenant-b/b-run"}
    queues = {q["name"]: q for q in served.ok("/v1/queues")["items"]}
    assert queues["api-a"]["details"] is not None and queues["api-b"]["details"] is not None
    assert {"tenant-a", "tenant-b"} <= {d["namespace"] for d in served.ok("/v1/decisions?limit=1000")["items"]}
    nodes = {n["name"]: n for n in served.ok("/v1/nodes")["items"]}
    assert len(nodes) == 6 and sum(n["gpuUsedMilli"] for n in nodes.values()) >= 3000
    topology = served.ok("/v1/topology")
    assert topology["levels"][-1] == "node" and topology["gangs"][0]["gpus"] == 8
    metrics = served.get("/metrics", "admin")
    assert metrics.status == 200 and b"leitstand_" in metrics.body


def test_why_and_jobs_in_the_terminal_with_the_tenants_kubeconfig(served: Served) -> None:
    def leitstand(*args: str, user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from leitstand.operator.cli import main; main()", *args, "--server", served.url,
             "--kubeconfig", str(served.cluster.kubeconfig(user))],
            capture_output=True, text=True, timeout=60, env=env,
        )

    env = {k: v for k, v in os.environ.items() if not k.startswith("LEITSTAND_")} | {"COLUMNS": "200"}

    why = leitstand("why", "tenant-a/a-wait", user="tenant-a")
    assert why.returncode == 0, why.stderr
    assert "QueueAtLimit" in why.stdout and "queue api-a: allocated 2, quota 8, fair share" in why.stdout
    assert "room under the limit: 6 of 8 GPUs → blocks" in why.stdout
    jobs = leitstand("jobs", "--json", user="tenant-b")
    assert {j["name"] for j in json.loads(jobs.stdout)["items"]} == {"b-run"}
    denied = leitstand("why", "tenant-b/b-run", user="tenant-a")
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr


def test_a_replica_that_does_not_lead_serves_the_same_reads(served: Served, tmp_path: Path) -> None:
    port = free_port()
    replica = start_api_operator(served.cluster, tmp_path, "e2e-api-replica", port)
    other = Served(served.cluster, replica, f"http://127.0.0.1:{port}", served.tokens)
    try:
        wait_until(lambda: other.get("/readyz", None).status == 200, "the replica ready", 120)
        reply = other.get("/v1/jobs")
        assert reply.status == 200 and reply.headers["x-leitstand-leading"] == "false"

        def same() -> bool:
            theirs = {f"{j['namespace']}/{j['name']}": (j["phase"], j["reason"]) for j in other.ok("/v1/jobs")["items"]}
            ours = {f"{j['namespace']}/{j['name']}": (j["phase"], j["reason"]) for j in served.ok("/v1/jobs")["items"]}
            return theirs == ours

        wait_until(same, "the replica's jobs equal to the leader's", 30)
        used = {n["name"]: n["gpuUsedMilli"] for n in other.ok("/v1/nodes")["items"]}
        assert used == {n["name"]: n["gpuUsedMilli"] for n in served.ok("/v1/nodes")["items"]}
        assert other.ok("/v1/jobs/tenant-a/a-wait", "tenant-a")["pending"]["code"] == "QueueAtLimit"
        assert other.get("/v1/jobs/tenant-b/b-run", "tenant-a").status == 403
        assert not replica.wait_for_log("leading as", timeout_seconds=0.5)
    finally:
        stop(replica, "the second leitstand run")


# -- schemathesis against the live OpenAPI document ---------------------------------------------------------


def property_test(strategy: Any, headers: dict[str, str]) -> Callable[[], None]:
    """A hypothesis test: every case of `strategy` sent with `headers` and checked by schemathesis."""
    import warnings

    from hypothesis import HealthCheck, given, settings

    @given(strategy)
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            case.call_and_validate(headers=headers)

    return check  # type: ignore[no-any-return]


def test_schemathesis_against_the_live_openapi(served: Served) -> None:
    import warnings

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    try:
        from test_api_schema import expressible, query_types
    finally:
        sys.path.pop(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import schemathesis
        from schemathesis import GenerationMode

        schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    types = query_types(served.ok("/openapi.json", None))
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and operation.path in ("/healthz", "/readyz"):
                continue  # nothing to make invalid
            for user in ("admin", "tenant-a"):
                strategy = operation.as_strategy(generation_mode=mode)
                if mode is GenerationMode.NEGATIVE:
                    path_types = types.get(operation.path, {})
                    strategy = strategy.filter(lambda case, t=path_types: expressible(case, t))
                check = property_test(strategy, {"Authorization": f"Bearer {served.tokens[user]}"})
                try:
                    check()
                except Exception as exc:  # collect, so one run reports every operation
                    failures.append(f"{operation.label} {mode.value} as {user}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    assert served.operator.alive()
